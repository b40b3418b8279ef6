"""HTTP for ops: /healthz (alive), /readyz (can work), /metrics (Prometheus)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

ReadinessCheck = Callable[[], dict[str, Any]]
log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        readiness: ReadinessCheck,
        before_metrics: Callable[[], None] | None = None,
    ) -> None:
        self.readiness = readiness
        self.before_metrics = before_metrics
        self._metrics = make_wsgi_app()
        self.server = make_server(
            host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            if self.before_metrics is not None:
                try:
                    self.before_metrics()
                except Exception:  # a scrape must answer even when the database does not
                    log.exception("refreshing queue gauges failed")
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, 200, {"status": "ok"})
        if path == "/readyz":
            checks = self.readiness()
            ready = all(c.get("ok", False) for c in checks.values())
            return _json(start_response, 200 if ready else 503, {"ready": ready, "checks": checks})
        return _json(start_response, 404, {"error": "not found"})


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, default=str).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(
        f"{status} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]
