"""Engine, sessions and the transaction helper; SQLite (WAL) or PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; synchronous=FULL makes a
    # commit durable before we answer 250 (NORMAL may lose the last commits).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # The busy timeout is sqlite3's `timeout` (make_engine): 30 s, or `?timeout=S` in the URL.
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on
    # busy_timeout instead of failing with "database is locked" on upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _busy_timeout(url: str) -> float:
    """How long a SQLite writer waits for the lock: 30 s, or `?timeout=S` in the URL."""
    return float(make_url(url).query.get("timeout", 30))  # type: ignore[arg-type]


def make_engine(url: str, *, echo: bool = False, immediate: bool = True) -> Engine:
    """An engine for `url`; on SQLite, `immediate` makes every transaction a writer."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        busy = _busy_timeout(url)
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": busy}
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        if immediate:
            event.listen(engine, "begin", _sqlite_begin)
        else:
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)
    event.listen(engine, "before_cursor_execute", _no_nul_in_text, retval=True)
    return engine


def _clean(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _no_nul_in_text(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    """PostgreSQL text cannot hold NUL; mail text can. Stored as U+FFFD, visible, not lost."""
    if isinstance(parameters, dict):
        parameters = {k: _clean(v) for k, v in parameters.items()}
    elif isinstance(parameters, list | tuple):
        parameters = type(parameters)(
            {k: _clean(v) for k, v in p.items()} if isinstance(p, dict)
            else type(p)(_clean(v) for v in p) if isinstance(p, list | tuple) else _clean(p)
            for p in parameters
        )
    return statement, parameters


class WriteLock:
    """The SQLite write lock, taken before SQLite's own: a thread lock, then a file lock.

    SQLite's busy handler polls with sleeps of up to 100 ms, which under load
    starves whoever is unlucky (measured in bench/). Writers of one process
    queue on the thread lock; writers in other processes (pipeline processes,
    the CLI beside a running daemon) on `flock`, polled every 0.1–2 ms. Both
    give up after the busy timeout with SQLite's "database is locked".
    Re-entrant within a thread, like the RLock it wraps.
    """

    def __init__(self, path: Path | None, timeout: float = 30.0) -> None:
        self._thread_lock = threading.RLock()
        self._path = path
        # As long as SQLite's busy timeout: then "database is locked", as before.
        self.timeout = timeout
        self._fd: int | None = None
        self._pid = 0
        self._depth = 0

    def _file(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():
            # A forked child must not share the parent's open file description:
            # flock would then treat both as one holder.
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise _locked("another thread of this process holds the write lock")
        if self._depth == 0:
            try:
                fd = self._file()
                if fd is not None:
                    self._flock(fd, deadline)
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1

    @staticmethod
    def _flock(fd: int, deadline: float) -> None:
        """Take the file lock, waiting at most until `deadline`.

        flock cannot time out, so a busy lock is polled; the wait between tries grows
        from 0.1 to 2 ms (SQLite's own handler sleeps up to 100 ms). A writer stuck
        holding it then costs the others a `database is locked` after the busy
        timeout (intake answers 451), never a hang.
        """
        delay = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _locked("another process holds the write lock") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.002)

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None and self._depth == 0:
                if self._pid == os.getpid():
                    os.close(self._fd)
                self._fd = None

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def _locked(why: str) -> OperationalError:
    """What SQLite says when its busy timeout ends: a transient error to every caller."""
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
        f"database is locked ({why})"))


def _sqlite_lock_path(url: str, suffix: str = ".writelock") -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + suffix)


class ProcessLock:
    """A lock file beside a SQLite database, taken without waiting: of the processes on
    one database file, one does the guarded work at a time (the outbox sender: it sends
    outside any transaction, so two daemons on one file would otherwise both send a
    row). Released by `release` or when the process dies. A no-op without a file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = os.getpid()

    def try_acquire(self) -> bool:
        if self.path is None:
            return True
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class Database:
    """Owns the engine and hands out sessions and transactions."""

    def __init__(self, url: str) -> None:
        # The tables refer to each other (the outbox to cases and stored mail): every one
        # must be known before the first flush. The entry points import mailbridge.models,
        # the registry of all tables; the lowest layer cannot import it (it would import
        # every layer above), so it only checks.
        if "tickets" not in Base.metadata.tables or "outbox" not in Base.metadata.tables:
            raise RuntimeError("import mailbridge.models before opening the database")
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._writer_lock: WriteLock | contextlib.nullcontext[None] = (
            WriteLock(_sqlite_lock_path(url), _busy_timeout(url)) if self.is_sqlite
            else contextlib.nullcontext()
        )
        self.engine = make_engine(url)
        # Copied into every session's `info`: what the layers above tell their own
        # statements about this process (e.g. "webhook_events": False, no receivers).
        self.session_info: dict[str, Any] = {}
        self.sessions = sessionmaker(self.engine, expire_on_commit=False,
                                     info=self.session_info)
        self.sqlite_sender_lock = ProcessLock(
            _sqlite_lock_path(url, ".senderlock") if self.is_sqlite else None)
        # SQLite readers must not take the write lock; PostgreSQL needs no split.
        self.read_engine = make_engine(url, immediate=False) if self.is_sqlite else self.engine
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False,
                                          info=self.session_info)


    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any error.

        On SQLite the writers queue on `WriteLock` (this process's threads and
        other processes alike), which wakes the next one at once.
        """
        with self._writer_lock, self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session (never commits)."""
        with self.read_sessions() as session:
            yield session

    def dispose(self) -> None:
        if isinstance(self._writer_lock, WriteLock):
            self._writer_lock.close()
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
