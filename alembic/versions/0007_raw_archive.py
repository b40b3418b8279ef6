"""inbound_raw_archive: the cold, compressed copy of closed cases' mail

`mailbridge archive` moves the message of a mail whose case is closed (or that never had
one) from `inbound_raw` to this table, zlib-compressed, so the hot table holds only the
mail still worked on as the desk grows. Each row names its codec. Nothing existing changes.

Revision ID: 0007_raw_archive
Revises: 0006_scale_indexes
Create Date: 2026-12-03 13:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007_raw_archive'
down_revision: str | None = '0006_scale_indexes'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('inbound_raw_archive',
    sa.Column('inbound_id', sa.Integer(), nullable=False),
    sa.Column('archived_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('codec', sa.String(length=16), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound.id'],
                            name=op.f('fk_inbound_raw_archive_inbound_id_inbound')),
    sa.PrimaryKeyConstraint('inbound_id', name=op.f('pk_inbound_raw_archive'))
    )


def downgrade() -> None:
    # The archived messages go back to the hot table first: a downgrade loses no mail.
    # (Decompressed in Python: neither SQLite nor PostgreSQL has zlib in SQL.)
    import zlib

    connection = op.get_bind()
    last = 0
    while True:  # a page at a time: the archive may be far bigger than memory
        rows = connection.execute(sa.text(
            "SELECT inbound_id, codec, raw FROM inbound_raw_archive WHERE inbound_id > :last "
            "ORDER BY inbound_id LIMIT 200"), {"last": last}).all()
        if not rows:
            break
        for inbound_id, codec, raw in rows:
            if codec != 'zlib':
                raise RuntimeError(f"inbound_raw_archive {inbound_id}: unknown codec {codec!r}")
            connection.execute(
                sa.text("INSERT INTO inbound_raw (inbound_id, raw) VALUES (:i, :r)"),
                {"i": inbound_id, "r": zlib.decompress(bytes(raw))})
        last = rows[-1][0]
    op.drop_table('inbound_raw_archive')
