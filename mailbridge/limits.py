"""Limits that keep the listeners alive under floods: the fd budget, throttled logs.

A process has RLIMIT_NOFILE file descriptors (1024 by default under systemd). Every
SMTP session and HTTP connection holds one; the database, the relay, IMAP and the
pipeline children need theirs too. When they run out, accept() fails with EMFILE,
asyncio pauses that listener for a second and logs a traceback per failed accept, and
nothing else (a database connection, /healthz) can open a file. The SMTP listener is
therefore capped below the limit (`smtp_connection_cap`), and the asyncio accept errors
that can still happen are counted and logged at most once a second.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import threading
import time
from typing import Any

from prometheus_client import Counter, Gauge

from mailbridge.settings import Settings

log = logging.getLogger(__name__)

# Descriptors the daemon needs besides the listeners' connections: stdio, the epoll and
# signal fds, the listening sockets, the log, relay and IMAP connections.
BASE_RESERVE = 64
# The database: SQLAlchemy's pools (PostgreSQL 10 + 10 overflow; SQLite a handful of
# connections with the database, WAL and journal files each).
DATABASE_RESERVE = 64
# Below this the SMTP listener is not worth running; the cap never goes lower.
MIN_SMTP_CONNECTIONS = 16

REFUSED = Counter(
    "mailbridge_connections_refused_total",
    "Connections refused because a listener was full",
    ["listener", "reason"],
)
OPEN = Gauge("mailbridge_connections_open", "Connections open on a listener", ["listener"])
ACCEPT_ERRORS = Counter(
    "mailbridge_accept_errors_total",
    "accept() failures for lack of file descriptors or memory (the listener pauses 1 s)",
    ["errno"],
)


def fd_limit() -> int:
    """This process's soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def http_fd_bound(settings: Settings) -> int:
    """Most HTTP connections open at once: served ones plus as many told 503."""
    return 2 * settings.http_max_connections


def fd_reserve(settings: Settings) -> int:
    """Descriptors kept for everything that is not an SMTP session."""
    return (BASE_RESERVE + DATABASE_RESERVE + http_fd_bound(settings)
            + 2 * settings.pipeline_processes)


def smtp_connection_cap(settings: Settings, limit: int | None = None) -> int:
    """Concurrent SMTP sessions allowed: the setting, or what the fd limit leaves.

    An explicit MAILBRIDGE_MAX_CONNECTIONS is honoured even when it does not fit (with
    a warning at start, see `check_fd_budget`); 0 derives it from RLIMIT_NOFILE.
    """
    if settings.max_connections:
        return settings.max_connections
    limit = fd_limit() if limit is None else limit
    return max(MIN_SMTP_CONNECTIONS, limit - fd_reserve(settings))


def check_fd_budget(settings: Settings) -> dict[str, int]:
    """Log a warning when the SMTP cap does not fit under the fd limit; the figures."""
    limit = fd_limit()
    cap = smtp_connection_cap(settings, limit)
    needed = cap + fd_reserve(settings)
    if needed > limit:
        log.warning(
            "the connection limits need more file descriptors than this process may open; "
            "raise LimitNOFILE (ulimit -n) or lower MAILBRIDGE_MAX_CONNECTIONS",
            extra={"fd_limit": limit, "needed": needed, "smtp_max_connections": cap,
                   "http_max_connections": settings.http_max_connections},
        )
    return {"fd_limit": limit, "smtp_max_connections": cap}


class LogThrottle:
    """At most one log line per key and interval; the lines not written are counted."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, int]:
        """(write it now?, lines suppressed since the last one written)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._suppressed.pop(key, 0)


class ThrottleFilter(logging.Filter):
    """A logging filter: each distinct message at most once an interval."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__()
        self.throttle = LogThrottle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        allowed, suppressed = self.throttle.allow(str(record.msg))
        if allowed and suppressed:
            record.suppressed = suppressed
        return allowed


ACCEPT_FAILED = "socket.accept() out of system resource"


def throttle_accept_errors(loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> None:
    """Count asyncio's accept() failures and log them at most once an interval.

    asyncio's selector loop (`BaseSelectorEventLoop._accept_connection`) already stops
    reading a listening socket for a second after EMFILE/ENFILE/ENOBUFS/ENOMEM, but it
    reports each failed accept() of the round (up to the backlog, 100) through the loop's
    exception handler, which logs a traceback each time: thousands of lines a second.
    Everything else goes to the handler that was there before (or the default one).
    """
    throttle = LogThrottle(interval)
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            exc = context.get("exception")
            code = getattr(exc, "errno", None)
            name = errno.errorcode.get(code, str(code)) if isinstance(code, int) else "unknown"
            ACCEPT_ERRORS.labels(errno=name).inc()
            allowed, suppressed = throttle.allow(name)
            if allowed:
                sock = context.get("socket")
                try:
                    where = str(sock.getsockname()) if sock is not None else "?"
                except OSError:
                    where = "?"
                log.error(
                    "accept() failed: out of file descriptors or memory; this listener "
                    "pauses for a second",
                    extra={"errno": name, "listener": where, "fd_limit": fd_limit(),
                           "suppressed": suppressed},
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
