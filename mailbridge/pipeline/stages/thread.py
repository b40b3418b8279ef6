"""Thread: which case a mail belongs to, however badly its client threads."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from mailbridge.escalation.vendors import case_by_vendor_ticket
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.parse.replies import find_case_number
from mailbridge.pipeline.context import FLOW_CASE, FLOW_TARGET, MailContext, Outcome
from mailbridge.tickets.models import Ticket, TicketMessage

# The lookups every mail runs, built once with bind parameters. Those that need only an
# id are Core on the tables (no ORM loading, no autoflush: nothing they read is pending).
_CASE_BY_NUMBER = select(Ticket).where(Ticket.number == bindparam("number"))
_CASE_BY_MESSAGE = (
    select(TicketMessage.__table__.c.ticket_id)
    .where(TicketMessage.__table__.c.message_id.in_(bindparam("refs", expanding=True)))
    .limit(1)
)
_CASE_BY_OUR_MAIL = (
    select(OutboxMail.__table__.c.ticket_id)
    .where(OutboxMail.__table__.c.message_id.in_(bindparam("refs", expanding=True)),
           OutboxMail.__table__.c.ticket_id.is_not(None))
    .limit(1)
)


class Thread:
    name = "thread"
    description = "A reply joins its case by [Caso N], plus-address, In-Reply-To or References"
    flows = frozenset({FLOW_CASE, FLOW_TARGET})

    def run(self, ctx: MailContext) -> Outcome | None:
        desk = ctx.rules.desk
        number = find_case_number(ctx.mail.subject, desk.case_token)
        by = "token"
        if number is None:
            number, by = plus_address_case(ctx), "plus-address"
        if number is not None:
            ticket = ctx.session.scalars(_CASE_BY_NUMBER, {"number": number}).first()
            if ticket is not None:
                ctx.ticket, ctx.threaded_by = ticket, by
                return None
        refs = [r for r in [ctx.mail.in_reply_to, *reversed(ctx.mail.references)] if r]
        if refs:
            ticket_id = (
                ctx.session.connection().execute(_CASE_BY_MESSAGE, {"refs": refs}).scalar()
                or ctx.session.connection().execute(_CASE_BY_OUR_MAIL, {"refs": refs}).scalar()
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
