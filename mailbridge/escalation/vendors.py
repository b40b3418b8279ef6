"""What a target's mail tells us: its ticket number, which case it is about, the new state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.rules import EscalationTarget, Rules
from mailbridge.tickets.models import (
    VENDOR_ACTIVE_STATES,
    VENDOR_ANSWERED,
    VENDOR_CLOSED,
    VENDOR_MISSING_DATA,
    VENDOR_REGISTERED,
    VENDOR_SENT,
    Ticket,
    VendorReference,
)

# The target's ticket number is looked for in this much of a mail's text.
_SCAN_CHARS = 20_000


def find_vendor_tickets(target: EscalationTarget, *texts: str) -> list[str]:
    """Every ticket number the target's pattern finds, in order, without repeats."""
    regex = target.ticket_regex
    found: list[str] = []
    if regex is None:
        return found
    for text in texts:
        for match in regex.finditer((text or "")[:_SCAN_CHARS]):
            number = match.group(1).strip()
            if number and number not in found:
                found.append(number[:64])
    return found


def case_by_vendor_ticket(
    session: Session, rules: Rules, sender: str, subject: str, text: str
) -> Ticket | None:
    """The case whose escalation the sender's target numbered as in this mail.

    Only the target's own mail joins this way: a customer who writes "Ticket #123"
    must not land on another customer's case.
    """
    name = rules.escalation_target_for_sender(sender)
    target = rules.escalation_targets.get(name) if name else None
    if target is None or target.ticket_regex is None:
        return None
    for number in find_vendor_tickets(target, subject, text):
        ticket_id = session.scalar(
            select(VendorReference.ticket_id)
            .where(VendorReference.target == name, VendorReference.vendor_ticket == number)
            .order_by(VendorReference.id.desc())
            .limit(1)
        )
        if ticket_id is not None:
            return session.get(Ticket, ticket_id)
    return None


def current_reference(session: Session, ticket_id: int, target: str) -> VendorReference | None:
    """The case's latest escalation to this target (any state)."""
    return session.scalar(
        select(VendorReference)
        .where(VendorReference.ticket_id == ticket_id, VendorReference.target == target)
        .order_by(VendorReference.id.desc())
        .limit(1)
    )


def note_target_mail(
    reference: VendorReference,
    target: EscalationTarget,
    *,
    automatic: bool,
    texts: tuple[str, ...],
    now: datetime,
) -> str | None:
    """Update the reference for a mail from its target; returns a newly learnt ticket number.

    An automatic answer only registers the ticket number (we still wait for a person);
    a person's answer puts the ball in our court.
    """
    learnt = None
    if reference.vendor_ticket is None:
        numbers = find_vendor_tickets(target, *texts)
        if numbers:
            learnt = reference.vendor_ticket = numbers[0]
            reference.registered_at = now
    if reference.state in (VENDOR_MISSING_DATA, VENDOR_CLOSED):
        return learnt
    if automatic:
        if learnt and reference.state == VENDOR_SENT:
            reference.state = VENDOR_REGISTERED
    else:
        reference.state = VENDOR_ANSWERED
        reference.answered_at = now
        reference.awaiting_since = None
        reference.overdue_notices = 0
    reference.updated_at = now
    return learnt


def note_follow_up(reference: VendorReference, now: datetime) -> None:
    """Staff wrote to the target again: we wait for it from now on."""
    if reference.state not in VENDOR_ACTIVE_STATES:
        return
    reference.state = VENDOR_REGISTERED if reference.vendor_ticket else VENDOR_SENT
    reference.awaiting_since = now
    reference.overdue_notices = 0
    reference.updated_at = now


def reference_json(reference: VendorReference) -> dict[str, object]:
    """One entry of the case JSON's `vendor_references`."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "target": reference.target,
        "kind": reference.kind,
        "address": reference.address,
        "state": reference.state,
        "vendor_ticket": reference.vendor_ticket,
        "message_id": reference.message_id,
        "requested_by": reference.requested_by,
        "origin": reference.origin,
        "fields": dict(reference.fields or {}),
        "missing_fields": list(reference.missing_fields or []),
        "created_at": iso(reference.created_at),
        "sent_at": iso(reference.sent_at),
        "registered_at": iso(reference.registered_at),
        "answered_at": iso(reference.answered_at),
        "awaiting_since": iso(reference.awaiting_since),
        "reminders": reference.reminders,
        "last_reminder_at": iso(reference.last_reminder_at),
        "closed_at": iso(reference.closed_at),
    }
