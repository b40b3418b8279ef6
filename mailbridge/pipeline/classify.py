"""Stages that decide whether a mail is for people at all: robots, bounces, duplicates."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from mailbridge.outbound.outbox import OutboxMail
from mailbridge.parse.bounces import parse_bounce
from mailbridge.parse.classify import BOUNCE, classify
from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.tickets.models import AddressStatus, TicketEvent, TicketMessage


class Classify:
    name = "classify"
    description = "Robots, bounces, lists and our own mail never open cases or get answers"

    def run(self, ctx: MailContext) -> Outcome | None:
        ctx.classification = classify(
            ctx.mail.message,
            own_addresses=ctx.rules.own_addresses,
            envelope_sender=ctx.envelope_sender,
        )
        if ctx.classification.kind == BOUNCE:
            return record_bounce(ctx)
        if not ctx.classification.may_open_case:
            return Outcome(f"ignored:{ctx.classification.kind}", ctx.classification.reason)
        return None


def record_bounce(ctx: MailContext) -> Outcome:
    """A bounce of our mail goes on its case, and marks the address."""
    info = parse_bounce(ctx.mail.message, ctx.envelope_sender)
    if info is None:
        return Outcome("ignored:bounce", "bounce without a readable report")
    for address in info.recipients:
        status = ctx.session.get(AddressStatus, address)
        if status is None:
            status = AddressStatus(address=address, bounces=0, hard=False)
            ctx.session.add(status)
        status.bounces += 1
        status.hard = status.hard or info.hard
        status.last_status = info.status
        status.last_reason = (info.diagnostic or "")[:2000]
        status.last_at = ctx.now
    ticket_id = None
    if info.original_message_id:
        ticket_id = ctx.session.scalar(
            select(OutboxMail.ticket_id).where(OutboxMail.message_id == info.original_message_id)
        )
    if ticket_id is None:
        return Outcome("ignored:bounce", f"not one of our mails: {info.recipients}")
    ctx.session.add(TicketEvent(ticket_id=ticket_id, kind="bounce", at=ctx.now, data={
        "recipients": info.recipients, "status": info.status, "hard": info.hard,
        "diagnostic": info.diagnostic, "message_id": info.original_message_id,
    }))
    ctx.inbound.ticket_id = ticket_id
    return Outcome("bounce:recorded", f"{info.recipients} {info.status}")


# Built once, on the table: every mail runs it, and the ORM's per-query work cost more
# than the lookup (bench/README.md). Core does not autoflush; nothing pending in the
# session is a message (those are inserted at once).
_SEEN_MESSAGE = select(TicketMessage.__table__.c.ticket_id).where(
    TicketMessage.__table__.c.message_id == bindparam("message_id")
)


class Deduplicate:
    name = "deduplicate"
    description = "The same Message-ID twice makes one message"

    def run(self, ctx: MailContext) -> Outcome | None:
        msgid = ctx.mail.message_id
        if not msgid:
            return None
        seen = ctx.session.execute(_SEEN_MESSAGE, {"message_id": msgid}).scalar()
        if seen is not None:
            ctx.inbound.ticket_id = seen
            return Outcome("duplicate", f"Message-ID {msgid} already on a case")
        return None
