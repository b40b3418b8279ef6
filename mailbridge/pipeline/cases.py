"""What the stages write on a case: the case row, its messages, evidence, copies, events."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session, make_transient_to_detached

from mailbridge.db import UTCDateTime
from mailbridge.parse.replies import close_subjects, subject_words
from mailbridge.pipeline.context import ROLE_STAFF, MailContext
from mailbridge.tickets.evidence import store_evidence
from mailbridge.tickets.models import (
    NOT_CLOSED,
    OPEN_STATUSES,
    Attachment,
    Ticket,
    TicketEvent,
    TicketMessage,
)

# Inserts built once, on the tables: rows nobody in the transaction reads back as objects.
# Run on the session's connection (Session.execute costs ~20 us more a statement).
_TICKET_COLUMNS = [c for c in Ticket.__table__.columns if not c.primary_key]
_INSERT_TICKET = insert(Ticket.__table__).returning(Ticket.__table__.c.id)
_INSERT_MESSAGE = insert(TicketMessage.__table__).returning(TicketMessage.__table__.c.id)
_INSERT_EVENT = insert(TicketEvent.__table__)
_INSERT_ATTACHMENTS = insert(Attachment.__table__)
_TICKETS = Ticket.__table__.c
LOOK_ALIKE_SCAN = 50
_OPEN_SUBJECTS = (
    select(_TICKETS.id, _TICKETS.subject_key)
    .where(
        _TICKETS.tenant_id == bindparam("tenant_id"),
        NOT_CLOSED,  # as ix_tickets_open_tenant_created has it: newest first, no sort
        _TICKETS.created_at >= bindparam("since", type_=UTCDateTime),
    )
    .order_by(_TICKETS.created_at.desc())
    .limit(LOOK_ALIKE_SCAN)
)
_LOOK_ALIKE = (
    select(_TICKETS.id)
    .where(
        _TICKETS.tenant_id == bindparam("tenant_id"),
        _TICKETS.subject_key == bindparam("subject_key"),
        _TICKETS.status.in_(OPEN_STATUSES),
        _TICKETS.created_at >= bindparam("since", type_=UTCDateTime),
    )
    .order_by(_TICKETS.created_at.desc())
    .limit(1)
)


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
    ticket.id = session.connection().execute(_INSERT_TICKET, values).scalar_one()
    make_transient_to_detached(ticket)
    session.add(ticket)


def add_event(ctx: MailContext, ticket_id: int, kind: str, data: dict[str, Any]) -> None:
    """One event row, inserted now: nothing in the transaction reads it back as an object."""
    ctx.session.connection().execute(
        _INSERT_EVENT, [{"ticket_id": ticket_id, "kind": kind, "at": ctx.now, "data": data}])


def record_secrets(ctx: MailContext, ticket: Ticket) -> None:
    if ctx.secret_kinds:
        add_event(ctx, ticket.id, "secrets_redacted", {"kinds": ctx.secret_kinds})


def take_copies(ctx: MailContext, ticket: Ticket) -> None:
    """The people copied on this mail join the case (not us, not staff, not shared boxes).

    Who receives the case's mail is limited (hostile round 2, Cc amplification): the
    tenant's registered contacts and addresses in its own domains go to `cc`; anyone else
    is recorded in `cc_held` and mailed only once staff add them (a staff member copying
    someone new on a reply, or «#cc persona@dominio»).
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
        # Staff copying someone new vouch for them; a held address their reply-all merely
        # carried along stays held (only «#cc» releases it).
        if (vouched and addr not in held) or (tenant is not None and tenant.is_colleague(addr)):
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
    message_pk = ctx.session.connection().execute(_INSERT_MESSAGE, {
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
        ctx.session.connection().execute(_INSERT_ATTACHMENTS, rows)


def find_look_alike(ctx: MailContext, subject_key: str) -> Ticket | None:
    """An open case of the same tenant about the same issue, recently opened: the same
    normalised subject, else a close one ("Fallan los reportes" / "Falla en reportes").

    Every opening asks; few find one. The exact question reads one column; the close one
    reads the subjects of the tenant's open cases in the window (at most LOOK_ALIKE_SCAN,
    newest first), and the case is loaded only when there is one.
    """
    if not subject_key or ctx.tenant_id is None:
        return None
    window = timedelta(hours=ctx.rules.desk.duplicate_window_hours)
    params = {"tenant_id": ctx.tenant_id, "subject_key": subject_key, "since": ctx.now - window}
    ticket_id = ctx.session.connection().execute(_LOOK_ALIKE, params).scalar()
    if ticket_id is None:
        words = subject_words(subject_key, ignore=ctx.tenant_id)
        if len(words) >= 2:
            for candidate_id, key in ctx.session.connection().execute(_OPEN_SUBJECTS, params):
                if close_subjects(words, subject_words(key, ignore=ctx.tenant_id)):
                    ticket_id = candidate_id
                    break
    return ctx.session.get(Ticket, ticket_id) if ticket_id is not None else None
