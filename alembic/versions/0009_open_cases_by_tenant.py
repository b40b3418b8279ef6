"""The tenant's open cases, newest first, for the look-alike check of every opening

Each opening whose exact subject matches no open case compares itself with the newest
50 open cases of its tenant (pipeline/cases.py `_OPEN_SUBJECTS`). Through
ix_tickets_tenant_status that read every open case of the tenant and sorted them: a
tenant with many open cases paid for all of them on every new mail (issue 21.3). A
partial index on the open cases by tenant and creation time hands them over newest
first. Nothing existing changes.

Revision ID: 0009_open_cases_by_tenant
Revises: 0008_clock_running_index
Create Date: 2026-12-04 19:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009_open_cases_by_tenant'
down_revision: str | None = '0008_clock_running_index'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "status != 'cerrado'"


def upgrade() -> None:
    op.create_index("ix_tickets_open_tenant_created", "tickets", ["tenant_id", "created_at"],
                    unique=False, sqlite_where=sa.text(WHERE), postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index("ix_tickets_open_tenant_created", table_name="tickets")
