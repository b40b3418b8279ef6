"""Prometheus metrics, one registry for the process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from mailbridge.db import Database

RECEIVED = Counter(
    "mailbridge_mails_received_total", "Mails offered to intake", ["channel", "outcome"]
)
PROCESSED = Counter("mailbridge_mails_processed_total", "Mails through the pipeline", ["outcome"])
TICKETS_CREATED = Counter("mailbridge_tickets_created_total", "Cases opened", ["priority"])
OUTBOUND = Counter("mailbridge_outbound_total", "Outbound mails", ["kind", "outcome"])
ACK_LATENCY = Histogram(
    "mailbridge_ack_latency_seconds",
    "From the inbound 250 to our mail leaving",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
OUTBOX_DEPTH = Gauge("mailbridge_outbox_depth", "Outbound mails waiting")
OUTBOX_OLDEST = Gauge("mailbridge_outbox_oldest_seconds", "Age of the oldest waiting mail")
QUARANTINE_SIZE = Gauge("mailbridge_quarantine_size", "Mails kept in quarantine")
ACKS_LATE = Gauge("mailbridge_acks_overdue", "Cases whose acknowledgement missed its deadline")


def refresh_outbox(db: Database) -> None:
    from sqlalchemy import func, select

    from mailbridge.db import utcnow
    from mailbridge.outbound.outbox import STATE_PENDING, OutboxMail

    with db.reader() as session:
        depth, oldest = session.execute(
            select(func.count(OutboxMail.id), func.min(OutboxMail.created_at)).where(
                OutboxMail.state == STATE_PENDING
            )
        ).one()
    OUTBOX_DEPTH.set(depth or 0)
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    OUTBOX_OLDEST.set((utcnow() - oldest).total_seconds() if oldest else 0)
