"""Stages on what the mail says: new text only, no secrets, template fields, closed cases."""

from __future__ import annotations

from sqlalchemy import select

from mailbridge.parse.encryption import is_encrypted
from mailbridge.parse.quotes import strip_quotes
from mailbridge.parse.replies import is_thanks_only, parse_staff_commands
from mailbridge.parse.secrets import redact_secrets
from mailbridge.parse.template import extract_fields
from mailbridge.pipeline.context import ROLE_CUSTOMER, ROLE_STAFF, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_auto_reply
from mailbridge.pipeline.redact import redact_raw
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_INCOMPLETE,
    STATUS_OPEN,
    TicketEvent,
)


class Redact:
    name = "redact"
    description = "Keep only the new text of a reply; staff commands apart; secrets out"

    def run(self, ctx: MailContext) -> Outcome | None:
        text = ctx.mail.text
        if ctx.ticket is not None:
            text = strip_quotes(text)
        if ctx.sender_role == ROLE_STAFF:
            ctx.commands, text = parse_staff_commands(text)
        ctx.body, ctx.secret_kinds = redact_secrets(text)
        if ctx.secret_kinds:
            # The archived raw copy must not keep what the stored text dropped.
            ctx.inbound.raw, _ = redact_raw(ctx.inbound.raw)
        return None


class RefuseEncrypted:
    name = "encrypted"
    description = "An encrypted opening mail is answered, not opened (seed 004)"

    def run(self, ctx: MailContext) -> Outcome | None:
        if ctx.ticket is not None or not is_encrypted(ctx.mail.message):
            return None
        queue_auto_reply(
            ctx, template="encrypted.txt.j2", kind="refusal",
            context={"subject": ctx.mail.subject},
            subject=f"No podemos leer su mensaje cifrado: {ctx.mail.subject}"[:200],
        )
        return Outcome("refused:encrypted", "S/MIME or PGP opening mail")


class Validate:
    name = "validate"
    description = "Read the opening template's fields; list what is missing"

    def run(self, ctx: MailContext) -> Outcome | None:
        specs = ctx.rules.template.fields
        zone = ctx.tenant.zone if ctx.tenant is not None else None
        if ctx.ticket is None:
            found = extract_fields(ctx.body, specs, default_zone=zone, reference=ctx.mail.date)
            ctx.fields, ctx.fields_raw = found.values, found.raw
            ctx.missing_fields, ctx.severity = found.missing, found.severity
            return None
        ticket = ctx.ticket
        if ticket.missing_fields and ctx.sender_role == ROLE_CUSTOMER:
            # Fields sent later in a reply complete the case.
            found = extract_fields(ctx.body, specs, default_zone=zone, reference=ctx.mail.date)
            if found.values:
                ticket.fields = {**ticket.fields, **found.values}
                ticket.fields_raw = {**(ticket.fields_raw or {}), **found.raw}
                still = [k for k in ticket.missing_fields if k not in ticket.fields]
                ctx.fields_completed = not still
                ticket.missing_fields = still
                if not still and ticket.status == STATUS_INCOMPLETE:
                    ticket.status = STATUS_OPEN
        return None


class ClosedCase:
    name = "closed-case"
    description = "A reply to a closed case does not reopen it; the sender is told once"

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
