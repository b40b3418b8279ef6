"""Shared fixtures: real SMTP sinks, real daemons, real databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbridge.db import Database
from mailbridge.rules import Rules, load_rules
from mailbridge.schema import upgrade
from mailbridge.settings import Settings
from tests.support.daemon import Daemon
from tests.support.sink import SmtpSink

REPO = Path(__file__).resolve().parent.parent


def corpus_dir() -> Path:
    return Path(os.environ.get("MAILBRIDGE_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for in-process tests: a fresh data dir and the demo rules."""
    for key in list(os.environ):
        if key.startswith("MAILBRIDGE_") and key != "MAILBRIDGE_CORPUS":
            monkeypatch.delenv(key)
    return Settings(data_dir=tmp_path / "var", rules=REPO / "rules.yaml", _env_file=None)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """A real, migrated SQLite database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    database = Database(settings.resolved_database_url)
    yield database
    database.dispose()


@pytest.fixture
def rules() -> Rules:
    return load_rules(REPO / "rules.yaml")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[object]:
    """Factory: make_daemon(relay_port=…, **env) → an upgraded, not yet started Daemon."""
    started: list[Daemon] = []

    def factory(name: str = "d", relay_port: int | None = None, **env: str) -> Daemon:
        extra = {f"MAILBRIDGE_{k.upper()}": str(v) for k, v in env.items()}
        if relay_port is not None:
            extra["MAILBRIDGE_RELAY"] = f"127.0.0.1:{relay_port}"
        daemon = Daemon(tmp_path / name, extra)
        daemon.upgrade()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
