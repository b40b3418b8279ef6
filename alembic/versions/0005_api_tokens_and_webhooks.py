"""api_tokens, board_sessions, webhook_events, webhook_deliveries: the desk's tools

API tokens and board sessions are kept hashed (issue 18); webhook events are an outbox
written in the transaction that caused them, each delivered to each target on its own.
Nothing existing changes.

Revision ID: 0005_api_tokens_and_webhooks
Revises: 0004_case_owner_and_waiting
Create Date: 2026-12-02 18:28:54.839707
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005_api_tokens_and_webhooks'
down_revision: str | None = '0004_case_owner_and_waiting'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('name', name=op.f('uq_api_tokens_name')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    op.create_table('board_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('session_hash', sa.String(length=64), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], name=op.f('fk_board_sessions_token_id_api_tokens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_board_sessions')),
    sa.UniqueConstraint('session_hash', name=op.f('uq_board_sessions_session_hash'))
    )
    with op.batch_alter_table('board_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_board_sessions_token_id'), ['token_id'], unique=False)

    op.create_table('webhook_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('event', sa.String(length=40), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_webhook_events_ticket_id_tickets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_webhook_events_event_id'))
    )
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_events_published_at'), ['published_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_events_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_pk', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['event_pk'], ['webhook_events.id'], name=op.f('fk_webhook_deliveries_event_pk_webhook_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('event_pk', 'target', name=op.f('uq_webhook_deliveries_event_pk'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_event_pk'), ['event_pk'], unique=False)
        batch_op.create_index('ix_webhook_deliveries_target_state_next', ['target', 'state', 'next_attempt_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_target_state_next')
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_event_pk'))

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_events_ticket_id'))
        batch_op.drop_index(batch_op.f('ix_webhook_events_published_at'))

    op.drop_table('webhook_events')
    with op.batch_alter_table('board_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_board_sessions_token_id'))

    op.drop_table('board_sessions')
    op.drop_table('api_tokens')
