"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from alembic import command
from mailbridge.db import Database, make_engine
from mailbridge.models import metadata
from mailbridge.schema import (
    RevisionScriptError,
    alembic_config,
    current_revision,
    head_revision,
    pending_revision,
    upgrade,
)
from mailbridge.settings import Settings
from mailbridge.spool import InboundMail, pending_raw

REPO = Path(__file__).resolve().parent.parent


def test_migrations_match_the_models(db) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, metadata)
    # A difference means a model changed without its migration (scripts/new-migration.sh).
    assert differences == []


def test_head_revision_is_alembics_head() -> None:
    """The start-up check reads the scripts without Alembic; it must agree with Alembic."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == script.get_current_head()


def _downgrade(url: str, revision: str) -> None:
    engine = make_engine(url, immediate=False)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def _empty_database(settings: Settings) -> str:
    """The test's database with no table at all (PostgreSQL's come from a migrated template)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade(url)
    _downgrade(url, "base")
    return url


def test_pending_revision_before_and_after_upgrade(settings: Settings) -> None:
    url = _empty_database(settings)
    database = Database(url)
    try:
        assert current_revision(database.engine) is None
        assert pending_revision(database.engine) == head_revision()
        upgrade(url, "0001_initial")
        if head_revision() != "0001_initial":
            assert pending_revision(database.engine) == head_revision()
        upgrade(url)
        assert current_revision(database.engine) == head_revision()
        assert pending_revision(database.engine) is None
    finally:
        database.dispose()


def test_the_daemon_does_not_import_alembic() -> None:
    code = (
        "import sys, mailbridge.service\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    assert done.stdout.strip() == ""


def _write_script(directory: Path, name: str, revision: str, down: str) -> None:
    (directory / f"{name}.py").write_text(
        f'"""{name}"""\nfrom alembic import op\n\n'
        f"revision: str = {revision!r}\ndown_revision: str | None = {down}\n\n"
        "def upgrade() -> None:\n    op.execute('SELECT 1')\n",
        encoding="utf-8",
    )


def test_head_revision_follows_down_revisions(tmp_path: Path) -> None:
    _write_script(tmp_path, "a", "aaa", "None")
    _write_script(tmp_path, "c", "ccc", "'bbb'")
    _write_script(tmp_path, "b", "bbb", "'aaa'")
    assert head_revision(tmp_path) == "ccc"
    _write_script(tmp_path, "d", "ddd", "'bbb'")  # a branch: two heads
    with pytest.raises(RevisionScriptError, match="one head"):
        head_revision(tmp_path)
    _write_script(tmp_path, "e", "eee", "('ccc', 'ddd')")  # the merge
    assert head_revision(tmp_path) == "eee"


def _old_inbound_table() -> sa.TableClause:
    """`inbound` as 0001_initial made it, raw column included."""
    return sa.table(
        "inbound",
        sa.column("id", sa.Integer), sa.column("received_at", sa.DateTime(timezone=True)),
        sa.column("channel", sa.String), sa.column("mail_from", sa.String),
        sa.column("rcpt_tos", sa.JSON), sa.column("size", sa.Integer),
        sa.column("sha256", sa.String), sa.column("raw", sa.LargeBinary),
        sa.column("state", sa.String), sa.column("attempts", sa.Integer),
    )


def test_0002_moves_stored_mails_to_inbound_raw_and_back(settings: Settings) -> None:
    url = _empty_database(settings)
    upgrade(url, "0001_initial")
    mails = {1: b"Subject: one\r\n\r\nfirst\r\n", 2: bytes(range(256)) * 4000, 3: None}
    database = Database(url)
    try:
        with database.engine.begin() as connection:
            connection.execute(sa.insert(_old_inbound_table()), [
                {"id": i, "received_at": datetime(2026, 11, 28, tzinfo=UTC), "channel": "pipe",
                 "mail_from": "", "rcpt_tos": ["soporte-a@mesa.example"],
                 "size": len(raw or b""), "sha256": "0" * 64, "raw": raw,
                 "state": "done" if i == 1 else "new", "attempts": 0}
                for i, raw in mails.items()
            ])
        upgrade(url, "0002_inbound_raw")
        with database.engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("inbound")}
            copied = dict(connection.execute(sa.text("SELECT inbound_id, raw FROM inbound_raw")).all())
        assert "raw" not in columns
        assert {k: bytes(v) for k, v in copied.items()} == {1: mails[1], 2: mails[2]}
        upgrade(url)  # and whatever follows (the models are head's: read them there)
        with database.reader() as session:
            assert session.get(InboundMail, 1).raw == mails[1]  # type: ignore[union-attr]
            assert session.get(InboundMail, 3).raw is None  # type: ignore[union-attr]
            assert pending_raw(session, 1) is None  # done
            assert pending_raw(session, 2) == mails[2]
        _downgrade(url, "0001_initial")
        with database.engine.connect() as connection:
            back = dict(connection.execute(sa.text("SELECT id, raw FROM inbound")).all())
            assert not sa.inspect(connection).has_table("inbound_raw")
        assert {k: None if v is None else bytes(v) for k, v in back.items()} == mails
    finally:
        database.dispose()
