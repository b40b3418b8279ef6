"""A case's life as the mail in hand moves it (seed 003): confirmation asked, given, or not."""

from __future__ import annotations

from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.sla.closing import ACTION_CLOSING_ATTEMPT, close_case, send_attempt
from mailbridge.sla.escalation import next_seq
from mailbridge.tickets.models import Ticket, TicketEvent


def request_confirmation(ctx: MailContext, ticket: Ticket) -> None:
    """Staff set «resuelto»: ask the customer to confirm (closing attempt 1)."""
    seq = next_seq(ctx.session, ticket.id, ACTION_CLOSING_ATTEMPT)
    ticket.resolved_at = ctx.now
    send_attempt(ctx.session, ctx.rules, ticket, now=ctx.now, number=1, seq=seq,
                 first_pending_at=ctx.now, template="closing_request.txt.j2",
                 kind="closing_request")


def customer_answered(ctx: MailContext, ticket: Ticket) -> Outcome | None:
    """A customer wrote on a resolved case: a confirmation closes it, anything else resets.

    Returns an Outcome when the case was closed (the mail's trip ends there).
    """
    if ctx.rules.closing.confirms(ctx.body):
        ticket.updated_at = ctx.now
        ctx.session.flush()
        if close_case(ctx.session, ctx.rules, ticket, now=ctx.now, reason="confirmed",
                      by=ctx.sender):
            return Outcome("reply:closed-by-customer", f"case {ticket.number}")
        return None
    ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="closing_reset", at=ctx.now,
                                data={"by": ctx.sender}))
    return None
