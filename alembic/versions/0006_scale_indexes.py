"""Indexes for a desk with a million cases (issue 21.2)

Only indexes: nothing existing changes. Filled in as each query that grows is found.

Revision ID: 0006_scale_indexes
Revises: 0005_api_tokens_and_webhooks
Create Date: 2026-12-03 10:00:00
"""
from collections.abc import Sequence


revision: str = '0006_scale_indexes'
down_revision: str | None = '0005_api_tokens_and_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
