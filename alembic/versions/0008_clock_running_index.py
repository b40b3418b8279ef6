"""The cases whose response clock runs, for listing cases by SLA state (issue 21.2)

`GET /api/v1/cases?sla_state=a_tiempo|en_riesgo|en_pausa` (and `tickets list --sla`)
walked every case of the tenant, or every case, to test each clock: 20-38 ms at 100,000
cases, growing with the history. A partial index holds only the unanswered cases with
a clock (tickets/models.py CLOCK_RUNNING). Nothing existing changes.

Revision ID: 0008_clock_running_index
Revises: 0007_raw_archive
Create Date: 2026-12-03 14:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008_clock_running_index'
down_revision: str | None = '0007_raw_archive'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "response_due_at IS NOT NULL AND first_response_at IS NULL"


def upgrade() -> None:
    op.create_index("ix_tickets_clock_running", "tickets", ["response_due_at"], unique=False,
                    sqlite_where=sa.text(WHERE), postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index("ix_tickets_clock_running", table_name="tickets")
