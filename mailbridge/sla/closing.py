"""Closing a resolved case (seed 003): on the customer's confirmation, or after unanswered attempts.

"Se cierra una solicitud de soporte cuando el cliente confirma que se ha alcanzado una
resolución o si el equipo de soporte no recibe una respuesta por parte del cliente después
de tres intentos de contacto durante un período de diez días."

- `#estado resuelto` (staff) asks the customer to confirm: that mail is attempt 1.
- The sweep sends the next attempts, `period / attempts` apart (moved to the next opening
  of the tenant's desk), and once all `attempts` went out closes the case `period` after
  the first unanswered one (`policy.auto_close_at`), but never sooner than `period /
  attempts` after the last: a holiday that delays an attempt gives the customer the same
  time to answer it. The closing sends its own mail.
- A customer's reply that confirms (`rules.closing.confirms`) closes the case at once; any
  other reply answers the attempts so far and the count starts again from that reply.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.db import Database
from mailbridge.outbound.compose import Mail, compose
from mailbridge.outbound.webhooks import emit_event
from mailbridge.rules import Rules, Tenant
from mailbridge.service_levels.policy import auto_close_at, format_when_es
from mailbridge.sla.cases import last_customer_message_at, tenant_calendar
from mailbridge.sla.escalation import claim_action, next_seq
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_INCOMPLETE,
    STATUS_RESOLVED,
    STATUS_WAITING,
    CaseAction,
    Ticket,
    TicketEvent,
)

log = logging.getLogger(__name__)

ACTION_CLOSING_ATTEMPT = "closing_attempt"
UTC_ZONE = ZoneInfo("UTC")


def _customer_addresses(rules: Rules, ticket: Ticket) -> tuple[list[str], list[str]]:
    """The case's customer and the people in copy who are not staff."""
    return [ticket.sender], [c for c in (ticket.cc or []) if not rules.is_staff(c)]


def _attempts(session: Session, ticket: Ticket) -> list[CaseAction]:
    """Closing attempts made since the case was last resolved."""
    if ticket.resolved_at is None:
        return []
    return list(session.scalars(
        select(CaseAction)
        .where(CaseAction.ticket_id == ticket.id, CaseAction.kind == ACTION_CLOSING_ATTEMPT,
               CaseAction.at >= ticket.resolved_at)
        .order_by(CaseAction.seq)
    ))


def _interval(rules: Rules) -> timedelta:
    return rules.closing.period / rules.closing.attempts


def closes_at(pending: list[datetime], rules: Rules) -> datetime | None:
    """When a resolved case closes given its unanswered attempts (None: not all made yet)."""
    close_at = auto_close_at(pending, rules=rules.closing)
    if close_at is None:
        return None
    return max(close_at, max(pending) + _interval(rules))


def send_attempt(
    session: Session, rules: Rules, ticket: Ticket, *, now: datetime, number: int, seq: int,
    first_pending_at: datetime | None, template: str, kind: str,
) -> CaseAction | None:
    """Contact attempt `number` (1-based in the current count): claimed once, then mailed.

    The mail names the closing date: exact on the last attempt, the earliest possible one
    before (a later attempt may move to the next opening).
    """
    action = claim_action(session, ticket.id, ACTION_CLOSING_ATTEMPT, seq, now,
                          {"number": number})
    if action is None:
        return None
    tenant = rules.tenant(ticket.tenant_id)
    remaining = max(rules.closing.attempts - number + 1, 1)
    closes_at = max((first_pending_at or now) + rules.closing.period,
                    now + _interval(rules) * remaining)
    to, cc = _customer_addresses(rules, ticket)
    compose(session, rules, Mail(
        kind=kind, template=template, to=to, cc=cc, ticket=ticket,
        context={"now": now, "number": number, "attempts": rules.closing.attempts,
                 "final": number >= rules.closing.attempts,
                 "closes_at_es": format_when_es(closes_at, tenant.zone if tenant else UTC_ZONE),
                 "period_days": round(rules.closing.period / timedelta(days=1))},
    ), now=now)
    session.add(TicketEvent(ticket_id=ticket.id, kind="closing_attempt", at=now,
                            data={"number": number, "seq": action.seq}))
    return action


def close_case(
    session: Session, rules: Rules, ticket: Ticket, *, now: datetime, reason: str,
    by: str | None = None, from_statuses: tuple[str, ...] = (STATUS_RESOLVED,),
) -> bool:
    """Close a case once (the UPDATE's WHERE is the guard), with the closing mail.

    `reason`: "confirmed" (the customer confirmed the resolution), "asked" (the customer
    asked to close a case still open), "no_answer" (seed 003's attempts on a resolved
    case), "no_answer_waiting" (the customer never answered what the desk waited for).
    """
    closed = session.execute(
        update(Ticket)
        .where(Ticket.id == ticket.id, Ticket.status.in_(from_statuses))
        .values(status=STATUS_CLOSED, closed_at=now, updated_at=now, waiting_since=None,
                response_paused_at=None)
        .execution_options(synchronize_session=False)
    )
    if closed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.refresh(ticket)
    attempts = len(_attempts(session, ticket)) if reason != "no_answer_waiting" else \
        rules.closing.attempts
    to, cc = _customer_addresses(rules, ticket)
    compose(session, rules, Mail(
        kind="closing", template="closing_closed.txt.j2", to=to, cc=cc, ticket=ticket,
        context={"now": now, "reason": reason, "attempts": attempts,
                 "period_days": round(rules.closing.period / timedelta(days=1))},
    ), now=now)
    session.add(TicketEvent(ticket_id=ticket.id, kind="closed", at=now,
                            data={"reason": reason, "by": by, "attempts": attempts}))
    emit_event(session, "case.closed", ticket, at=now, reason=reason, by=by)
    metrics.CASES_CLOSED.labels(reason=reason).inc()
    log.info("case closed", extra={"case": ticket.number, "reason": reason})
    return True


