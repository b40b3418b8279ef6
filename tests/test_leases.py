"""Leases: one holder per IMAP account among workers; taken over when the holder dies."""

from __future__ import annotations

from mailbridge.db import Database
from mailbridge.leases import lease


def test_second_worker_waits_while_first_holds(db: Database) -> None:
    other = Database(db.url)  # another worker: its own engine and connections
    try:
        with lease(db, "imap:mesa-a") as first:
            assert first
            with lease(other, "imap:mesa-a") as second:
                assert second is db.is_sqlite  # SQLite serves one daemon: always held
            with lease(other, "imap:mesa-b") as unrelated:
                assert unrelated
        with lease(other, "imap:mesa-a") as after:
            assert after  # released: the next worker takes over
    finally:
        other.dispose()
