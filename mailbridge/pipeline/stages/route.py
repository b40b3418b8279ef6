"""Route: priority from the delivered address, the tenant, and staff or customer."""

from __future__ import annotations

from mailbridge.pipeline.context import FLOW_CASE, ROLE_STAFF, ROLE_VENDOR, MailContext, Outcome

# Highest first: A (Crítica), B (Moderada), C (Mínima).
PRIORITY_ORDER = ("A", "B", "C")


class Route:
    name = "route"
    description = "Recipient address → priority and queue; subject or case → tenant; sender → role"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        rules = ctx.rules
        delivered_to = [
            ctx.mail.header(h).lower()
            for h in ("Delivered-To", "X-Original-To")
            if ctx.mail.header(h)
        ]
        # The envelope decides (the mail may list other addresses in To/Cc); delivered to
        # several support addresses, the highest priority among them wins, whatever the
        # order of the RCPT commands.
        for candidates in ([*ctx.inbound.rcpt_tos, *delivered_to], [*ctx.mail.to, *ctx.mail.cc]):
            found = [a for a in map(rules.support_address, candidates) if a is not None]
            if found:
                ctx.support_address = min(found, key=lambda a: PRIORITY_ORDER.index(a.priority))
                break
        if ctx.ticket is not None:
            ctx.tenant_id = ctx.ticket.tenant_id
        else:
            ctx.tenant_id = rules.find_tenant_id(ctx.mail.subject)
        ctx.tenant = rules.tenant(ctx.tenant_id)
        if ctx.tenant is not None:
            ctx.tenant_id = ctx.tenant.id
        # A target's own address wins over the staff domain (Operations may share it).
        if rules.escalation_target_for_sender(ctx.sender) is not None:
            ctx.sender_role = ROLE_VENDOR
        elif rules.is_staff(ctx.sender):
            ctx.sender_role = ROLE_STAFF
        return None
