"""Classify: robots, bounces, lists and our own mail never open cases or get answers."""

from __future__ import annotations

from sqlalchemy import select

from mailbridge.outbound.outbox import OutboxMail
from mailbridge.parse.ahead import Ahead
from mailbridge.parse.bounces import parse_bounce
from mailbridge.parse.classify import AUTO_REPLY, BOUNCE, NORMAL, OWN, classify
from mailbridge.pipeline.context import FLOW_CASE, FLOW_TARGET, Guess, MailContext, Outcome
from mailbridge.tickets.models import AddressStatus, TicketEvent


class Classify:
    name = "classify"
    description = "Robots, bounces, lists and our own mail never open cases or get answers"
    flows = frozenset({FLOW_CASE, FLOW_TARGET})

    def run(self, ctx: MailContext) -> Outcome | None:
        ctx.classification = classify(
            ctx.mail.message,
            own_addresses=ctx.rules.own_addresses,
            envelope_sender=ctx.envelope_sender,
        )
        kind = ctx.classification.kind
        if kind == BOUNCE:
            return record_bounce(ctx)
        if ctx.flow == FLOW_TARGET and kind != OWN:
            # A target's automatic answer is what numbers the escalation: it goes on.
            if kind in (NORMAL, AUTO_REPLY):
                return None
            return Outcome(f"ignored:vendor-{kind}",
                           f"{ctx.target_name}: {ctx.classification.reason}")
        if not ctx.classification.may_open_case:
            return Outcome(f"ignored:{kind}", ctx.classification.reason)
        return None

    def predict(self, ahead: Ahead, guess: Guess) -> None:
        ahead.compute(classify, guess.mail.message, own_addresses=guess.rules.own_addresses,
                      envelope_sender=guess.envelope_sender)


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
