"""The pipeline's stages, each small and named; the order is STAGES at the bottom."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select

from mailbridge import metrics
from mailbridge.outbound.outbox import OutboxMail, enqueue
from mailbridge.outbound.render import Draft
from mailbridge.parse.classify import classify
from mailbridge.parse.encryption import is_encrypted
from mailbridge.parse.quotes import strip_quotes
from mailbridge.parse.secrets import redact_secrets
from mailbridge.parse.template import extract_fields
from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.pipeline.redact import redact_raw
from mailbridge.tickets.evidence import store_evidence
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_INCOMPLETE,
    STATUS_OPEN,
    Attachment,
    Ticket,
    TicketEvent,
    TicketMessage,
)
from mailbridge.tickets.numbering import case_subject, find_case_token, next_case_number

log = logging.getLogger(__name__)


class Stage(Protocol):
    name: str
    description: str

    def run(self, ctx: MailContext) -> Outcome | None: ...


class Classify:
    name = "classify"
    description = "Robots, bounces, lists and our own mail never open cases"

    def run(self, ctx: MailContext) -> Outcome | None:
        desk = ctx.rules.desk
        own = frozenset({desk.from_address, *(a.address for a in ctx.rules.addresses)})
        ctx.classification = classify(ctx.mail.message, own_addresses=own)
        if ctx.mail.from_addr in own:
            return Outcome("ignored:own", "From is one of our addresses")
        if not ctx.classification.may_open_case:
            return Outcome(f"ignored:{ctx.classification.kind}", ctx.classification.reason)
        return None


class Deduplicate:
    name = "deduplicate"
    description = "The same Message-ID twice makes one message"

    def run(self, ctx: MailContext) -> Outcome | None:
        msgid = ctx.mail.message_id
        if not msgid:
            return None
        seen = ctx.session.scalar(
            select(TicketMessage.ticket_id).where(TicketMessage.message_id == msgid)
        )
        if seen is not None:
            ctx.inbound.ticket_id = seen
            return Outcome("duplicate", f"Message-ID {msgid} already on a case")
        return None


class Thread:
    name = "thread"
    description = "A reply joins its case by [Caso N], In-Reply-To or References"

    def run(self, ctx: MailContext) -> Outcome | None:
        number = find_case_token(ctx.mail.subject, ctx.rules.desk.case_token)
        if number is None:
            number = _plus_address_case(ctx)
        if number is not None:
            ticket = ctx.session.scalar(select(Ticket).where(Ticket.number == number))
            if ticket is not None:
                ctx.ticket, ctx.threaded_by = ticket, "token"
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
        return None


def _plus_address_case(ctx: MailContext) -> int | None:
    """soporte+123@… in the envelope carries the case number."""
    own_local, _, own_domain = ctx.rules.desk.from_address.partition("@")
    for rcpt in ctx.inbound.rcpt_tos:
        local, _, domain = rcpt.partition("@")
        base, _, tag = local.partition("+")
        if domain == own_domain and tag.isdigit() and base in (own_local, *_support_locals(ctx)):
            return int(tag)
    return None


def _support_locals(ctx: MailContext) -> list[str]:
    return [a.address.split("@", 1)[0] for a in ctx.rules.addresses]


class Route:
    name = "route"
    description = "Recipient address → priority and queue; subject → tenant; sender → role"

    def run(self, ctx: MailContext) -> Outcome | None:
        # The envelope decides (the mail may list other addresses in To/Cc).
        for rcpt in [*ctx.inbound.rcpt_tos, *ctx.mail.to, *ctx.mail.cc]:
            found = ctx.rules.support_address(rcpt)
            if found is not None:
                ctx.support_address = found
                break
        ctx.tenant_id = ctx.rules.find_tenant_id(ctx.mail.subject)
        ctx.tenant = ctx.rules.tenant(ctx.tenant_id)
        if ctx.tenant is not None:
            ctx.tenant_id = ctx.tenant.id
        if ctx.rules.is_staff(ctx.sender):
            ctx.sender_role = "staff"
        return None


class Redact:
    name = "redact"
    description = "Keep only the new text of a reply; take secrets out of what we store"

    def run(self, ctx: MailContext) -> Outcome | None:
        text = ctx.mail.text
        if ctx.ticket is not None:
            text = strip_quotes(text)
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
        if ctx.may_auto_reply:
            desk = ctx.rules.desk
            enqueue(
                ctx.session,
                Draft(
                    template="encrypted.txt.j2",
                    context={"desk": desk, "customer_name": ctx.mail.from_name,
                             "subject": ctx.mail.subject},
                    to=[ctx.sender],
                    subject=f"No podemos leer su mensaje cifrado: {ctx.mail.subject}"[:200],
                    from_address=desk.from_address,
                    from_name=desk.from_name,
                    in_reply_to=ctx.mail.message_id,
                    references=ctx.mail.references,
                ),
                kind="encrypted",
                ticket_id=None,
                inbound_id=ctx.inbound.id,
                trigger_received_at=ctx.inbound.received_at,
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
        if ticket.missing_fields and ctx.sender_role == "customer":
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


class Apply:
    name = "apply"
    description = "Create the case or add the message; queue the mail we owe"

    def run(self, ctx: MailContext) -> Outcome | None:
        if ctx.ticket is not None:
            return self._add_to_case(ctx, ctx.ticket)
        return self._open_case(ctx)

    def _open_case(self, ctx: MailContext) -> Outcome:
        if ctx.support_address is None:
            # Only reached for our own plus-address with an unknown case number.
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
            sender=ctx.sender,
            sender_name=ctx.mail.from_name or None,
            cc=_case_cc(ctx),
            fields=ctx.fields,
            fields_raw=ctx.fields_raw,
            missing_fields=ctx.missing_fields,
            created_at=ctx.now,
            updated_at=ctx.now,
            ack_due_at=ctx.inbound.received_at + timedelta(seconds=ctx.settings.ack_deadline),
        )
        ctx.session.add(ticket)
        ctx.session.flush()
        ctx.ticket = ticket
        _record_message(ctx, ticket)
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="created", at=ctx.now, data={
            "priority": priority, "tenant_id": ctx.tenant_id, "inbound_id": ctx.inbound.id,
        }))
        _record_secrets(ctx, ticket)
        if ctx.may_auto_reply:
            self._queue_ack(ctx, ticket)
        metrics.TICKETS_CREATED.labels(priority=priority).inc()
        return Outcome("ticket", f"case {ticket.number}")

    def _queue_ack(self, ctx: MailContext, ticket: Ticket) -> None:
        desk = ctx.rules.desk
        level = ctx.rules.priorities[ticket.priority]
        draft = Draft(
            template="ack.txt.j2",
            context={
                "ticket": ticket,
                "desk": desk,
                "priority_label": level.label,
                "tenant": ctx.tenant,
                "customer_name": ctx.mail.from_name,
                "missing": [ctx.rules.template.label(k) for k in ticket.missing_fields],
                "secret_kinds": ctx.secret_kinds,
            },
            to=[ticket.sender],
            cc=ticket.cc,
            subject=case_subject(desk.case_token, ticket.number, ticket.subject),
            from_address=desk.from_address,
            from_name=desk.from_name,
            reply_to=_case_reply_to(desk.from_address, ticket.number),
            in_reply_to=ctx.mail.message_id,
            references=ctx.mail.references,
        )
        enqueue(
            ctx.session,
            draft,
            kind="ack",
            ticket_id=ticket.id,
            inbound_id=ctx.inbound.id,
            trigger_received_at=ctx.inbound.received_at,
        )

    def _add_to_case(self, ctx: MailContext, ticket: Ticket) -> Outcome:
        _record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        _record_secrets(ctx, ticket)
        if ctx.may_auto_reply and (ctx.secret_kinds or ctx.fields_completed):
            _queue_case_notice(ctx, ticket)
        for addr in _case_cc(ctx):
            if addr not in ticket.cc and addr != ticket.sender:
                ticket.cc = [*ticket.cc, addr]
        if ticket.status == STATUS_CLOSED:
            return Outcome("reply:closed-case", f"case {ticket.number}")
        return Outcome("reply", f"case {ticket.number} by {ctx.threaded_by}")


def _priority_severity(ctx: MailContext, priority: str) -> str:
    level = ctx.rules.priorities.get(priority)  # type: ignore[call-overload]
    return level.severity if level is not None else "MEDIA"


def _record_secrets(ctx: MailContext, ticket: Ticket) -> None:
    if ctx.secret_kinds:
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="secrets_redacted", at=ctx.now,
                                    data={"kinds": ctx.secret_kinds}))


def _queue_case_notice(ctx: MailContext, ticket: Ticket) -> None:
    """A short mail on an existing case: secrets removed, or the case is now complete."""
    desk = ctx.rules.desk
    enqueue(
        ctx.session,
        Draft(
            template="case_notice.txt.j2",
            context={"ticket": ticket, "desk": desk, "customer_name": ctx.mail.from_name,
                     "secret_kinds": ctx.secret_kinds, "fields_completed": ctx.fields_completed},
            to=[ctx.sender],
            subject=case_subject(desk.case_token, ticket.number, ticket.subject),
            from_address=desk.from_address,
            from_name=desk.from_name,
            reply_to=_case_reply_to(desk.from_address, ticket.number),
            in_reply_to=ctx.mail.message_id,
            references=ctx.mail.references,
        ),
        kind="notice",
        ticket_id=ticket.id,
        inbound_id=ctx.inbound.id,
        trigger_received_at=ctx.inbound.received_at,
    )


def _case_reply_to(from_address: str, number: int) -> str:
    local, _, domain = from_address.partition("@")
    return f"{local}+{number}@{domain}"


def _case_cc(ctx: MailContext) -> list[str]:
    """People copied on the mail, without our own addresses and the sender."""
    rules = ctx.rules
    out: list[str] = []
    for addr in [*ctx.mail.to, *ctx.mail.cc]:
        if addr == ctx.sender or rules.accepts_recipient(addr) or addr in out:
            continue
        out.append(addr)
    return out


def _record_message(ctx: MailContext, ticket: Ticket) -> TicketMessage:
    message = TicketMessage(
        ticket_id=ticket.id,
        inbound_id=ctx.inbound.id,
        direction="in",
        author_role=ctx.sender_role,
        message_id=ctx.mail.message_id,
        in_reply_to=ctx.mail.in_reply_to,
        sender=ctx.sender,
        subject=ctx.mail.subject,
        body=ctx.body,
        created_at=ctx.now,
    )
    ctx.session.add(message)
    ctx.session.flush()
    _record_attachments(ctx, ticket, message)
    return message


def _record_attachments(ctx: MailContext, ticket: Ticket, message: TicketMessage) -> None:
    """Evidence on disk by content hash; over the limit it is listed but not kept apart."""
    limit = ctx.settings.max_attachment_size
    for item in ctx.mail.attachments:
        size = len(item.payload)
        stored = size <= limit
        digest = (
            store_evidence(ctx.settings.evidence_dir, item.payload)
            if stored
            else hashlib.sha256(item.payload).hexdigest()
        )
        ctx.session.add(Attachment(
            ticket_id=ticket.id, message_pk=message.id, filename=item.filename[:255],
            content_type=item.content_type[:255], size=size, sha256=digest, stored=stored,
        ))


# The pipeline, in order. A stage returning an Outcome ends the trip there.
STAGES: list[Stage] = [
    Classify(),
    Deduplicate(),
    Thread(),
    Route(),
    Redact(),
    RefuseEncrypted(),
    Validate(),
    Apply(),
]

