"""tickets.cc_held: people copied on a case who are recorded but not mailed

Hostile round 2: a mail with 30 outsiders in Cc made every automatic answer go to all
of them. Copies from outside the tenant's contacts, domains and staff are kept here
until staff add them («#cc persona@dominio»). Existing cases keep their `cc` as it is.

Revision ID: 0003_case_cc_held
Revises: 0002_inbound_raw
Create Date: 2026-12-02 16:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003_case_cc_held'
down_revision: str | None = '0002_inbound_raw'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tickets', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('cc_held', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('cc_held')
