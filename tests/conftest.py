"""Shared fixtures: real SMTP sinks, real daemons, real databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import mailbridge.models  # noqa: F401  (every table known before a database opens)
from mailbridge.db import Database
from mailbridge.rules import Rules, load_rules, parse_rules
from mailbridge.schema import upgrade
from mailbridge.settings import Settings
from tests.support.corpus import corpus_dir  # noqa: F401  (tests import it from here)
from tests.support.daemon import Daemon
from tests.support.postgres import PostgresServer, postgres_available
from tests.support.rules import DEMO_RULES, quiet_desk_text, write_quiet_desk
from tests.support.sink import SmtpSink

REPO = Path(__file__).resolve().parent.parent
# `MAILBRIDGE_TEST_BACKEND=postgresql` runs every test that uses a database against a
# private PostgreSQL server started for the session (see tests/support/postgres.py).
BACKEND = os.environ.get("MAILBRIDGE_TEST_BACKEND", "sqlite")


DATABASE_FIXTURES = {"db", "make_daemon", "database_url", "settings"}


def pytest_report_header(config: pytest.Config) -> str:
    return f"mailbridge database backend: {BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, run every test that touches the database, and only those."""
    if BACKEND != "postgresql":
        return
    keep = [i for i in items if DATABASE_FIXTURES & set(getattr(i, "fixturenames", ()))]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    if BACKEND != "postgresql":
        yield None
        return
    if not postgres_available():
        pytest.fail("MAILBRIDGE_TEST_BACKEND=postgresql but PostgreSQL is not installed: "
                    "run scripts/install-test-deps.sh")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresServer | None) -> str | None:
    """A fresh database on the PostgreSQL server, or None for the SQLite default."""
    return postgres_server.create_database() if postgres_server is not None else None


@pytest.fixture
def settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None
) -> Settings:
    """Settings for in-process tests: a fresh data dir and the demo rules."""
    for key in list(os.environ):
        if key.startswith("MAILBRIDGE_") and key != "MAILBRIDGE_CORPUS":
            monkeypatch.delenv(key)
    return Settings(data_dir=tmp_path / "var", rules=write_quiet_desk(tmp_path / "rules"),
                    database_url=database_url, _env_file=None)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """A real, migrated database (SQLite file, or PostgreSQL with the backend switch)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


@pytest.fixture
def rules() -> Rules:
    """The demo rules on the quiet desk (tests/support/rules.py); `demo_rules` as shipped."""
    return parse_rules(quiet_desk_text())


@pytest.fixture
def demo_rules() -> Rules:
    return load_rules(DEMO_RULES)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
def make_daemon(tmp_path: Path, postgres_server: PostgresServer | None) -> Iterator[object]:
    """Factory: make_daemon(relay_port=…, **env) → an upgraded, not yet started Daemon.

    Daemons made with the same `shared_db` name share one database (workers).
    """
    started: list[Daemon] = []
    shared: dict[str, str] = {}

    def factory(name: str = "d", relay_port: int | None = None, shared_db: str | None = None,
                desk_notices: bool = False, **env: str) -> Daemon:
        extra = {f"MAILBRIDGE_{k.upper()}": str(v) for k, v in env.items()}
        if postgres_server is not None and "MAILBRIDGE_DATABASE_URL" not in extra:
            if shared_db is not None and shared_db in shared:
                url = shared[shared_db]
            else:
                url = postgres_server.create_database()
                if shared_db is not None:
                    shared[shared_db] = url
            extra["MAILBRIDGE_DATABASE_URL"] = url
        if relay_port is not None:
            extra["MAILBRIDGE_RELAY"] = f"127.0.0.1:{relay_port}"
        daemon = Daemon(tmp_path / name, extra, desk_notices=desk_notices)
        daemon.upgrade()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
