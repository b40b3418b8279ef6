"""VendorFollowUp: staff mail to Operations or a vendor on a case is recorded, not relayed."""

from __future__ import annotations

from mailbridge.escalation.vendors import current_reference, note_follow_up
from mailbridge.pipeline.cases import record_message
from mailbridge.pipeline.commands import apply_commands, command_help
from mailbridge.pipeline.context import FLOW_CASE, ROLE_STAFF, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_case_update
from mailbridge.tickets.models import TicketEvent


class VendorFollowUp:
    """Staff writing to a target on a case: recorded, the wait restarts, and the text is
    not relayed to the customer nor the target's address added to the case's copies."""

    name = "vendor-follow-up"
    description = "Staff mail to Operations or a vendor on a case is not relayed to the customer"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        ticket = ctx.ticket
        if ticket is None or ctx.sender_role != ROLE_STAFF:
            return None
        rules = ctx.rules
        recipients = [*ctx.mail.to, *ctx.mail.cc]
        targets = list(dict.fromkeys(
            name for name in (rules.escalation_target_for_sender(r) for r in recipients) if name
        ))
        if not targets:
            return None
        record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        if ticket.sender in recipients and ctx.body.strip() and ticket.first_response_at is None:
            ticket.first_response_at = ctx.now
            ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="first_response", at=ctx.now,
                                        data={"by": ctx.sender}))
        for name in targets:
            reference = current_reference(ctx.session, ticket.id, name)
            if reference is not None:
                note_follow_up(reference, ctx.now)
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="vendor_follow_up", at=ctx.now,
                                    data={"targets": targets, "by": ctx.sender,
                                          "message_id": ctx.mail.message_id}))
        results = apply_commands(ctx, ticket)
        if results:
            queue_case_update(
                ctx, ticket, template="staff_commands.txt.j2", kind="command_confirmation",
                context={"results": results, "valid": command_help()}, to=[ctx.sender],
            )
        return Outcome("reply:staff-to-vendor", f"case {ticket.number} → {', '.join(targets)}")
