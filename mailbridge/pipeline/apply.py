"""The last stage: open the case or add the message, and queue every mail we owe."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, make_transient_to_detached

from mailbridge.parse.replies import normalise_subject
from mailbridge.pipeline.commands import apply_commands, command_help
from mailbridge.pipeline.context import ROLE_CUSTOMER, ROLE_STAFF, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_auto_reply, queue_case_update
from mailbridge.pipeline.thread import find_look_alike
from mailbridge.sla.cases import start_response_clock
from mailbridge.sla.closing import customer_answered
from mailbridge.tickets.evidence import store_evidence
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_INCOMPLETE,
    STATUS_OPEN,
    STATUS_RESOLVED,
    Attachment,
    Ticket,
    TicketEvent,
    TicketMessage,
)
from mailbridge.tickets.numbering import next_case_number

# Inserts built once, on the tables: rows nobody in the transaction reads back as objects.
_TICKET_COLUMNS = [c for c in Ticket.__table__.columns if not c.primary_key]
_INSERT_TICKET = insert(Ticket.__table__).returning(Ticket.__table__.c.id)
_INSERT_MESSAGE = insert(TicketMessage.__table__).returning(TicketMessage.__table__.c.id)
_INSERT_EVENT = insert(TicketEvent.__table__)
_INSERT_ATTACHMENTS = insert(Attachment.__table__)


class Apply:
    name = "apply"
    description = "Create the case or add the message; queue the mail we owe"

    def run(self, ctx: MailContext) -> Outcome:
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
        )
        # Seed 003: the response clock, from the tenant's plan and calendar.
        start_response_clock(ticket, ctx.rules, ctx.tenant, ctx.inbound.received_at)
        _take_copies(ctx, ticket)
        insert_case(ctx.session, ticket)
        ctx.ticket = ticket
        record_message(ctx, ticket)
        _add_event(ctx, ticket.id, "created", {
            "priority": priority, "tenant_id": ctx.tenant_id, "inbound_id": ctx.inbound.id,
        })
        _record_secrets(ctx, ticket)
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
        ctx.opened_case = True  # counted in mailbridge_tickets_created_total once committed
        return Outcome("ticket", f"case {ticket.number}")

    def _link_look_alike(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        """Seed 004: one subject per case. The mail joins the open case; the sender is told."""
        ctx.ticket = ticket
        record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        _take_copies(ctx, ticket)
        _add_event(ctx, ticket.id, "look_alike_linked",
                   {"sender": ctx.sender, "message_id": ctx.mail.message_id})
        queue_auto_reply(ctx, template="look_alike.txt.j2", kind="look_alike", ticket=ticket,
                         context={"subject": ctx.mail.subject})
        return Outcome("reply:look-alike", f"case {ticket.number}")

    # -- a message on an existing case -------------------------------------------
    def _add_to_case(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        _take_copies(ctx, ticket)
        _record_secrets(ctx, ticket)
        if ticket.status == STATUS_RESOLVED and ctx.sender_role == ROLE_CUSTOMER:
            # Seed 003: a confirmation closes the case; any other answer resets the attempts.
            closed = customer_answered(ctx, ticket)
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
        return Outcome("reply", f"case {ticket.number} by {ctx.threaded_by}")

    def _staff_reply(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        if ticket.first_response_at is None and ctx.body.strip():
            ticket.first_response_at = ctx.now
            ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="first_response", at=ctx.now,
                                        data={"by": ctx.sender}))
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
            queue_case_update(
                ctx, ticket, template="staff_answer.txt.j2", kind="staff_answer",
                context={"body": ctx.body, "agent_name": ctx.mail.from_name},
                to=[ticket.sender], cc=[c for c in ticket.cc if not ctx.rules.is_staff(c)],
            )
        return Outcome("reply:staff", f"case {ticket.number}, {len(results)} command(s)")


def insert_case(session: Session, ticket: Ticket) -> None:
    """Insert a new case with one INSERT … RETURNING id; the object joins the session as if
    it had been loaded, so what later stages change on it is flushed as an UPDATE.

    The ORM's unit of work for this one row cost more than the statement (bench/README.md).
    Columns left unset are NULL, as the ORM would insert them, unless they have a default:
    then the default applies and the attribute loads when read.
    """
    state = ticket.__dict__
    for column in _TICKET_COLUMNS:
        if column.key not in state and column.default is None:
            setattr(ticket, column.key, None)
    values = {c.key: state[c.key] for c in _TICKET_COLUMNS if c.key in state}
    ticket.id = session.execute(_INSERT_TICKET, values).scalar_one()
    make_transient_to_detached(ticket)
    session.add(ticket)


def _priority_severity(ctx: MailContext, priority: str) -> str:
    level = ctx.rules.priorities.get(priority)  # type: ignore[call-overload]
    return level.severity if level is not None else "MEDIA"


def _add_event(ctx: MailContext, ticket_id: int, kind: str, data: dict[str, Any]) -> None:
    """One event row, inserted now: nothing in the transaction reads it back as an object."""
    ctx.session.execute(_INSERT_EVENT,
                        [{"ticket_id": ticket_id, "kind": kind, "at": ctx.now, "data": data}])


def _record_secrets(ctx: MailContext, ticket: Ticket) -> None:
    if ctx.secret_kinds:
        _add_event(ctx, ticket.id, "secrets_redacted", {"kinds": ctx.secret_kinds})


def _take_copies(ctx: MailContext, ticket: Ticket) -> None:
    """The people copied on this mail join the case (not us, not staff, not shared boxes).

    Who receives the case's mail is limited (hostile round 2, Cc amplification): the
    tenant's registered contacts and addresses in its own domains go to `cc`; anyone else
    is recorded in `cc_held` and mailed only once staff add them (a staff member copying
    someone on a reply, or «#cc persona@dominio»).
    """
    rules = ctx.rules
    cc, held = list(ticket.cc or []), list(ticket.cc_held or [])
    tenant = ctx.tenant or rules.tenant(ticket.tenant_id)
    sender = ticket.sender if ticket.sender else ctx.sender
    vouched = ctx.sender_role == ROLE_STAFF
    for addr in [*ctx.mail.to, *ctx.mail.cc]:
        if addr in cc or addr in (sender, ctx.sender):
            continue
        if rules.accepts_recipient(addr) or rules.is_staff(addr) or rules.is_shared_mailbox(addr):
            continue
        if vouched or (tenant is not None and tenant.is_colleague(addr)):
            cc.append(addr)
            if addr in held:
                held.remove(addr)
        elif addr not in held:
            held.append(addr)
    if cc != (ticket.cc or []):
        ticket.cc = cc
    if held != (ticket.cc_held or []):
        ticket.cc_held = held


def record_message(ctx: MailContext, ticket: Ticket) -> int:
    """The mail as a message of the case, with its evidence; returns the message's id."""
    ctx.session.flush()  # the case and what the stages changed go first, as before
    message_pk = ctx.session.execute(_INSERT_MESSAGE, {
        "ticket_id": ticket.id,
        "inbound_id": ctx.inbound.id,
        "direction": "in",
        "author_role": ctx.sender_role,
        "message_id": ctx.mail.message_id[:998] if ctx.mail.message_id else None,
        "in_reply_to": ctx.mail.in_reply_to,
        "sender": ctx.sender[:320],
        "subject": ctx.mail.subject,
        "body": ctx.body,
        "created_at": ctx.now,
    }).scalar_one()
    _record_attachments(ctx, ticket, message_pk)
    return int(message_pk)


def _record_attachments(ctx: MailContext, ticket: Ticket, message_pk: int) -> None:
    """Evidence on disk by content hash; over the limit it is listed but not kept apart."""
    limit = ctx.settings.max_attachment_size
    rows: list[dict[str, Any]] = []
    for item in ctx.mail.attachments:
        size = len(item.payload)
        stored = size <= limit
        digest = (
            store_evidence(ctx.settings.evidence_dir, item.payload)
            if stored
            else hashlib.sha256(item.payload).hexdigest()
        )
        rows.append({
            "ticket_id": ticket.id, "message_pk": message_pk, "filename": item.filename[:255],
            "content_type": item.content_type[:255], "size": size, "sha256": digest,
            "stored": stored,
        })
    if rows:
        ctx.session.execute(_INSERT_ATTACHMENTS, rows)
