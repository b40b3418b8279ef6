"""Validate: read the opening template's fields (seed 000); list what is missing."""

from __future__ import annotations

from mailbridge.parse.ahead import Ahead
from mailbridge.parse.template import extract_fields
from mailbridge.pipeline.context import FLOW_CASE, ROLE_CUSTOMER, Guess, MailContext, Outcome
from mailbridge.tickets.models import STATUS_INCOMPLETE, STATUS_OPEN


class Validate:
    name = "validate"
    description = "Read the opening template's fields; list what is missing"
    flows = frozenset({FLOW_CASE})

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

    def predict(self, ahead: Ahead, guess: Guess) -> None:
        if guess.reply:
            return
        rules = guess.rules
        tenant = rules.tenant(rules.find_tenant_id(guess.mail.subject))
        ahead.compute(extract_fields, guess.body, rules.template.fields,
                      default_zone=tenant.zone if tenant is not None else None,
                      reference=guess.mail.date)
