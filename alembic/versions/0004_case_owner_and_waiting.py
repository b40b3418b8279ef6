"""tickets.owner, waiting_since, response_paused_at: the desk side of a case

A case has an owner (the first staff member who answers, or «#asignar»); the desk can
wait on the customer (incompleto, esperando_cliente), who is then chased, and while it
waits the response clock is paused. Existing cases get no owner and no wait.

Revision ID: 0004_case_owner_and_waiting
Revises: 0003_case_cc_held
Create Date: 2026-12-02 17:50:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004_case_owner_and_waiting'
down_revision: str | None = '0003_case_cc_held'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tickets', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('waiting_since', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('response_paused_at', sa.DateTime(timezone=True),
                                      nullable=True))
    op.create_index(op.f('ix_tickets_owner'), 'tickets', ['owner'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_tickets_owner'), table_name='tickets')
    with op.batch_alter_table('tickets', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('response_paused_at')
        batch_op.drop_column('waiting_since')
        batch_op.drop_column('owner')
