"""A case's life as the mail in hand moves it (seed 003): confirmation asked, given or not,
the case reopened, the wait on the customer begun and ended."""

from __future__ import annotations

from mailbridge.outbound.webhooks import emit_event
from mailbridge.pipeline import changes
from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.pipeline.desk import tell_staff
from mailbridge.sla.cases import start_response_clock
from mailbridge.sla.closing import close_case
from mailbridge.tickets.models import (
    STATUS_IN_PROGRESS,
    STATUS_INCOMPLETE,
    STATUS_OPEN,
    STATUS_RESOLVED,
    STATUS_WAITING,
    Ticket,
    TicketEvent,
)

# A customer may ask to close a case in these states ("Ya funciona, pueden cerrar el caso").
CLOSABLE_BY_CUSTOMER = (STATUS_OPEN, STATUS_IN_PROGRESS, STATUS_INCOMPLETE, STATUS_WAITING)


def end_wait(ctx: MailContext, ticket: Ticket) -> None:
    """The wait on the customer is over (they answered, or staff moved the case on)."""
    changes.end_wait(ctx.rules, ticket, ctx.now)


def customer_wrote(ctx: MailContext, ticket: Ticket) -> tuple[Outcome | None, bool]:
    """A customer's mail on a case moves its life; (an Outcome that ends the mail's trip,
    whether its staff were told already).

    - on a resolved case, a confirmation closes it; anything else reopens it;
    - on an open case, a request to close it closes it;
    - an answer to what the desk waited for ends the wait (an `incompleto` case still
      missing fields is chased again from this answer).
    """
    closing = ctx.rules.closing
    if ticket.status == STATUS_RESOLVED:
        if closing.confirms(ctx.body):
            return _closed_by_customer(ctx, ticket, "confirmed", (STATUS_RESOLVED,)), True
        reopen(ctx, ticket)
        return None, True
    if ticket.status in CLOSABLE_BY_CUSTOMER and closing.asks_to_close(ctx.body):
        return _closed_by_customer(ctx, ticket, "asked", CLOSABLE_BY_CUSTOMER), True
    if ticket.status == STATUS_WAITING:
        ticket.status = STATUS_OPEN
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="status", at=ctx.now, data={
            "from": STATUS_WAITING, "to": STATUS_OPEN, "by": ctx.sender, "why": "answered"}))
        emit_event(ctx.session, "case.updated", ticket, at=ctx.now, by=ctx.sender, changes={
            "status": {"from": STATUS_WAITING, "to": STATUS_OPEN}})
        end_wait(ctx, ticket)
    elif ticket.waiting_since is not None:
        # Missing fields still missing: the count of contact attempts starts again.
        ticket.waiting_since = ctx.now if ticket.status == STATUS_INCOMPLETE else None
    return None, False


def reopen(ctx: MailContext, ticket: Ticket) -> None:
    """A customer's answer on a resolved case that is not a confirmation ("No, todavía sigue
    fallando"): the case is open again, the closing count stops, the desk owes a response
    again (a new response clock from now), and its owner (else its queue) is told."""
    ticket.status = STATUS_OPEN
    ticket.resolved_at = None
    ticket.first_response_at = None
    start_response_clock(ticket, ctx.rules, ctx.rules.tenant(ticket.tenant_id), ctx.now)
    ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="reopened", at=ctx.now,
                                data={"by": ctx.sender, "from": STATUS_RESOLVED}))
    emit_event(ctx.session, "case.updated", ticket, at=ctx.now, by=ctx.sender, changes={
        "status": {"from": STATUS_RESOLVED, "to": STATUS_OPEN}})
    tell_staff(ctx, ticket, kind="staff_reopened", template="staff_case_change.txt.j2",
               context={"change": "reopened"})


def _closed_by_customer(ctx: MailContext, ticket: Ticket, reason: str,
                        from_statuses: tuple[str, ...]) -> Outcome | None:
    ticket.updated_at = ctx.now
    ctx.session.flush()
    if not close_case(ctx.session, ctx.rules, ticket, now=ctx.now, reason=reason,
                      by=ctx.sender, from_statuses=from_statuses):
        return None
    tell_staff(ctx, ticket, kind="staff_closed_by_customer",
               template="staff_case_change.txt.j2", context={"change": f"closed_{reason}"})
    return Outcome("reply:closed-by-customer", f"case {ticket.number} ({reason})")
