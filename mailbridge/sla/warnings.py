"""SLA warnings to the desk: before a response target breaks, and when it breaks.

When a case's response clock is at risk (rules.yaml `desk.sla_warning_share` of its
target gone by, `response_at_risk_at`), its owner, else its queue, gets one mail; at the
breach another, to the owner and the queue. Each is claimed once per clock in
`case_actions` (kind `sla_at_risk` / `sla_breached`, the clock's due minute as its
sequence number), so two daemons, or a sweep run twice, never send it twice; a clock that
restarts (the case reopened) warns again. A paused clock (esperando_cliente) is not warned.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.orm import Session

from mailbridge.db import Database
from mailbridge.outbound.compose import AUTO_GENERATED, Mail, case_staff, compose
from mailbridge.outbound.webhooks import emit_event
from mailbridge.rules import Rules
from mailbridge.service_levels.policy import format_when_es
from mailbridge.sla.escalation import claim_action
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_RESOLVED,
    UNANSWERED,
    CaseAction,
    Ticket,
    TicketEvent,
)

log = logging.getLogger(__name__)

ACTION_AT_RISK = "sla_at_risk"
ACTION_BREACHED = "sla_breached"


def _running_clock() -> ColumnElement[bool]:
    return and_(
        UNANSWERED,  # the partial index of unanswered cases (models.py)
        Ticket.status.not_in((STATUS_RESOLVED, STATUS_CLOSED)),
        Ticket.response_due_at.is_not(None),
        Ticket.response_paused_at.is_(None),
    )


def _not_told(kind: str) -> ColumnElement[bool]:
    """No warning of this kind since the clock started."""
    return ~exists().where(CaseAction.ticket_id == Ticket.id, CaseAction.kind == kind,
                           CaseAction.at >= Ticket.response_started_at)


def clock_seq(ticket: Ticket) -> int:
    """One number per response clock: its due time in minutes (a restarted clock differs)."""
    assert ticket.response_due_at is not None
    return int(ticket.response_due_at.timestamp() // 60)


def warn_responses(db: Database, rules: Rules, now: datetime) -> tuple[int, int]:
    """Warn of the clocks at risk and the ones that broke at `now`: (at risk, breached)."""
    at_risk = and_(_running_clock(), Ticket.response_at_risk_at <= now,
                   Ticket.response_due_at >= now, _not_told(ACTION_AT_RISK))
    breached = and_(_running_clock(), Ticket.response_due_at < now, _not_told(ACTION_BREACHED))
    return (_warn(db, rules, now, at_risk, ACTION_AT_RISK),
            _warn(db, rules, now, breached, ACTION_BREACHED))


def _warn(db: Database, rules: Rules, now: datetime, condition: ColumnElement[bool],
          kind: str) -> int:
    told = 0
    # The candidates in one read, through the partial index of unanswered cases: few, even
    # after an outage. Sorted here: an ORDER BY id (or `id > after` pages) would have
    # SQLite walk every case in id order instead.
    with db.reader() as session:
        candidates = sorted(session.scalars(select(Ticket.id).where(condition)))
    for ticket_id in candidates:  # each in its own short write transaction
        with db.transaction() as session:
            ticket = session.scalar(select(Ticket).where(Ticket.id == ticket_id, condition))
            if ticket is not None and _tell(session, rules, ticket, kind, now):
                told += 1
    return told


def _tell(session: Session, rules: Rules, ticket: Ticket, kind: str, now: datetime) -> bool:
    due = ticket.response_due_at
    assert due is not None
    if claim_action(session, ticket.id, kind, clock_seq(ticket), now,
                    {"due_at": due.isoformat()}) is None:
        return False
    people = case_staff(rules, ticket)
    if kind == ACTION_BREACHED:
        people = [*people, *rules.queue_notify(ticket.queue)]
    session.add(TicketEvent(ticket_id=ticket.id, kind="sla_warning", at=now, data={
        "warning": "at_risk" if kind == ACTION_AT_RISK else "breached",
        "due_at": due.isoformat(), "told": people}))
    emit_event(session, f"case.{kind}", ticket, at=now, due_at=due, told=people)
    log.warning("response clock " + ("at risk" if kind == ACTION_AT_RISK else "broken"),
                extra={"case": ticket.number, "due_at": due.isoformat(), "told": people})
    if not people:
        return True
    level = rules.priorities.get(ticket.priority)  # type: ignore[call-overload]
    tenant = rules.tenant(ticket.tenant_id)
    compose(session, rules, Mail(
        kind=f"staff_{kind}", template="staff_sla_warning.txt.j2", to=people, ticket=ticket,
        auto_submitted=AUTO_GENERATED,
        context={"breached": kind == ACTION_BREACHED, "tenant": tenant, "now": now,
                 "due_es": format_when_es(due, rules.desk.zone),
                 "priority_label": level.label if level is not None else ticket.priority,
                 "minutes_left": max(0, round((due - now).total_seconds() / 60))},
    ), now=now)
    return True
