"""Senders: only registered contacts open cases; shared mailboxes and strangers are told."""

from __future__ import annotations

from mailbridge.pipeline.context import (
    FLOW_CASE,
    ROLE_CUSTOMER,
    ROLE_EXTERNAL,
    ROLE_STAFF,
    ROLE_VENDOR,
    MailContext,
    Outcome,
)
from mailbridge.pipeline.mailing import queue_auto_reply


class Senders:
    name = "senders"
    description = "Only registered contacts open cases; shared mailboxes and strangers are told"
    flows = frozenset({FLOW_CASE})

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
            if ctx.sender_role in (ROLE_CUSTOMER, ROLE_STAFF) and not ctx.sender_is_authentic():
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
        if tenants and not ctx.sender_is_authentic():
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
