"""inbound raw in its own table

The message bytes move from `inbound.raw` to `inbound_raw` (written once at
intake): SQLite rewrites a whole row, overflow pages included, on every update,
and the pipeline updates each inbound row. Existing messages are copied over.
SQLite drops the column with its own ALTER TABLE … DROP COLUMN (3.35+): a
batch "move and copy" of `inbound` would fail on its foreign keys.

Revision ID: 0002_inbound_raw
Revises: 0001_initial
Create Date: 2026-11-28 04:39:21.104680
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002_inbound_raw'
down_revision: str | None = '0001_initial'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('inbound_raw',
    sa.Column('inbound_id', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound.id'], name=op.f('fk_inbound_raw_inbound_id_inbound')),
    sa.PrimaryKeyConstraint('inbound_id', name=op.f('pk_inbound_raw'))
    )
    op.execute(
        "INSERT INTO inbound_raw (inbound_id, raw) "
        "SELECT id, raw FROM inbound WHERE raw IS NOT NULL"
    )
    with op.batch_alter_table('inbound', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('raw')


def downgrade() -> None:
    with op.batch_alter_table('inbound', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('raw', sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE inbound SET raw = "
        "(SELECT r.raw FROM inbound_raw AS r WHERE r.inbound_id = inbound.id)"
    )
    op.drop_table('inbound_raw')
