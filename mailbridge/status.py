"""`mailbridge status` and `mailbridge quarantine …`: what ops look at first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.db import Database, utcnow
from mailbridge.outbound.outbox import FAILED, STATE_FAILED, STATE_PENDING, OutboxMail
from mailbridge.outbound.webhooks import webhook_report
from mailbridge.sla.cases import acks_sent_late, sla_status
from mailbridge.sla.sweep import has_ack_mail
from mailbridge.spool import STATE_NEW, STATE_QUARANTINED, InboundMail
from mailbridge.tickets.models import UNACKED, Ticket


def _age(value: datetime | None, now: datetime) -> float | None:
    return round((now - value).total_seconds(), 1) if value is not None else None


def overdue_acks(session: Session, now: datetime) -> list[Ticket]:
    """Cases whose acknowledgement has not left and whose deadline has passed."""
    # The oldest due first, through the partial index of unacknowledged cases; an ORDER BY
    # number would walk the number index over every case the desk keeps.
    found = session.scalars(
        select(Ticket)
        .where(UNACKED, Ticket.ack_due_at < now, has_ack_mail())
        .order_by(Ticket.ack_due_at)
        .limit(100)
    )
    return sorted(found, key=lambda ticket: ticket.number)


def status_report(session: Session, *, counts: bool = True) -> dict[str, Any]:
    """What `mailbridge status` shows. Each part reads only the few rows it lists, through
    an index, however many cases the desk keeps; the case counts by status (`counts`) are
    the one part that reads every case (~40 ms at a million), left out for the gauges."""
    now = utcnow()
    inbound_new, oldest_new = session.execute(
        select(func.count(InboundMail.id), func.min(InboundMail.received_at)).where(
            InboundMail.state == STATE_NEW
        )
    ).one()
    quarantined = session.scalar(
        select(func.count(InboundMail.id)).where(InboundMail.state == STATE_QUARANTINED)
    )
    outbox_pending, oldest_out = session.execute(
        select(func.count(OutboxMail.id), func.min(OutboxMail.created_at)).where(
            OutboxMail.state == STATE_PENDING
        )
    ).one()
    outbox_failed = session.scalar(
        select(func.count(OutboxMail.id)).where(OutboxMail.state == STATE_FAILED)
    )
    failures = session.execute(
        select(OutboxMail.id, OutboxMail.kind, Ticket.number, OutboxMail.rcpt_tos,
               OutboxMail.attempts, OutboxMail.last_error, OutboxMail.created_at)
        .outerjoin(Ticket, Ticket.id == OutboxMail.ticket_id)
        .where(FAILED)  # its partial index: PostgreSQL walked the whole outbox by id
        .order_by(OutboxMail.id.desc())
        .limit(10)
    ).all()
    oldest_unacked = session.execute(
        select(Ticket.number, Ticket.created_at)
        .where(UNACKED, has_ack_mail())
        .order_by(Ticket.ack_due_at)  # = arrival + the deadline: the partial index's order
        .limit(1)
    ).first()
    late = overdue_acks(session, now)
    report: dict[str, Any] = {
        "now": now.isoformat(),
        "inbound": {
            "waiting": inbound_new,
            "oldest_waiting_seconds": _age(oldest_new, now),
            "quarantined": quarantined,
        },
        "outbox": {
            "pending": outbox_pending,
            "oldest_pending_seconds": _age(oldest_out, now),
            "failed": outbox_failed,
            # The newest mails that failed for good, each with the relay's or our reason.
            "recent_failures": [
                {"id": f.id, "kind": f.kind, "case": f.number, "rcpt_tos": list(f.rcpt_tos),
                 "attempts": f.attempts, "error": (f.last_error or "")[:300],
                 "created_at": f.created_at.isoformat()}
                for f in failures
            ],
        },
        "acks": {
            "oldest_unacknowledged": (
                {"case": oldest_unacked[0], "age_seconds": _age(oldest_unacked[1], now)}
                if oldest_unacked
                else None
            ),
            "overdue": [
                {"case": t.number, "due_at": t.ack_due_at.isoformat() if t.ack_due_at else None}
                for t in late
            ],
            # Acknowledged, but after the 15-minute promise (SPEC §5).
            "sent_late": acks_sent_late(session),
        },
        # Response clocks past or near their target, cases awaiting confirmation, timers.
        "sla": sla_status(session, now),
        # Webhook deliveries by target; those that failed for good, with their reason.
        "webhooks": webhook_report(session, now),
    }
    if counts:
        by_status = dict(
            session.execute(select(Ticket.status, func.count()).group_by(Ticket.status)).all()
        )
        report["tickets"] = {"total": sum(by_status.values()), "by_status": by_status}
    return report


def quarantine_list(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(InboundMail)
        .where(InboundMail.state == STATE_QUARANTINED)
        .order_by(InboundMail.id)
        .limit(limit)
    )
    return [quarantine_entry(r) for r in rows]


def quarantine_entry(row: InboundMail, *, full: bool = False) -> dict[str, Any]:
    error = row.error or ""
    entry: dict[str, Any] = {
        "id": row.id,
        "received_at": row.received_at.isoformat(),
        "channel": row.channel,
        "source": row.source,
        "mail_from": row.mail_from,
        "rcpt_tos": list(row.rcpt_tos),
        "size": row.size,
        "message_id": row.message_id,
        "stage": row.stage,
        "attempts": row.attempts,
        "error": error if full else (error.strip().splitlines() or [""])[-1],
    }
    return entry


def refresh_queue_gauges(db: Database) -> None:
    """Queue gauges read from the database at scrape time (correct across workers)."""
    with db.reader() as session:
        report = status_report(session, counts=False)  # at every scrape: no full count
    metrics.OUTBOX_DEPTH.set(report["outbox"]["pending"] or 0)
    metrics.OUTBOX_OLDEST.set(report["outbox"]["oldest_pending_seconds"] or 0)
    metrics.OUTBOX_FAILED.set(report["outbox"]["failed"] or 0)
    metrics.QUARANTINE_SIZE.set(report["inbound"]["quarantined"] or 0)
    metrics.INBOUND_WAITING.set(report["inbound"]["waiting"] or 0)
    metrics.INBOUND_OLDEST.set(report["inbound"]["oldest_waiting_seconds"] or 0)
    metrics.ACKS_LATE.set(len(report["acks"]["overdue"]))
    metrics.WEBHOOKS_PENDING.clear()
    metrics.WEBHOOKS_FAILED.clear()
    for target, states in report["webhooks"]["by_target"].items():
        metrics.WEBHOOKS_PENDING.labels(target=target).set(states["pending"])
        metrics.WEBHOOKS_FAILED.labels(target=target).set(states["failed"])
