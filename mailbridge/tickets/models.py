"""The case model: tickets, their messages, attachments, events and counters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Unicode,
    UniqueConstraint,
    and_,
    literal_column,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailbridge.db import Base, UTCDateTime, utcnow

# Statuses are what staff and customers read: Spanish.
STATUS_OPEN = "abierto"
STATUS_INCOMPLETE = "incompleto"
STATUS_IN_PROGRESS = "en_progreso"
STATUS_RESOLVED = "resuelto"
STATUS_CLOSED = "cerrado"
STATUS_WAITING = "esperando_cliente"  # staff wait on the customer: the response clock pauses
OPEN_STATUSES = (STATUS_OPEN, STATUS_INCOMPLETE, STATUS_IN_PROGRESS, STATUS_RESOLVED,
                 STATUS_WAITING)


class Counter(Base):
    """Named monotonic counters (case numbers), portable across backends."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, nullable=False)


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    priority: Mapped[str] = mapped_column(String(1))
    severity: Mapped[str] = mapped_column(String(10), default="MEDIA")
    queue: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)
    subject: Mapped[str] = mapped_column(Text)
    # The subject as the case is known by (no Re:/token, folded): finds look-alikes.
    subject_key: Mapped[str] = mapped_column(String(255), default="")
    sender: Mapped[str] = mapped_column(String(320), index=True)
    sender_name: Mapped[str | None] = mapped_column(String(320))
    # People copied who receive the case's mail (the tenant's own, staff, or added by staff)…
    cc: Mapped[list[Any]] = mapped_column(default=list)
    # … and people copied who are only recorded: no automatic mail until staff add them.
    cc_held: Mapped[list[Any] | None] = mapped_column()
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fields_raw: Mapped[dict[str, Any]] = mapped_column(default=dict)
    missing_fields: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ack_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The response clock (mailbridge/sla), set when the case opens: it starts at receipt or
    # at the next business opening, turns "en_riesgo" at response_at_risk_at and is due at
    # response_due_at; the first staff reply (first_response_at) stops it.
    response_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_at_risk_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Set once by the SLA sweep: the breach and the late acknowledgement are told only once.
    response_breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_late_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When staff last set «resuelto»: the closing attempts count from here.
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The staff member who owns the case (seed 000: "propietario del caso"): the first who
    # answers, or whom «#asignar» names. Follow-ups and warnings go to them, else the queue.
    owner: Mapped[str | None] = mapped_column(String(320), index=True)
    # Since when the desk waits on the customer (incompleto, esperando_cliente): they are
    # chased from here (rules.yaml `closing`), and an answer ends the wait.
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # While staff wait on the customer (esperando_cliente) the response clock is paused.
    response_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    messages: Mapped[list[TicketMessage]] = relationship(
        back_populates="ticket", order_by="TicketMessage.id", cascade="all, delete-orphan"
    )
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="ticket", order_by="Attachment.id", cascade="all, delete-orphan"
    )
    events: Mapped[list[TicketEvent]] = relationship(
        back_populates="ticket", order_by="TicketEvent.id", cascade="all, delete-orphan"
    )


class TicketMessage(Base):
    """One mail on a case, inbound or outbound; `body` is the new text only."""

    __tablename__ = "ticket_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
    direction: Mapped[str] = mapped_column(String(3))  # "in" | "out"
    author_role: Mapped[str] = mapped_column(String(12))  # customer | staff | system | vendor
    message_id: Mapped[str | None] = mapped_column(String(998), unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")


class Attachment(Base):
    """Evidence kept on disk by content hash; the row holds its name and place."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("ticket_messages.id"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    stored: Mapped[bool] = mapped_column(default=True)

    ticket: Mapped[Ticket] = relationship(back_populates="attachments")


class TicketEvent(Base):
    """Something that happened to a case (created, acked, escalated …)."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    ticket: Mapped[Ticket] = relationship(back_populates="events")


class CaseAction(Base):
    """A timed action done once on a case: escalation number N, closing attempt number N.

    The unique key is the guard that lets several workers (two daemons on one database)
    race for the same action: the one whose insert commits does it, the others roll back.
    """

    __tablename__ = "case_actions"
    __table_args__ = (UniqueConstraint("ticket_id", "kind", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))  # escalation | closing_attempt
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SchedulerJob(Base):
    """APScheduler's persistent job store (mailbridge/sla/jobs.py), created by the migration.

    The columns are exactly those SQLAlchemyJobStore declares for its table.
    """

    __tablename__ = "scheduler_jobs"

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


class AutoReply(Base):
    """One automatic mail to one address: the rate limit counts these (RFC 3834)."""

    __tablename__ = "auto_replies"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AddressStatus(Base):
    """What bounces told us about an address; a hard bounce stops automatic mail to it."""

    __tablename__ = "address_status"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    bounces: Mapped[int] = mapped_column(default=0)
    hard: Mapped[bool] = mapped_column(default=False)
    last_status: Mapped[str | None] = mapped_column(String(16))
    last_reason: Mapped[str | None] = mapped_column(Text)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)



