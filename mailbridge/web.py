"""HTTP for ops: /healthz (alive), /readyz (can work), /metrics (Prometheus).

A Starlette app (`build_app`) served by uvicorn (h11) in a thread of its own with its
own asyncio loop, as the stdlib server before it: /healthz answers while the SMTP loop
is busy, and no connection costs a thread. Later routes (an API, a board) are passed in
as `routes`. Bounds (docs/reliability.md, "Connection limits"):

- `max_connections` served at once; a request on a connection past it gets uvicorn's
  503 (`limit_concurrency`), and a connection past twice as many is answered 503 and
  closed as soon as it is accepted, so HTTP never holds more than 2 x max descriptors;
- `request_timeout`: a request (line, headers and body) must arrive in full within
  that many seconds of the connection opening or of the previous response, whatever
  trickles in meanwhile; then the connection is closed. uvicorn has no such timer
  (h11 reads headers for as long as the client sends them, and its keep-alive timer
  is cancelled by the first byte of the next request), so `BoundedH11Protocol` adds it;
- `keepalive_timeout`: uvicorn's own, for idle connections between requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from prometheus_client import Counter, make_asgi_app
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mailbridge.limits import OPEN, REFUSED, LogThrottle, ThrottleFilter, throttle_accept_errors

ReadinessCheck = Callable[[], dict[str, Any]]
log = logging.getLogger(__name__)

REQUEST_TIMEOUTS = Counter(
    "mailbridge_http_request_timeouts_total",
    "HTTP connections closed because their request did not arrive in time",
)

# Written raw: no request has been read on a connection refused at accept.
_FULL_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8"
                  b"\r\ncontent-length: 19\r\nconnection: close\r\n\r\nService Unavailable")
_refusals = LogThrottle(1.0)


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, default=str), status_code=status,
                    media_type="application/json")


def build_app(
    readiness: ReadinessCheck,
    before_metrics: Callable[[], None] | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The daemon's HTTP app: the ops endpoints first, then `routes` (API, board…)."""

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        # The checks query the database: in a worker thread, never on the loop.
        checks = await run_in_threadpool(readiness)
        ready = all(c.get("ok", False) for c in checks.values())
        return _json(200 if ready else 503, {"ready": ready, "checks": checks})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        error = {404: "not found", 405: "method not allowed"}.get(status, "error")
        return _json(status, {"error": error})

    ops: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", MetricsEndpoint(before_metrics), methods=["GET"]),
    ]
    return Starlette(routes=[*ops, *routes],
                     exception_handlers={404: not_found, 405: not_found})


class MetricsEndpoint:
    """prometheus_client's ASGI exposition, the queue gauges refreshed first."""

    def __init__(self, before: Callable[[], None] | None) -> None:
        self.before = before
        self.app = make_asgi_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.before is not None:
            try:
                await run_in_threadpool(self.before)
            except Exception:  # a scrape must answer even when the database does not
                log.exception("refreshing queue gauges failed")
        # With a Content-Length, as the WSGI server before (uvicorn would send it chunked):
        # the exposition comes in one body message.
        start: dict[str, Any] = {}

        async def with_length(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if start and not message.get("more_body", False):
                headers = [h for h in start.get("headers", []) if h[0].lower() != b"content-length"]
                headers.append((b"content-length", str(len(message.get("body", b""))).encode()))
                await send({**start, "headers": headers})
                start.clear()
            elif start:
                await send(dict(start))
                start.clear()
            await send(message)

        await self.app(scope, receive, with_length)


_REQUEST_IN = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request timeout and a hard connection limit."""

    request_timeout: float = 10.0
    hard_limit: int = 128

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._request_timer: asyncio.TimerHandle | None = None
        self._refused = len(self.connections) >= self.hard_limit
        if self._refused:
            self.transport = transport
            REFUSED.labels(listener="http", reason="limit").inc()
            allowed, suppressed = _refusals.allow("limit")
            if allowed:
                log.warning("too many HTTP connections; refused",
                            extra={"open": len(self.connections), "limit": self.hard_limit,
                                   "suppressed": suppressed})
            transport.write(_FULL_RESPONSE)
            transport.close()
            return
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and the
        # listening socket (socket.create_server) has proto 0: without it every response
        # (headers, then body: two writes) waited ~40 ms for the client's delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)
        self._arm_request_timer()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state in _REQUEST_IN:
            self._cancel_request_timer()

    def on_response_complete(self) -> None:
        # The next request gets its own full time, starting now (it may be pipelined
        # already: super() then reads it and cancels the timer again).
        if not self.transport.is_closing():
            self._arm_request_timer()
        super().on_response_complete()

    def _arm_request_timer(self) -> None:
        self._cancel_request_timer()
        self._request_timer = self.loop.call_later(self.request_timeout, self._request_late)

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_late(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        REQUEST_TIMEOUTS.inc()
        log.debug("HTTP request not complete in time; closed", extra={"client": self.client})
        self.transport.close()


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 64
    request_timeout: float = 10.0
    keepalive_timeout: int = 5
    shutdown_timeout: int = 3


class _Server(uvicorn.Server):
    def capture_signals(self) -> Any:
        # Not the main thread, so uvicorn would not touch signals anyway; the daemon
        # owns SIGTERM/SIGINT and stops this server through `should_exit`.
        return _NoSignals()


class _NoSignals:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


class HttpServer:
    """The HTTP listener: bound at construction (the port is known), served by start()."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: ReadinessCheck,
        before_metrics: Callable[[], None] | None = None,
        *,
        limits: HttpLimits | None = None,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.readiness = readiness
        self.before_metrics = before_metrics
        self.limits = limits or HttpLimits()
        self.app = build_app(readiness, before_metrics, routes)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self.port = int(self._sock.getsockname()[1])

        protocol = type("HttpProtocol", (BoundedH11Protocol,), {
            "request_timeout": self.limits.request_timeout,
            "hard_limit": 2 * self.limits.max_connections,
        })
        config = uvicorn.Config(
            self.app,
            http=protocol,
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            # uvicorn counts the asking connection too: +1 so that `max_connections`
            # connections are served and the next one gets 503.
            limit_concurrency=self.limits.max_connections + 1,
            timeout_keep_alive=self.limits.keepalive_timeout,
            timeout_graceful_shutdown=self.limits.shutdown_timeout,
            backlog=128,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._error: BaseException | None = None
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.setLevel(logging.WARNING)  # start/stop chatter; warnings stay
        if not any(isinstance(f, ThrottleFilter) for f in uvicorn_log.filters):
            # "Exceeded concurrency limit." and "Invalid HTTP request received." come
            # once per request: under a flood, once a second is enough.
            uvicorn_log.addFilter(ThrottleFilter(1.0))

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # uvicorn may sys.exit(); report it, do not die silently
            self._error = exc
            log.exception("the HTTP server stopped")

    async def _serve(self) -> None:
        throttle_accept_errors(asyncio.get_running_loop())
        OPEN.labels(listener="http").set_function(
            lambda: len(self._server.server_state.connections))
        await self._server.serve(sockets=[self._sock])

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start: {self._error!r}")
            time.sleep(0.01)

    def stop(self, timeout: float | None = None) -> None:
        if not self._thread.is_alive():
            self._sock.close()
            return
        self._server.should_exit = True
        self._thread.join(timeout if timeout is not None else self.limits.shutdown_timeout + 5)
        if self._thread.is_alive():
            log.warning("the HTTP server did not stop in time")
