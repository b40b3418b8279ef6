"""ClosedCase: a reply to a closed case does not reopen it; the sender is told once."""

from __future__ import annotations

from sqlalchemy import select

from mailbridge.parse.replies import is_thanks_only
from mailbridge.pipeline.context import FLOW_CASE, ROLE_STAFF, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_auto_reply
from mailbridge.tickets.models import STATUS_CLOSED, TicketEvent


class ClosedCase:
    name = "closed-case"
    description = "A reply to a closed case does not reopen it; the sender is told once"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        ticket = ctx.ticket
        if ticket is None or ticket.status != STATUS_CLOSED or ctx.sender_role == ROLE_STAFF:
            return None
        if is_thanks_only(ctx.body):
            return Outcome("ignored:thanks-on-closed-case", f"case {ticket.number}")
        told = ctx.session.scalars(
            select(TicketEvent.data).where(
                TicketEvent.ticket_id == ticket.id, TicketEvent.kind == "closed_notice"
            )
        ).all()
        if any(d.get("address") == ctx.sender for d in told):
            return Outcome("reply:closed-case", f"case {ticket.number}, already told")
        if queue_auto_reply(ctx, template="closed_case.txt.j2", kind="closed_notice",
                            ticket=ticket, context={}):
            ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="closed_notice", at=ctx.now,
                                        data={"address": ctx.sender}))
        return Outcome("reply:closed-case", f"case {ticket.number}")
