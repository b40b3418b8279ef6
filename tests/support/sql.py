"""What a block of test code asks the database: its SQL statements, SQLite's work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from mailbridge.db import Database


def _engines(db: Database) -> list[Any]:
    """The writer's engine and, on SQLite, the readers' (one engine on PostgreSQL)."""
    return list({id(e): e for e in (db.engine, db.read_engine)}.values())


@contextlib.contextmanager
def statements(db: Database, *, writer_only: bool = False) -> Iterator[list[str]]:
    """Every SQL statement run on the database's engines inside the block (the writer's
    alone with `writer_only`), whitespace folded."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    engines = [db.engine] if writer_only else _engines(db)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


@contextlib.contextmanager
def sqlite_steps(db: Database) -> Iterator[list[int]]:
    """Counts SQLite's virtual-machine steps (in thousands) of every statement run inside:
    what a query reads, whatever the machine's speed."""
    steps = [0]
    counting: dict[int, Any] = {}

    def tick() -> int:
        steps[0] += 1
        return 0

    def hook(conn, cursor, statement, parameters, context, many):  # type: ignore[no-untyped-def]
        dbapi = conn.connection.dbapi_connection
        dbapi.set_progress_handler(tick, 1000)
        counting[id(dbapi)] = dbapi

    engines = _engines(db)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", hook)
    try:
        yield steps
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", hook)
        for dbapi in counting.values():  # what runs after the block is not counted
            dbapi.set_progress_handler(None, 0)
