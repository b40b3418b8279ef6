"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mailbridge.models import metadata


def test_migrations_match_the_models(db) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, metadata)
    # A difference means a model changed without its migration (scripts/new-migration.sh).
    assert differences == []
