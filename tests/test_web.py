"""The daemon's HTTP listener (Starlette on uvicorn): the ops endpoints and its bounds.

One daemon with small bounds: 8 connections served, a request must arrive within 2 s,
idle keep-alive 1 s. Half-sent requests are closed after the timeout (trickling bytes
does not extend it), past the limit the answer is 503, past twice the limit a
connection is answered 503 and closed at once, and no connection costs a thread.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbridge.settings import Settings
from tests.hostile.helpers import report
from tests.support.daemon import Daemon
from tests.support.procfs import open_fds, threads

MAX = 8
TIMEOUT = 2.0
KEEPALIVE = 1
HALF = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: flood"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("web") / "d", {
        "MAILBRIDGE_HTTP_MAX_CONNECTIONS": str(MAX),
        "MAILBRIDGE_HTTP_TIMEOUT": str(TIMEOUT),
        "MAILBRIDGE_HTTP_KEEPALIVE_TIMEOUT": str(KEEPALIVE),
    })
    daemon.upgrade()
    daemon.start()
    yield daemon
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
    assert daemon.stop() == 0


def connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5)


def request(daemon: Daemon, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request on a fresh connection: status, headers, body."""
    with connect(daemon) as sock:
        sock.sendall(raw)
        return read_response(sock, timeout)


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closed `sock` (EOF or reset) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def test_listens_on_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("MAILBRIDGE_")]:
        monkeypatch.delenv(key)  # the defaults, not the developer's settings
    settings = Settings(_env_file=None)
    assert settings.http_address == ("127.0.0.1", 8025)
    assert (settings.http_max_connections, settings.http_timeout,
            settings.http_keepalive_timeout) == (64, 10.0, 5)


def test_ops_endpoints_answer_as_before(daemon: Daemon) -> None:
    status, headers, body = request(daemon, get("/healthz"))
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "ok"}
    assert "server" not in headers

    status, headers, body = request(daemon, get("/readyz"))
    ready = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert ready["ready"] is True
    assert ready["checks"]["database"] == {"ok": True} and ready["checks"]["smtp"] == {"ok": True}

    status, headers, body = request(daemon, get("/metrics"))
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    # Refreshed from the database at scrape time (before_metrics), and the listeners' own.
    assert "mailbridge_inbound_waiting 0.0" in text
    assert 'mailbridge_connections_open{listener="http"}' in text
    assert 'mailbridge_connections_open{listener="smtp"} 0.0' in text
    assert "mailbridge_http_request_timeouts_total" in text

    status, _, body = request(daemon, get("/metrics?name[]=mailbridge_outbox_depth"))
    assert status == 200 and body.decode().startswith("# HELP mailbridge_outbox_depth")

    status, headers, body = request(daemon, get("/no-such-page"))
    assert status == 404 and json.loads(body) == {"error": "not found"}
    status, _, body = request(daemon, get("/healthz", "POST"))
    assert status == 405 and json.loads(body) == {"error": "method not allowed"}
    status, _, body = request(daemon, get("/healthz", "HEAD"))
    assert status == 200 and body == b""


