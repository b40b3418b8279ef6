"""A real webhook receiver: a small threaded HTTP server on loopback that records every
POST and answers 500 to the first `fail_first` tries of each event id (to prove retries
and that a retry carries the same id), or always (`fail_always`), then 200."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: bytes) -> bool:
        expected = "sha256=" + hmac.new(secret, self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-mailbridge-signature", ""), expected)


class WebhookReceiver:
    def __init__(self, *, fail_first: int = 0, fail_always: bool = False) -> None:
        self.fail_first = fail_first
        self.fail_always = fail_always
        self.deliveries: list[Delivery] = []
        self._tries: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                event_id = ""
                try:
                    event_id = json.loads(body).get("id", "")
                except ValueError:
                    pass
                with receiver._lock:
                    tries = receiver._tries[event_id] = receiver._tries.get(event_id, 0) + 1
                    status = 500 if receiver.fail_always or tries <= receiver.fail_first else 200
                    receiver.deliveries.append(Delivery(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        status, time.monotonic()))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.answered == 200]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[Delivery]:
        """Wait until the accepted deliveries satisfy `predicate`; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            accepted = self.accepted()
            if predicate(accepted):
                return accepted
            time.sleep(0.05)
        raise AssertionError(f"webhooks never arrived as expected: "
                             f"{[(d.answered, d.json.get('event')) for d in self.deliveries]}")

    def events(self) -> list[str]:
        return [d.json["event"] for d in self.accepted()]
