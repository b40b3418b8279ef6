"""Schema migrations with Alembic: `mailbridge db upgrade` and the start-up check.

The start-up check reads the revision scripts as text and `alembic_version` with
SQL: importing Alembic (and Mako with it) would add ~9 MB to every daemon just to
compare two strings. Only `db upgrade` and the tooling import Alembic.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from mailbridge.db import make_engine
from mailbridge.resources import data_dir

if TYPE_CHECKING:
    from alembic.config import Config

ALEMBIC_DIR = data_dir("alembic", "env.py")
VERSIONS_DIR = ALEMBIC_DIR / "versions"
VERSION_TABLE = "alembic_version"


class RevisionScriptError(Exception):
    """The revision scripts do not form one line of history with one head."""


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    engine = make_engine(url, immediate=False)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _script_revisions(path: Path) -> tuple[str, tuple[str, ...]]:
    """`revision` and `down_revision` of one script, read from its module-level assignments."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            found[target.id] = ast.literal_eval(value)
    revision, down = found.get("revision"), found.get("down_revision")
    if not isinstance(revision, str):
        raise RevisionScriptError(f"{path}: no `revision = \"...\"` line")
    if down is None:
        return revision, ()
    if isinstance(down, str):
        return revision, (down,)
    if isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
        return revision, tuple(down)
    raise RevisionScriptError(f"{path}: unreadable down_revision {down!r}")


def head_revision(versions_dir: Path = VERSIONS_DIR) -> str:
    """The one head of the revision scripts: the revision no other script revises."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted(versions_dir.glob("*.py")):
        revision, downs = _script_revisions(path)
        if revision in revisions:
            raise RevisionScriptError(f"{path}: revision {revision} defined twice")
        revisions.add(revision)
        revised.update(downs)
    heads = sorted(revisions - revised)
    if len(heads) != 1:
        raise RevisionScriptError(f"{versions_dir}: expected one head, found {heads}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before the first upgrade)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    if len(rows) > 1:
        raise RevisionScriptError(f"the database has several revisions: {[r[0] for r in rows]}")
    return rows[0][0] if rows else None


def pending_revision(engine: Engine) -> str | None:
    """None when the database is at head; else the head it should be upgraded to."""
    head = head_revision()
    return None if current_revision(engine) == head else head
