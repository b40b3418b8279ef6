"""Connection floods against the real daemon started with few file descriptors.

Issue 15 item 4, made small: the daemon gets a soft RLIMIT_NOFILE of 256 and a total
cap of 60 SMTP connections; 300 idle connections from 15 loopback addresses (20 each,
the per-peer cap) are more than it could open. Each one past the cap must hear 421 and
be closed, a fresh client too (not hang), /healthz must answer meanwhile, the log must
stay a few lines, and a fresh client is served once some sessions close. Then the same
with a cap that does not fit (500 under 128 descriptors): accept() fails with EMFILE,
and those failures are logged once a second while the listener waits.
"""

from __future__ import annotations

import os
import smtplib
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from mailbridge.limits import fd_reserve, smtp_connection_cap
from mailbridge.settings import Settings
from tests.hostile.helpers import Closed, RawClient, report
from tests.support.daemon import Daemon, opening_mail
from tests.support.procfs import log_lines, open_fds, start_with_nofile, threads

NOFILE = 256
CAP = 60
PER_PEER = 20
FLOOD = 300  # from 15 addresses


def healthz_within(daemon: Daemon, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/healthz",
                                timeout=seconds) as response:
        return response.status, time.monotonic() - started


def metric(daemon: Daemon, line_start: str) -> float:
    _, body = daemon.http_get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def served(daemon: Daemon, source: str, timeout: float = 10.0) -> None:
    """A fresh client's mail is accepted, retried while its slot is not free yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10,
                              source_address=(source, 0)) as client:
                assert client.send_message(opening_mail(subject="TEN-1001 Tras la avalancha")) == {}
            return
        except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected):
            assert time.monotonic() < deadline, "no slot came back"
            time.sleep(0.1)


def test_default_cap_is_derived_from_the_fd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("MAILBRIDGE_")]:
        monkeypatch.delenv(key)  # the defaults, not the developer's settings
    settings = Settings(_env_file=None)
    assert settings.max_connections == 0
    reserve = fd_reserve(settings)
    assert reserve == 64 + 64 + 2 * 64  # base, database, HTTP (served + told 503)
    assert smtp_connection_cap(settings, limit=1024) == 1024 - reserve == 768
    assert smtp_connection_cap(settings, limit=65536) == 65536 - reserve
    assert smtp_connection_cap(settings, limit=200) == 16  # never below the floor
    with_children = Settings(_env_file=None, pipeline_processes=4, http_max_connections=10)
    assert smtp_connection_cap(with_children, limit=1024) == 1024 - 64 - 64 - 20 - 8
    assert smtp_connection_cap(Settings(_env_file=None, max_connections=42), limit=1024) == 42


def test_flood_past_the_fd_limit_gets_421_and_health_answers(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(max_connections=CAP, max_connections_per_peer=PER_PEER,
                         http_max_connections=8, smtp_timeout=120)
    start_with_nofile(daemon, NOFILE)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    fds_before, threads_before = open_fds(pid), threads(pid)
    lines_before = len(log_lines(daemon))
    started = time.monotonic()
    held: list[RawClient] = []
    refused: list[str] = []
    try:
        for n in range(FLOOD):
            client = RawClient(daemon.smtp_port, source=f"127.0.0.{2 + n // PER_PEER}")
            code, text = client.reply(timeout=10)
            if code == 220:
                held.append(client)
            else:
                assert code == 421 and "Too many connections" in text, text
                assert client.wait_closed(5), "a refused connection was left open"
                client.close()
                refused.append(text)
        assert len(held) == CAP and len(refused) == FLOOD - CAP
        fds_flood = open_fds(pid)
        assert fds_flood < NOFILE - 60, f"{fds_flood} descriptors open under the flood"

        # A fresh client hears 421 at once instead of hanging.
        with RawClient(daemon.smtp_port, source="127.0.0.200") as fresh:
            code, text = fresh.reply(timeout=5)
            assert code == 421 and "Too many connections" in text
            assert fresh.wait_closed(5)
        health = [healthz_within(daemon, 1.0) for _ in range(5)]
        assert all(status == 200 for status, _ in health)
        flood_seconds = time.monotonic() - started
        assert metric(daemon, 'mailbridge_connections_refused_total{listener="smtp",reason="limit"}') \
            == FLOOD - CAP + 1
        assert metric(daemon, 'mailbridge_connections_open{listener="smtp"}') == CAP
        new_lines = log_lines(daemon)[lines_before:]
        refusal_lines = [line for line in new_lines if "too many SMTP connections" in line]
        # One line a second at most (each saying how many it stands for).
        assert 1 <= len(refusal_lines) <= flood_seconds + 2, refusal_lines
        assert len(new_lines) <= len(refusal_lines) + 5, new_lines[:20]

        # Some close: a fresh client is served again.
        for client in held[:5]:
            client.close()
        del held[:5]
        served(daemon, "127.0.0.200")
        threads_flood = threads(pid)
    finally:
        for client in held:
            client.close()
    deadline = time.monotonic() + 10
    while open_fds(pid) > fds_before + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    fds_after = open_fds(pid)
    assert fds_after <= fds_before + 5
    assert daemon.stop() == 0
    report("smtp_fd_flood", nofile=NOFILE, cap=CAP, connections=FLOOD, held=CAP,
           refused_421=len(refused), fds_before=fds_before, fds_flood=fds_flood,
           fds_after=fds_after, threads_before=threads_before, threads_flood=threads_flood,
           healthz_seconds=[round(s, 4) for _, s in health], log_lines=len(new_lines),
           flood_seconds=round(flood_seconds, 1))


def test_accept_errors_are_logged_once_a_second(make_daemon: Callable[..., Daemon]) -> None:
    """A cap that does not fit: accept() runs out of descriptors and waits, quietly."""
    nofile = 128
    daemon = make_daemon(max_connections=500, max_connections_per_peer=500,
                         http_max_connections=4, smtp_timeout=120)
    start_with_nofile(daemon, nofile)
    assert daemon.proc is not None
    assert any("need more file descriptors" in line for line in log_lines(daemon))
    lines_before = len(log_lines(daemon))
    socks: list[socket.socket] = []
    try:
        # Connections the kernel completes (backlog) whether or not the daemon accepts.
        for n in range(200):
            socks.append(socket.create_connection(
                ("127.0.0.1", daemon.smtp_port), timeout=5,
                source_address=(f"127.0.0.{2 + n // 50}", 0)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                "accept() failed" in line for line in log_lines(daemon)[lines_before:]):
            time.sleep(0.1)
        watched_from = time.monotonic()
        time.sleep(3)
        watched = time.monotonic() - watched_from + 1
        accept_lines = [line for line in log_lines(daemon)[lines_before:]
                        if "accept() failed" in line]
        assert accept_lines, "accept() never ran out of descriptors"
        assert '"errno": "EMFILE"' in accept_lines[0]
        assert len(accept_lines) <= watched + 2, f"{len(accept_lines)} lines in {watched:.1f}s"
        assert len(log_lines(daemon)) - lines_before <= len(accept_lines) + 10
        assert daemon.proc.poll() is None
    finally:
        for sock in socks:
            sock.close()
    # With descriptors back, the listener accepts again after its pause.
    deadline = time.monotonic() + 15
    while True:
        try:
            with RawClient(daemon.smtp_port, source="127.0.0.100", timeout=5) as client:
                if client.reply(timeout=5)[0] == 220:
                    break
        except (Closed, TimeoutError, OSError):
            pass
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.2)
    served(daemon, "127.0.0.100")
    assert healthz_within(daemon, 1.0)[0] == 200
    assert metric(daemon, 'mailbridge_accept_errors_total{errno="EMFILE"}') >= len(accept_lines)
    assert daemon.stop() == 0
    report("smtp_accept_emfile", nofile=nofile, connections=200, accept_log_lines=len(accept_lines),
           watched_seconds=round(watched, 1))
