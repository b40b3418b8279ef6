"""Routing and senders: priority from the address, tenant, and who may open a case."""

from __future__ import annotations

from mailbridge.auth import sender_is_authentic
from mailbridge.pipeline.context import (
    ROLE_CUSTOMER,
    ROLE_EXTERNAL,
    ROLE_STAFF,
    MailContext,
    Outcome,
)
from mailbridge.pipeline.mailing import queue_auto_reply

# Highest first: A (Crítica), B (Moderada), C (Mínima).
PRIORITY_ORDER = ("A", "B", "C")
# Operations or a vendor a case was escalated to (rules.yaml `escalation_targets`).
ROLE_VENDOR = "vendor"


class Route:
    name = "route"
    description = "Recipient address → priority and queue; subject or case → tenant; sender → role"

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


class Senders:
    name = "senders"
    description = "Only registered contacts open cases; shared mailboxes and strangers are told"

    def run(self, ctx: MailContext) -> Outcome | None:
        rules = ctx.rules
        sender = ctx.sender
        if ctx.ticket is not None:
            ticket = ctx.ticket
            known = {ticket.sender, *(ticket.cc or [])}
            if ctx.sender_role not in (ROLE_STAFF, ROLE_VENDOR) and sender not in known:
                tenant_contacts = set(ctx.tenant.contacts) if ctx.tenant else set()
                if sender not in tenant_contacts:
                    ctx.sender_role = ROLE_EXTERNAL
            if ctx.sender_role in (ROLE_CUSTOMER, ROLE_STAFF) and not sender_is_authentic(ctx):
                # A contact's or agent's address failing DMARC/DKIM (sender_auth): a stranger
                # on the thread, whose commands and confirmations count for nothing.
                ctx.sender_role = ROLE_EXTERNAL
            return None
        if ctx.sender_role == ROLE_STAFF:
            # Staff open nothing by writing to a queue; they answer on a case thread.
            queue_auto_reply(ctx, template="staff_without_case.txt.j2", kind="refusal",
                             context={"subject": ctx.mail.subject},
                             subject=f"Sin caso: {ctx.mail.subject}"[:200])
            return Outcome("refused:staff-without-case", sender)
        if rules.is_shared_mailbox(sender):
            queue_auto_reply(ctx, template="shared_mailbox.txt.j2", kind="refusal",
                             context={"subject": ctx.mail.subject, "sender": sender},
                             subject=f"No hemos abierto un caso: {ctx.mail.subject}"[:200])
            return Outcome("refused:shared-mailbox", sender)
        tenants = rules.tenants_of_contact(sender)
        if tenants and not sender_is_authentic(ctx):
            # A registered contact's address failing DMARC/DKIM (sender_auth): an unknown
            # sender, kept but not answered (the answer would go to the forged address).
            return Outcome("refused:unauthenticated-sender", sender)
        if ctx.tenant is None and len(tenants) == 1:
            # A registered contact who forgot the tenant ID: their tenant is known.
            ctx.tenant, ctx.tenant_id = tenants[0], tenants[0].id
        if ctx.tenant is None or ctx.tenant not in tenants:
            reason = "unknown-sender" if not tenants else "not-a-contact-of-tenant"
            queue_auto_reply(
                ctx, template="unknown_sender.txt.j2", kind="refusal",
                context={"subject": ctx.mail.subject, "sender": sender,
                         "tenant_id": ctx.tenant_id, "known_contact": bool(tenants)},
                subject=f"No hemos abierto un caso: {ctx.mail.subject}"[:200],
            )
            return Outcome(f"refused:{reason}", sender)
        ctx.sender_role = ROLE_CUSTOMER
        return None
