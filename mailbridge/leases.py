"""Leases between workers: one holder per resource (an IMAP account), taken over on death.

On PostgreSQL a lease is a session-level advisory lock on a connection held for
as long as the work lasts; when the holder dies its connection closes and the
lock is free for the next worker. SQLite serves one daemon: the lease is always held.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from mailbridge.db import Database

log = logging.getLogger(__name__)


def lease_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def lease(db: Database, name: str) -> Iterator[bool]:
    """Yield True while this process holds the lease `name`, False when another does."""
    if db.is_sqlite:
        yield True
        return
    key = lease_key(name)
    connection = db.engine.connect()
    held = False
    try:
        held = bool(
            connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        )
        connection.commit()
        yield held
    finally:
        try:
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
        except Exception:
            # A broken connection must not go back to the pool still holding the lock.
            connection.invalidate()
            log.warning("lease connection lost", extra={"lease": name})
        finally:
            connection.close()
