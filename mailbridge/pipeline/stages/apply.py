"""Apply: open the case or add the message to it, and queue every mail we owe."""

from __future__ import annotations

from datetime import timedelta

from mailbridge.outbound.webhooks import emit_event
from mailbridge.parse.replies import normalise_subject
from mailbridge.pipeline.cases import (
    add_event,
    find_look_alike,
    insert_case,
    record_message,
    record_secrets,
    take_copies,
)
from mailbridge.pipeline.changes import relay_staff_answer, staff_answered
from mailbridge.pipeline.commands import apply_commands, command_help
from mailbridge.pipeline.context import (
    FLOW_CASE,
    ROLE_CUSTOMER,
    ROLE_STAFF,
    MailContext,
    Outcome,
)
from mailbridge.pipeline.desk import tell_of_follow_up, tell_queue_of_new_case
from mailbridge.pipeline.lifecycle import customer_wrote
from mailbridge.pipeline.mailing import answering, queue_auto_reply, queue_case_update
from mailbridge.sla.cases import start_response_clock
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_INCOMPLETE,
    STATUS_OPEN,
    Ticket,
)
from mailbridge.tickets.numbering import next_case_number


class Apply:
    name = "apply"
    description = "Create the case or add the message; queue the mail we owe"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        """Records what it did in `ctx.outcome`; the stages after it see the case."""
        ctx.outcome = self._decide(ctx)
        return None

    def _decide(self, ctx: MailContext) -> Outcome:
        if ctx.ticket is not None:
            return self._add_to_case(ctx, ctx.ticket)
        subject_key = normalise_subject(ctx.mail.subject, ctx.rules.desk.case_token)[:255]
        existing = find_look_alike(ctx, subject_key)
        if existing is not None:
            return self._link_look_alike(ctx, existing)
        return self._open_case(ctx, subject_key)

    # -- a new case ------------------------------------------------------------
    def _open_case(self, ctx: MailContext, subject_key: str) -> Outcome:
        if ctx.support_address is None:
            # Only reached through our own plus-address with an unknown case number.
            priority, queue = "B", None
        else:
            priority, queue = ctx.support_address.priority, ctx.support_address.queue
        ticket = Ticket(
            number=next_case_number(ctx.session),
            tenant_id=ctx.tenant_id,
            priority=priority,
            severity=ctx.severity or _priority_severity(ctx, priority),
            queue=queue,
            status=STATUS_INCOMPLETE if ctx.missing_fields else STATUS_OPEN,
            subject=ctx.mail.subject,
            subject_key=subject_key,
            sender=ctx.sender[:320],
            sender_name=(ctx.mail.from_name or "")[:320] or None,
            cc=[],
            cc_held=[],
            fields=ctx.fields,
            fields_raw=ctx.fields_raw,
            missing_fields=ctx.missing_fields,
            created_at=ctx.now,
            updated_at=ctx.now,
            ack_due_at=ctx.inbound.received_at + timedelta(seconds=ctx.settings.ack_deadline),
            # The acknowledgement asks for what is missing: chased from here (set in the
            # INSERT: after it, an UPDATE of its own).
            waiting_since=ctx.now if ctx.missing_fields else None,
        )
        # Seed 003: the response clock, from the tenant's plan and calendar.
        start_response_clock(ticket, ctx.rules, ctx.tenant, ctx.inbound.received_at)
        take_copies(ctx, ticket)
        insert_case(ctx.session, ticket)
        ctx.ticket = ticket
        record_message(ctx, ticket)
        add_event(ctx, ticket.id, "created", {
            "priority": priority, "tenant_id": ctx.tenant_id, "inbound_id": ctx.inbound.id,
        })
        record_secrets(ctx, ticket)
        emit_event(ctx.session, "case.created", ticket, at=ctx.now)
        level = ctx.rules.priorities[ticket.priority]  # type: ignore[index]
        queue_auto_reply(
            ctx, template="ack.txt.j2", kind="ack", ticket=ticket, cc=ticket.cc,
            context={
                "priority_label": level.label,
                "tenant": ctx.tenant,
                "missing": [ctx.rules.template.label(k) for k in ticket.missing_fields],
                "secret_kinds": ctx.secret_kinds,
            },
        )
        tell_queue_of_new_case(ctx, ticket)
        ctx.opened_case = True  # counted in mailbridge_tickets_created_total once committed
        return Outcome("ticket", f"case {ticket.number}")

    def _link_look_alike(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        """Seed 004: one subject per case. The mail joins the open case; the sender is told."""
        ctx.ticket = ticket
        record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        take_copies(ctx, ticket)
        add_event(ctx, ticket.id, "look_alike_linked",
                   {"sender": ctx.sender, "message_id": ctx.mail.message_id})
        emit_event(ctx.session, "case.message", ticket, sender=ctx.sender, role=ctx.sender_role)
        queue_auto_reply(ctx, template="look_alike.txt.j2", kind="look_alike", ticket=ticket,
                         context={"subject": ctx.mail.subject})
        tell_of_follow_up(ctx, ticket, what="look_alike")
        return Outcome("reply:look-alike", f"case {ticket.number}")

    # -- a message on an existing case -------------------------------------------
    def _add_to_case(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        record_message(ctx, ticket)
        emit_event(ctx.session, "case.message", ticket, sender=ctx.sender, role=ctx.sender_role)
        ticket.updated_at = ctx.now
        take_copies(ctx, ticket)
        record_secrets(ctx, ticket)
        told = False
        if ctx.sender_role == ROLE_CUSTOMER and ticket.status != STATUS_CLOSED:
            # Seed 003: a confirmation closes, another answer on a resolved case reopens it.
            closed, told = customer_wrote(ctx, ticket)
            if closed is not None:
                return closed
        if ticket.status == STATUS_CLOSED and ctx.sender_role != ROLE_STAFF:
            return Outcome("reply:closed-case", f"case {ticket.number}")
        if ctx.sender_role == ROLE_STAFF:
            return self._staff_reply(ctx, ticket)
        if ctx.secret_kinds or ctx.fields_completed:
            queue_auto_reply(ctx, template="case_notice.txt.j2", kind="notice", ticket=ticket,
                             context={"secret_kinds": ctx.secret_kinds,
                                      "fields_completed": ctx.fields_completed})
        if not told:
            tell_of_follow_up(ctx, ticket)
        return Outcome("reply", f"case {ticket.number} by {ctx.threaded_by}")

    def _staff_reply(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        if ctx.body.strip():
            staff_answered(ctx.session, ctx.rules, ticket, by=ctx.sender, now=ctx.now,
                           by_name=ctx.mail.from_name or ctx.sender, answering=answering(ctx))
        results = apply_commands(ctx, ticket)
        if results:
            # Confirmed to the staff member only; rate limits do not apply to staff.
            queue_case_update(
                ctx, ticket, template="staff_commands.txt.j2", kind="command_confirmation",
                context={"results": results, "valid": command_help()}, to=[ctx.sender],
            )
        customer_got_it = ticket.sender in {*ctx.mail.to, *ctx.mail.cc}
        if ctx.body.strip() and not customer_got_it:
            # Staff wrote only to the desk: relay the answer, commands stripped.
            relay_staff_answer(ctx.session, ctx.rules, ticket, ctx.body,
                               agent_name=ctx.mail.from_name, now=ctx.now,
                               answering=answering(ctx))
        return Outcome("reply:staff", f"case {ticket.number}, {len(results)} command(s)")


def _priority_severity(ctx: MailContext, priority: str) -> str:
    level = ctx.rules.priorities.get(priority)  # type: ignore[call-overload]
    return level.severity if level is not None else "MEDIA"