def test_half_sent_requests_are_closed_after_the_timeout(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    threads_before, fds_before = threads(pid), open_fds(pid)
    half = [connect(daemon) for _ in range(MAX - 1)]
    try:
        opened = time.monotonic()
        for sock in half:
            sock.sendall(HALF)
        time.sleep(0.3)
        threads_flood, fds_flood = threads(pid), open_fds(pid)
        assert fds_flood >= fds_before + MAX - 1  # they are really held
        assert threads_flood <= threads_before + 1  # no thread per connection
        status, _, body = request(daemon, get("/healthz"))  # under the limit: served
        assert status == 200 and json.loads(body) == {"status": "ok"}
        closed_after = []
        for sock in half:
            assert closed_by_server(sock, TIMEOUT + 5), "a half-sent request was kept"
            closed_after.append(time.monotonic() - opened)
        # Closed by the request timeout, not at once.
        assert min(closed_after) >= TIMEOUT - 0.5, closed_after
    finally:
        for sock in half:
            sock.close()
    assert request(daemon, get("/healthz"))[0] == 200
    report("http_half_sent", connections=MAX - 1, timeout=TIMEOUT,
           threads_before=threads_before, threads_flood=threads_flood,
           fds_before=fds_before, fds_flood=fds_flood,
           closed_after=[round(s, 2) for s in (min(closed_after), max(closed_after))])


def test_trickling_bytes_do_not_extend_the_timeout(daemon: Daemon) -> None:
    with connect(daemon) as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for _ in range(int((TIMEOUT + 4) / 0.25)):
            try:
                sock.sendall(b"X-Slow: a\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(sock, 0.25):
                closed = True
                break
        assert closed, "a trickling request was kept past the timeout"
        assert time.monotonic() - opened < TIMEOUT + 3


def test_idle_keepalive_connection_is_closed(daemon: Daemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("connection") != "close"
        # A second request on the same connection is served (keep-alive works)…
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        # …then, idle, it is closed after the keep-alive timeout.
        assert closed_by_server(sock, KEEPALIVE + 3)


def test_past_the_limit_the_answer_is_503_never_a_hang(daemon: Daemon) -> None:
    served = [connect(daemon) for _ in range(MAX)]
    over: list[socket.socket] = []
    answers: dict[str, int] = {}
    try:
        for sock in served:
            sock.sendall(HALF)
        time.sleep(0.3)
        # Connection MAX+1 with a whole request: uvicorn's limit_concurrency answers 503.
        status, headers, body = request(daemon, get("/healthz"), timeout=3)
        assert status == 503 and headers["connection"] == "close"
        assert body == b"Service Unavailable"
        # Up to twice the limit a connection is held (and told 503 when its request
        # comes); past it, it is answered 503 as soon as accepted and closed.
        for _ in range(3 * MAX):
            over.append(connect(daemon))
        held: list[socket.socket] = []
        time.sleep(0.3)  # the refusals are written when accepted: here by now
        for sock in over:
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                held.append(sock)
                continue
            assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), data
            assert data.endswith(b"\r\n\r\nService Unavailable")
            assert closed_by_server(sock, 3)
            answers["503"] = answers.get("503", 0) + 1
        # MAX - 1 when the 503'd connection above was not yet counted out.
        assert MAX - 1 <= len(held) <= MAX and answers["503"] == 3 * MAX - len(held), answers
        answers["held"] = len(held)
        for sock in [*served, *held]:
            assert closed_by_server(sock, TIMEOUT + 5)
    finally:
        for sock in [*served, *over]:
            sock.close()
    deadline = time.monotonic() + 5
    while request(daemon, get("/healthz"))[0] != 200:  # slots free once the server saw the EOFs
        assert time.monotonic() < deadline
        time.sleep(0.1)
    lines = Path(daemon.log_path).read_text(errors="replace").splitlines()
    assert sum("Exceeded concurrency limit" in line for line in lines) <= 5
    report("http_past_limit", served=MAX, over=3 * MAX, answers_past_twice=answers)


def test_sigterm_with_open_http_connections(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "d", {"MAILBRIDGE_HTTP_TIMEOUT": "30"})
    daemon.upgrade()
    daemon.start()
    socks = [connect(daemon) for _ in range(5)]
    try:
        for sock in socks[:3]:
            sock.sendall(HALF)
        for sock in socks[3:]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert daemon.stop(timeout=20) == 0
        stopped_in = time.monotonic() - started
        for sock in socks:
            assert closed_by_server(sock, 1)
    finally:
        for sock in socks:
            sock.close()
    assert "mailbridge stopped" in daemon.log_tail()
    report("http_sigterm", open_connections=5, stopped_in=round(stopped_in, 2))


def test_responses_are_not_held_back_by_nagle() -> None:
    """Headers and body are two writes: without TCP_NODELAY on the accepted socket (the
    listening socket's proto is 0, so asyncio does not set it) the body of every answer on
    a kept-alive connection waited for the client's delayed ACK, ~40 ms (bench/api.py:
    GET /api/v1/cases/N p50 48 ms -> 7.7 ms)."""
    import http.client

    from mailbridge.web import HttpServer

    server = HttpServer("127.0.0.1", 0, readiness=lambda: {})
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        connections = list(server._server.server_state.connections)
        assert connections, "the kept-alive connection is open"
        for protocol in connections:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
    finally:
        server.stop()
