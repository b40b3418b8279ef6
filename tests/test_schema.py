"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mailbridge.db import Database
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


def test_pending_revision_before_and_after_upgrade(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
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
