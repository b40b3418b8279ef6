"""Threading: which case a mail belongs to, however badly its client threads."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from mailbridge.escalation.vendors import case_by_vendor_ticket
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.parse.replies import find_case_number
from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.tickets.models import OPEN_STATUSES, Ticket, TicketMessage


class Thread:
    name = "thread"
    description = "A reply joins its case by [Caso N], plus-address, In-Reply-To or References"

    def run(self, ctx: MailContext) -> Outcome | None:
        desk = ctx.rules.desk
        number = find_case_number(ctx.mail.subject, desk.case_token)
        by = "token"
        if number is None:
            number, by = plus_address_case(ctx), "plus-address"
        if number is not None:
            ticket = ctx.session.scalar(select(Ticket).where(Ticket.number == number))
            if ticket is not None:
                ctx.ticket, ctx.threaded_by = ticket, by
                return None
        refs = [r for r in [ctx.mail.in_reply_to, *reversed(ctx.mail.references)] if r]
        if refs:
            ticket_id = ctx.session.scalar(
                select(TicketMessage.ticket_id).where(TicketMessage.message_id.in_(refs)).limit(1)
            ) or ctx.session.scalar(
                select(OutboxMail.ticket_id)
                .where(OutboxMail.message_id.in_(refs), OutboxMail.ticket_id.is_not(None))
                .limit(1)
            )
            if ticket_id is not None:
                ctx.ticket = ctx.session.get(Ticket, ticket_id)
                ctx.threaded_by = "references"
        if ctx.ticket is None:
            # A vendor's own ticket number ("Ticket #12345"), once its answer gave it.
            ticket = case_by_vendor_ticket(
                ctx.session, ctx.rules, ctx.sender, ctx.mail.subject, ctx.mail.text
            )
            if ticket is not None:
                ctx.ticket, ctx.threaded_by = ticket, "vendor-ticket"
        return None


def plus_address_case(ctx: MailContext) -> int | None:
    """soporte+123@… in the envelope (or To/Cc) carries the case number."""
    own_locals = {a.split("@", 1)[0] for a in ctx.rules.own_addresses}
    own_domains = {a.split("@", 1)[1] for a in ctx.rules.own_addresses}
    for rcpt in [*ctx.inbound.rcpt_tos, *ctx.mail.to, *ctx.mail.cc]:
        local, _, domain = rcpt.partition("@")
        base, _, tag = local.partition("+")
        if domain in own_domains and base in own_locals and tag.isdigit():
            return int(tag)
    return None


def find_look_alike(ctx: MailContext, subject_key: str) -> Ticket | None:
    """An open case of the same tenant with the same normalised subject, recently opened."""
    if not subject_key or ctx.tenant_id is None:
        return None
    window = timedelta(hours=ctx.rules.desk.duplicate_window_hours)
    return ctx.session.scalar(
        select(Ticket)
        .where(
            Ticket.tenant_id == ctx.tenant_id,
            Ticket.subject_key == subject_key,
            Ticket.status.in_(OPEN_STATUSES),
            Ticket.created_at >= ctx.now - window,
        )
        .order_by(Ticket.created_at.desc())
        .limit(1)
    )