# Where an escalation stands; what staff read, so Spanish.
VENDOR_MISSING_DATA = "faltan_datos"  # asked of staff, nothing sent yet
VENDOR_SENT = "enviado"  # sent (or followed up); waiting for the target
VENDOR_REGISTERED = "registrado"  # its automatic answer gave its ticket number; still waiting
VENDOR_ANSWERED = "respondido"  # a person at the target answered
VENDOR_CLOSED = "cerrado"  # the case closed: no more reminders
VENDOR_WAITING_STATES = (VENDOR_SENT, VENDOR_REGISTERED)
VENDOR_ACTIVE_STATES = (VENDOR_SENT, VENDOR_REGISTERED, VENDOR_ANSWERED)


class VendorReference(Base):
    """One escalation of a case to Operations or a vendor: its ticket number and state."""

    __tablename__ = "vendor_references"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    target: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(20), index=True)
    # The target's own ticket number, once its answer gave one.
    vendor_ticket: Mapped[str | None] = mapped_column(String(64))
    # Our escalation mail's Message-ID (its answers reference it).
    message_id: Mapped[str | None] = mapped_column(String(998))
    requested_by: Mapped[str | None] = mapped_column(String(320))
    origin: Mapped[str] = mapped_column(String(10))  # staff | cli | rule
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    missing_fields: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Since when we wait for the target; None while the ball is in our court.
    awaiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Staff told of silence in this wait (the first `reminders.max` also remind the target).
    overdue_notices: Mapped[int] = mapped_column(default=0)
    reminders: Mapped[int] = mapped_column(default=0)  # sent to the target, in all
    last_reminder_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("ix_tickets_tenant_status", Ticket.tenant_id, Ticket.status)
Index("ix_tickets_tenant_subject_key", Ticket.tenant_id, Ticket.subject_key)
Index("ix_auto_replies_address_at", AutoReply.address, AutoReply.at)
Index("ix_vendor_references_target_ticket", VendorReference.target, VendorReference.vendor_ticket)


# Partial indexes: the few cases each SLA watch looks for, however many cases the desk
# keeps (issue 21.2: at a million cases a sweep that read every case took 0.4-0.9 s). A
# query can use one only when its WHERE has the index's condition as AND-ed terms, written
# the same way and with constants written out, not bound (SQLite matches the terms; on
# PostgreSQL a generic plan for bound values could not prove them). Use these expressions.
NOT_CLOSED: ColumnElement[bool] = Ticket.status != literal_column(f"'{STATUS_CLOSED}'")
UNACKED: ColumnElement[bool] = Ticket.acked_at.is_(None)
ACKED_LATE: ColumnElement[bool] = Ticket.acked_at > Ticket.ack_due_at
ACK_LATE_UNTOLD: ColumnElement[bool] = and_(Ticket.ack_late_at.is_(None), ACKED_LATE)
UNANSWERED: ColumnElement[bool] = and_(Ticket.first_response_at.is_(None), NOT_CLOSED)
ANSWERED_LATE_UNTOLD: ColumnElement[bool] = and_(
    Ticket.response_breached_at.is_(None), Ticket.first_response_at > Ticket.response_due_at
)
# The response clock runs (or is paused): what listing by SLA state starts from. Closed
# cases never answered stay in it (their state is still computed from the clock).
CLOCK_RUNNING: ColumnElement[bool] = and_(
    Ticket.response_due_at.is_not(None), Ticket.first_response_at.is_(None))


def _partial(name: str, column: object, where: ColumnElement[bool]) -> Index:
    return Index(name, column, sqlite_where=where, postgresql_where=where)


_partial("ix_tickets_unacked", Ticket.ack_due_at, UNACKED)
_partial("ix_tickets_acked_late", Ticket.acked_at, ACKED_LATE)
_partial("ix_tickets_ack_late_untold", Ticket.id, ACK_LATE_UNTOLD)
_partial("ix_tickets_unanswered", Ticket.response_due_at, UNANSWERED)
_partial("ix_tickets_answered_late_untold", Ticket.id, ANSWERED_LATE_UNTOLD)
_partial("ix_tickets_clock_running", Ticket.response_due_at, CLOCK_RUNNING)
# The tenant's open cases, newest first: the look-alike check of every opening.
Index("ix_tickets_open_tenant_created", Ticket.tenant_id, Ticket.created_at,
      sqlite_where=NOT_CLOSED, postgresql_where=NOT_CLOSED)
