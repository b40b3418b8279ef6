"""Indexes for a desk with a million cases (issue 21.2)

Only partial indexes, each holding the few rows an SLA watch or `mailbridge status` looks
for among a desk's years of cases: unacknowledged, acknowledged late, unanswered, answered
late (tickets), failed for good (outbox). Nothing existing changes. The conditions are
tickets/models.py's UNACKED … ANSWERED_LATE_UNTOLD and outbound/outbox.py's FAILED.

Revision ID: 0006_scale_indexes
Revises: 0005_api_tokens_and_webhooks
Create Date: 2026-12-03 10:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006_scale_indexes'
down_revision: str | None = '0005_api_tokens_and_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


INDEXES = (
    ("ix_outbox_failed", "id", "state = 'failed'"),
    ("ix_tickets_unacked", "ack_due_at", "acked_at IS NULL"),
    ("ix_tickets_acked_late", "acked_at", "acked_at > ack_due_at"),
    ("ix_tickets_ack_late_untold", "id", "ack_late_at IS NULL AND acked_at > ack_due_at"),
    ("ix_tickets_unanswered", "response_due_at",
     "first_response_at IS NULL AND status != 'cerrado'"),
    ("ix_tickets_answered_late_untold", "id",
     "response_breached_at IS NULL AND first_response_at > response_due_at"),
)


def _table(index: str) -> str:
    return index.split("_")[1]


def upgrade() -> None:
    for name, column, where in INDEXES:
        op.create_index(name, _table(name), [column], unique=False,
                        sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    for name, _column, _where in reversed(INDEXES):
        op.drop_index(name, table_name=_table(name))