def next_attempt_due(
    attempts_pending: list[datetime], reference: datetime, rules: Rules,
    tenant: Tenant | None,
) -> datetime:
    """When the next attempt goes: `period / attempts` after the last pending one (or after
    `reference` when none is pending), moved to the next opening of the tenant's desk."""
    base = attempts_pending[-1] if attempts_pending else reference
    due = base + _interval(rules)
    calendar = tenant_calendar(rules, tenant)
    return calendar.next_opening(due) if calendar is not None else due


ACTION_CHASE_ATTEMPT = "chase_attempt"
WAITING_STATUSES = (STATUS_INCOMPLETE, STATUS_WAITING)


def sweep_chase(db: Database, rules: Rules, now: datetime) -> tuple[int, int]:
    """Chase the customers the desk waits on (an `incompleto` case's missing fields, or a
    case staff set to `esperando_cliente`): seed 003's attempts over the closing period,
    the first being the mail that asked (the acknowledgement, or the staff's answer);
    then the case closes with a last mail. An answer ends the wait (pipeline). Returns
    (attempts sent, cases closed)."""
    with db.reader() as session:
        ids = session.scalars(
            select(Ticket.id).where(Ticket.status.in_(WAITING_STATUSES),
                                    Ticket.waiting_since.is_not(None),
                                    Ticket.waiting_since <= now - _interval(rules))
        ).all()
    sent = closed = 0
    for ticket_id in ids:
        with db.transaction() as session:
            ticket = session.get(Ticket, ticket_id)
            if ticket is None or ticket.status not in WAITING_STATUSES \
                    or ticket.waiting_since is None:
                continue
            since = ticket.waiting_since
            made = sorted(a.at for a in session.scalars(
                select(CaseAction).where(CaseAction.ticket_id == ticket.id,
                                         CaseAction.kind == ACTION_CHASE_ATTEMPT,
                                         CaseAction.at >= since)) if a.at <= now)
            pending = [since, *made]  # the mail that asked is the first contact
            close_at = closes_at(pending, rules)
            if close_at is not None:
                if now >= close_at and close_case(
                        session, rules, ticket, now=now, reason="no_answer_waiting",
                        from_statuses=WAITING_STATUSES):
                    closed += 1
                continue
            due = next_attempt_due(pending, since, rules, rules.tenant(ticket.tenant_id))
            if now < due:
                continue
            seq = next_seq(session, ticket.id, ACTION_CHASE_ATTEMPT)
            number = len(pending) + 1
            if claim_action(session, ticket.id, ACTION_CHASE_ATTEMPT, seq, now,
                            {"number": number}) is None:
                continue
            tenant = rules.tenant(ticket.tenant_id)
            remaining = max(rules.closing.attempts - number + 1, 1)
            closing = max(since + rules.closing.period, now + _interval(rules) * remaining)
            to, cc = _customer_addresses(rules, ticket)
            compose(session, rules, Mail(
                kind="chase_attempt", template="chase_attempt.txt.j2", to=to, cc=cc,
                ticket=ticket,
                context={"now": now, "number": number, "attempts": rules.closing.attempts,
                         "final": number >= rules.closing.attempts,
                         "missing": [rules.template.label(k) for k in ticket.missing_fields],
                         "closes_at_es": format_when_es(
                             closing, tenant.zone if tenant else UTC_ZONE)},
            ), now=now)
            session.add(TicketEvent(ticket_id=ticket.id, kind="chase_attempt", at=now,
                                    data={"number": number, "seq": seq}))
            sent += 1
    return sent, closed


def sweep_closing(db: Database, rules: Rules, now: datetime) -> tuple[int, int]:
    """Send the attempts due and close the cases due at `now`; returns (attempts, closed)."""
    with db.reader() as session:
        ids = session.scalars(
            select(Ticket.id).where(Ticket.status == STATUS_RESOLVED,
                                    Ticket.resolved_at.is_not(None),
                                    Ticket.resolved_at <= now)
        ).all()
    sent = closed = 0
    for ticket_id in ids:
        with db.transaction() as session:
            ticket = session.get(Ticket, ticket_id)
            if ticket is None or ticket.status != STATUS_RESOLVED or ticket.resolved_at is None:
                continue
            seq = next_seq(session, ticket.id, ACTION_CLOSING_ATTEMPT)  # first: see next_seq
            made = [a.at for a in _attempts(session, ticket) if a.at <= now]
            replied = last_customer_message_at(session, ticket, since=ticket.resolved_at)
            pending = sorted(a for a in made if replied is None or a > replied)
            close_at = closes_at(pending, rules)
            if close_at is not None:
                if now >= close_at and close_case(session, rules, ticket, now=now,
                                                  reason="no_answer"):
                    closed += 1
                continue
            reference = max(ticket.resolved_at, replied) if replied else ticket.resolved_at
            if not pending and not made and replied is None:
                due = now  # resolved without a request (e.g. an old case): ask now
            else:
                due = next_attempt_due(pending, reference, rules, rules.tenant(ticket.tenant_id))
            if now < due:
                continue
            number = len(pending) + 1
            template = "closing_request.txt.j2" if number == 1 else "closing_attempt.txt.j2"
            if send_attempt(session, rules, ticket, now=now, number=number, seq=seq,
                            first_pending_at=pending[0] if pending else now,
                            template=template, kind="closing_attempt") is not None:
                sent += 1
    return sent, closed
