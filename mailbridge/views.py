"""Reading cases for people and tools: the ticket JSON contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from mailbridge.db import utcnow
from mailbridge.escalation.vendors import reference_json
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.sla.cases import clock_state_is, response_state, sla_json
from mailbridge.tickets.models import Ticket, VendorReference


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def ticket_summary(ticket: Ticket) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "tenant_id": ticket.tenant_id,
        "priority": ticket.priority,
        "severity": ticket.severity,
        "status": ticket.status,
        "subject": ticket.subject,
        "sender": ticket.sender,
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
        "queue": ticket.queue,
        "owner": ticket.owner,
        "sla_state": response_state(ticket, utcnow()),
    }


def ticket_json(session: Session, ticket: Ticket) -> dict[str, Any]:
    """The full case as the CLI and tools see it (keys are a contract)."""
    outbound = session.scalars(
        select(OutboxMail).where(OutboxMail.ticket_id == ticket.id).order_by(OutboxMail.id)
    ).all()
    return {
        **ticket_summary(ticket),
        "sender_name": ticket.sender_name,
        "waiting_since": _iso(ticket.waiting_since),
        "cc": list(ticket.cc or []),
        "cc_held": list(ticket.cc_held or []),  # copied, recorded, not mailed (#cc adds)
        "fields": dict(ticket.fields or {}),
        "fields_raw": dict(ticket.fields_raw or {}),
        "missing_fields": list(ticket.missing_fields or []),
        "attachments": [a.filename for a in ticket.attachments],
        "attachment_details": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size,
             "sha256": a.sha256}
            for a in ticket.attachments
        ],
        "ack_due_at": _iso(ticket.ack_due_at),
        "acked_at": _iso(ticket.acked_at),
        # The response clock (due time, state, first response), escalations and closing.
        "sla": sla_json(session, ticket, utcnow()),
        "messages": [
            {
                "direction": m.direction,
                "author_role": m.author_role,
                "sender": m.sender,
                "subject": m.subject,
                "message_id": m.message_id,
                "created_at": _iso(m.created_at),
                "body": m.body,
            }
            for m in ticket.messages
        ],
        "outbound": [
            {
                "kind": o.kind,
                "to": list(o.rcpt_tos),
                "subject": o.subject,
                "message_id": o.message_id,
                "state": o.state,
                "attempts": o.attempts,
                "sent_at": _iso(o.sent_at),
            }
            for o in outbound
        ],
        "events": [
            {"kind": e.kind, "at": _iso(e.at), "data": dict(e.data or {})} for e in ticket.events
        ],
        # Escalations to Operations and vendors, oldest first, each with its state.
        "vendor_references": [reference_json(r) for r in session.scalars(
            select(VendorReference)
            .where(VendorReference.ticket_id == ticket.id)
            .order_by(VendorReference.id)
        )],
    }


def get_ticket(session: Session, number: int) -> Ticket | None:
    return session.scalar(
        select(Ticket)
        .where(Ticket.number == number)
        .options(
            selectinload(Ticket.messages),
            selectinload(Ticket.attachments),
            selectinload(Ticket.events),
        )
    )


def list_tickets(
    session: Session, *, status: str | None = None, tenant_id: str | None = None,
    owner: str | None = None, queue: str | None = None, priority: str | None = None,
    sla_state: str | None = None, limit: int = 100, offset: int = 0,
    at: datetime | None = None,
) -> list[Ticket]:
    """Cases, newest first, filtered by what a desk sorts its work by (the SLA state as
    of `at`, default now)."""
    stmt = select(Ticket).order_by(Ticket.number.desc()).limit(limit).offset(offset)
    return list(session.scalars(_filtered(stmt, status=status, tenant_id=tenant_id, owner=owner,
                                          queue=queue, priority=priority, sla_state=sla_state,
                                          at=at)))


def count_tickets(
    session: Session, *, status: str | None = None, tenant_id: str | None = None,
    owner: str | None = None, queue: str | None = None, priority: str | None = None,
    sla_state: str | None = None, at: datetime | None = None,
) -> int:
    """How many cases `list_tickets` would find with no limit (the API's `total`)."""
    stmt = select(func.count()).select_from(Ticket)  # count(id) reads more at 1M cases
    return int(session.scalar(_filtered(stmt, status=status, tenant_id=tenant_id, owner=owner,
                                        queue=queue, priority=priority,
                                        sla_state=sla_state, at=at)) or 0)


def _filtered(stmt: Any, *, status: str | None, tenant_id: str | None, owner: str | None,
              queue: str | None, priority: str | None, sla_state: str | None,
              at: datetime | None = None) -> Any:
    if status:
        stmt = stmt.where(Ticket.status == status)
    if tenant_id:
        stmt = stmt.where(Ticket.tenant_id == tenant_id.upper())
    if owner is not None:
        stmt = stmt.where(Ticket.owner.is_(None) if owner in ("", "-", "nadie")
                          else Ticket.owner == owner.lower())
    if queue:
        stmt = stmt.where(Ticket.queue == queue)
    if priority:
        stmt = stmt.where(Ticket.priority == priority.upper())
    if sla_state:
        stmt = stmt.where(clock_state_is(sla_state, at or utcnow()))
    return stmt


def case_summary_by_id(session: Session, ticket_id: int) -> dict[str, Any] | None:
    """The case summary of a case by its row id (what webhooks carry as `case`)."""
    ticket = session.get(Ticket, ticket_id)
    return ticket_summary(ticket) if ticket is not None else None
