"""Fixtures for the IMAP intake tests: a real Dovecot and a database with the IMAP tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailbridge.db import Base, Database
from tests.support.dovecot import DovecotServer, skip_unless_dovecot

QUEUE_ADDRESS = "soporte-a@mesa.example"


@pytest.fixture
def imap_server() -> Iterator[DovecotServer]:
    """A private Dovecot on 127.0.0.1 (skips when Dovecot is not installed)."""
    skip_unless_dovecot()
    with DovecotServer() as server:
        yield server


@pytest.fixture
def imap_db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite database with the spool, ticket and IMAP tables (created, not migrated)."""
    # importing the modules registers their tables on Base.metadata
    import mailbridge.intake.imap
    import mailbridge.spool
    import mailbridge.tickets.models

    try:
        import mailbridge.models  # noqa: F401  (every other table, when present)
    except ImportError:  # pragma: no cover
        pass
    database = Database(f"sqlite:///{tmp_path / 'imap.db'}")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def make_account(imap_server: DovecotServer) -> Callable[..., Any]:
    """Factory: make_account(**overrides) → an ImapAccount for the test server."""
    from mailbridge.intake.imap_config import ImapAccount

    def factory(**overrides: Any) -> ImapAccount:
        values: dict[str, Any] = {
            "name": "mesa-a",
            "host": imap_server.host,
            "port": imap_server.port,
            "security": "none",
            "username": imap_server.user,
            "password": imap_server.password,
            "queue_address": QUEUE_ADDRESS,
            "initial_sync": "all",
            "poll_interval": 0.5,
        }
        values.update(overrides)
        return ImapAccount(**values)

    return factory
