"""Outbox rows: written in the same transaction as the ticket, sent later."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    insert,
    literal_column,
)
from sqlalchemy.orm import Mapped, Session, deferred, mapped_column

from mailbridge import metrics
from mailbridge.db import Base, UTCDateTime, utcnow
from mailbridge.outbound.addresses import transport_form
from mailbridge.outbound.render import Draft, render

log = logging.getLogger(__name__)

STATE_PENDING = "pending"
STATE_SENT = "sent"
STATE_FAILED = "failed"


class OutboxMail(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))  # ack, missing_fields, reply …
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
    # When the mail that caused this one was acknowledged (250): for latency.
    trigger_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mail_from: Mapped[str] = mapped_column(String(998))
    rcpt_tos: Mapped[list[Any]] = mapped_column()
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = deferred(mapped_column(LargeBinary))
    state: Mapped[str] = mapped_column(String(12), default=STATE_PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("ix_outbox_state_next", OutboxMail.state, OutboxMail.next_attempt_at)
# The mails that failed for good, newest first (`mailbridge status`): few among millions.
FAILED: ColumnElement[bool] = OutboxMail.state == literal_column(f"'{STATE_FAILED}'")
Index("ix_outbox_failed", OutboxMail.id, sqlite_where=FAILED, postgresql_where=FAILED)
_INSERT_OUTBOX_MAIL = insert(OutboxMail.__table__)  # built once: one per mail


def insert_outbox_mail(
    session: Session,
    draft: Draft,
    *,
    kind: str,
    ticket_id: int | None,
    inbound_id: int | None = None,
    trigger_received_at: datetime | None = None,
    envelope_from: str | None = None,
    templates_dir: str | None = None,
) -> str:
    """Render the draft now and insert its row into the caller's transaction (one INSERT);
    returns the Message-ID. Only `outbound.compose` calls it: every mail goes through the
    composer. Core, not the ORM: its unit of work around a row nobody reads again cost
    more than rendering it (bench/README.md)."""
    values = _row_values(draft, kind=kind, ticket_id=ticket_id, inbound_id=inbound_id,
                         trigger_received_at=trigger_received_at, envelope_from=envelope_from,
                         templates_dir=templates_dir)
    session.connection().execute(_INSERT_OUTBOX_MAIL, [values])
    return str(values["message_id"])


def _row_values(
    draft: Draft,
    *,
    kind: str,
    ticket_id: int | None,
    inbound_id: int | None,
    trigger_received_at: datetime | None,
    envelope_from: str | None,
    templates_dir: str | None,
) -> dict[str, Any]:
    draft, left_out = draft.capped()
    if left_out:
        metrics.AUTO_REPLIES_WITHHELD.labels(reason="recipient_cap").inc(len(left_out))
        log.warning("outbound recipients over the cap left out",
                    extra={"kind": kind, "ticket_id": ticket_id, "cap": draft.max_recipients,
                           "left_out": len(left_out)})
    message_id, raw = render(draft, templates_dir)
    now = utcnow()
    return {
        "created_at": now,
        "kind": kind,
        "ticket_id": ticket_id,
        "inbound_id": inbound_id,
        "trigger_received_at": trigger_received_at,
        # Auto-replies go out with a null envelope sender? No: a real address lets
        # bounces come back and be recorded on the case; X-Loop and
        # Auto-Submitted keep other robots from answering.
        "mail_from": envelope_from or draft.from_address,
        "rcpt_tos": sorted({transport_form(a) for a in (*draft.to, *draft.cc)}),
        "message_id": message_id,
        "subject": draft.subject,
        "raw": raw,
        "state": STATE_PENDING,
        "attempts": 0,
        "next_attempt_at": now,
    }
