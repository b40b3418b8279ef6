"""Targets that do not answer in time are reminded, and staff are told (time injected)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import exists, select

from mailbridge.db import Database
from mailbridge.escalation.service import staff_recipients
from mailbridge.outbound.compose import PERSON, Answering, Mail, compose
from mailbridge.rules import Rules
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    VENDOR_ACTIVE_STATES,
    VENDOR_CLOSED,
    VENDOR_MISSING_DATA,
    VENDOR_WAITING_STATES,
    Ticket,
    TicketEvent,
    VendorReference,
)

log = logging.getLogger(__name__)


def _when(value: datetime | None, zone: tzinfo) -> str:
    """A time as the desk reads it: in the tenant's zone (UTC when the case has none)."""
    if value is None:
        return "—"
    local = value.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} ({getattr(zone, 'key', 'UTC')})"


def next_overdue_at(reference: VendorReference, rules: Rules) -> datetime | None:
    """When the next reminder or staff notice of this reference falls due, if ever."""
    target = rules.escalation_targets.get(reference.target)
    if target is None or reference.awaiting_since is None:
        return None
    if reference.state not in VENDOR_WAITING_STATES:
        return None
    if reference.overdue_notices > target.reminders.max:
        return None  # every reminder sent and staff told that we stopped
    hours = target.reply_within_hours + reference.overdue_notices * target.reminders.every_hours
    return reference.awaiting_since + timedelta(hours=hours)


def remind_overdue_vendors(db: Database, rules: Rules, now: datetime) -> list[dict[str, Any]]:
    """Remind every target whose answer is overdue at `now`, and tell staff; idempotent.

    Each due point is handled once (the count is kept on the reference, in the same
    transaction as the mails), so calling this again at the same `now`, or from two
    schedulers, sends nothing twice. At most one step per reference per call: a
    sweep after a long pause does not fire a burst of reminders. References of
    closed cases are closed and never reminded.
    """
    done: list[dict[str, Any]] = []
    with db.transaction() as session:
        closed = session.scalars(
            # From the references still active (their state index), not from the
            # closed cases: a desk keeps hundreds of thousands of those.
            select(VendorReference)
            .where(
                VendorReference.state.in_((*VENDOR_ACTIVE_STATES, VENDOR_MISSING_DATA)),
                exists().where(Ticket.id == VendorReference.ticket_id,
                               Ticket.status == STATUS_CLOSED),
            )
        ).all()
        for reference in closed:
            reference.state, reference.closed_at = VENDOR_CLOSED, now
            reference.awaiting_since = None
            reference.updated_at = now
        query = (
            select(VendorReference)
            .where(
                VendorReference.state.in_(VENDOR_WAITING_STATES),
                VendorReference.awaiting_since.is_not(None),
            )
            .order_by(VendorReference.id)
        )
        if not db.is_sqlite:
            # SQLite's BEGIN IMMEDIATE already serialises writers.
            query = query.with_for_update(skip_locked=True)
        for reference in session.scalars(query).all():
            due = next_overdue_at(reference, rules)
            if due is None or now < due:
                continue
            target = rules.escalation_targets[reference.target]
            ticket = session.get(Ticket, reference.ticket_id)
            if ticket is None:
                continue
            step = reference.overdue_notices + 1
            tenant = rules.tenant(ticket.tenant_id)
            zone: tzinfo = tenant.zone if tenant is not None else UTC
            remind = reference.overdue_notices < target.reminders.max
            context = {
                "target": target, "target_name": reference.target, "reference": reference,
                "sent_at": _when(reference.sent_at, zone),
                "awaiting_since": _when(reference.awaiting_since, zone),
                "reminded": remind, "reminder_number": step,
            }
            if remind:
                number = f" (ticket #{reference.vendor_ticket})" if reference.vendor_ticket else ""
                compose(session, rules, Mail(
                    template="vendor_reminder.txt.j2", kind="vendor_reminder", ticket=ticket,
                    to=[target.address],
                    subject=f"Recordatorio{number}: Escalamiento {target.label}: {ticket.subject}",
                    context=context,
                    answering=Answering(reference.message_id,
                                        [reference.message_id] if reference.message_id else []),
                    # For people at the target, like the escalation itself.
                    auto_submitted=PERSON,
                    suppress_auto_responses=target.ticket_regex is None,
                ), now=now)
                reference.reminders += 1
                reference.last_reminder_at = now
            staff = staff_recipients(session, rules, ticket, target, reference)
            compose(session, rules, Mail(
                template="vendor_overdue.txt.j2", kind="vendor_overdue", ticket=ticket,
                to=staff, subject=f"{target.label} sin respuesta: {ticket.subject}",
                context=context, answering=Answering(None),
            ), now=now)
            reference.overdue_notices = step
            reference.updated_at = now
            session.add(TicketEvent(ticket_id=ticket.id, kind="vendor_overdue", at=now, data={
                "target": reference.target, "reminded": remind, "step": step,
                "due_at": due.isoformat(), "staff": staff,
            }))
            done.append({
                "case": ticket.number, "target": reference.target, "reminded": remind,
                "step": step, "due_at": due.isoformat(), "staff": staff,
            })
            log.info("vendor overdue", extra={"case": ticket.number, "target": reference.target,
                                              "reminded": remind, "step": step})
    return done
