"""The SLA sweeps: what the scheduler runs, each a pure function of the database and `now`.

Every sweep is idempotent and claims its work with a database-side guard (an UPDATE whose
WHERE still requires the old state, or a `case_actions` row with a unique key), so running
it twice, late, or in two daemons at once does each thing once. After downtime one run
catches up: every rule is "due by now", not "due at this exact tick".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.db import Database
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.rules import Rules
from mailbridge.sla.calendars import require_aware
from mailbridge.sla.closing import sweep_closing
from mailbridge.sla.escalation import sweep_escalations
from mailbridge.tickets.models import STATUS_CLOSED, STATUS_RESOLVED, Ticket, TicketEvent

log = logging.getLogger(__name__)

SWEEP_KINDS = ("acks", "response", "escalation", "closing", "vendors")
_ACTIVE = ~Ticket.status.in_((STATUS_RESOLVED, STATUS_CLOSED))


@dataclass
class SweepResult:
    kind: str
    done: dict[str, int] = field(default_factory=dict)

    @property
    def mails(self) -> bool:
        """Whether the sweep queued outbound mail (the sender should wake up)."""
        queued = ("escalated", "attempts", "closed", "vendor_reminders")
        return any(self.done.get(k) for k in queued)


def _has_ack_mail() -> ColumnElement[bool]:
    return exists().where(OutboxMail.ticket_id == Ticket.id, OutboxMail.kind == "ack")


def _ack_overdue(now: datetime) -> ColumnElement[bool]:
    """Unsent past its deadline, or sent after it (SPEC §5: the 15-minute promise)."""
    return and_(
        _has_ack_mail(),
        Ticket.ack_due_at.is_not(None),
        or_(
            and_(Ticket.acked_at.is_(None), Ticket.ack_due_at < now),
            Ticket.acked_at > Ticket.ack_due_at,
        ),
    )


def count_overdue_acks(session: Session, now: datetime) -> int:
    """Cases whose acknowledgement is still unsent after its deadline."""
    return session.scalar(
        select(func.count(Ticket.id)).where(
            _has_ack_mail(), Ticket.acked_at.is_(None), Ticket.ack_due_at < now
        )
    ) or 0


def watch_acks(db: Database, now: datetime) -> int:
    """Log and count, once per case, every acknowledgement that missed its deadline."""
    with db.transaction() as session:
        candidates = session.execute(
            select(Ticket.id, Ticket.number, Ticket.ack_due_at, Ticket.acked_at).where(
                Ticket.ack_late_at.is_(None), _ack_overdue(now)
            )
        ).all()
        told = 0
        for ticket_id, number, due, sent in candidates:
            claimed = session.execute(
                update(Ticket)
                .where(Ticket.id == ticket_id, Ticket.ack_late_at.is_(None))
                .values(ack_late_at=now)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another worker told it
            told += 1
            data = {"due_at": due.isoformat(), "sent_at": sent.isoformat() if sent else None}
            session.add(TicketEvent(ticket_id=ticket_id, kind="ack_late", at=now, data=data))
            metrics.ACKS_LATE_TOTAL.inc()
            log.warning(
                "acknowledgement overdue" if sent is None else "acknowledgement sent late",
                extra={"case": number, **data},
            )
        metrics.ACKS_LATE.set(count_overdue_acks(session, now))
    return told


def watch_responses(db: Database, now: datetime) -> int:
    """Record, log and count once every case whose first response missed its target."""
    with db.transaction() as session:
        candidates = session.execute(
            select(Ticket.id, Ticket.number, Ticket.severity, Ticket.response_due_at,
                   Ticket.first_response_at).where(
                Ticket.response_due_at.is_not(None),
                Ticket.response_breached_at.is_(None),
                or_(
                    and_(Ticket.first_response_at.is_(None), Ticket.response_due_at < now,
                         Ticket.status != STATUS_CLOSED),
                    Ticket.first_response_at > Ticket.response_due_at,
                ),
            )
        ).all()
        told = 0
        for ticket_id, number, severity, due, answered in candidates:
            claimed = session.execute(
                update(Ticket)
                .where(Ticket.id == ticket_id, Ticket.response_breached_at.is_(None))
                .values(response_breached_at=due)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue
            told += 1
            data = {"severity": severity, "due_at": due.isoformat(),
                    "answered_at": answered.isoformat() if answered else None}
            session.add(TicketEvent(ticket_id=ticket_id, kind="sla_breached", at=now, data=data))
            metrics.SLA_BREACHES.labels(severity=severity).inc()
            log.warning("response target missed", extra={"case": number, **data})
        waiting = and_(_ACTIVE, Ticket.first_response_at.is_(None))
        metrics.SLA_BREACHED_OPEN.set(session.scalar(
            select(func.count(Ticket.id)).where(waiting, Ticket.response_due_at < now)
        ) or 0)
        metrics.SLA_AT_RISK.set(session.scalar(
            select(func.count(Ticket.id)).where(
                waiting, Ticket.response_at_risk_at <= now, Ticket.response_due_at >= now
            )
        ) or 0)
    return told


def run_sweep(kind: str, db: Database, rules: Rules, now: datetime) -> SweepResult:
    """Run one kind of sweep at `now` (the scheduler's job body; tests pass a fake now)."""
    now = require_aware(now, "now")
    result = SweepResult(kind)
    try:
        if kind == "acks":
            result.done["acks_late"] = watch_acks(db, now)
        elif kind == "response":
            result.done["breached"] = watch_responses(db, now)
        elif kind == "escalation":
            result.done["escalated"] = sweep_escalations(db, rules, now)
        elif kind == "closing":
            result.done["attempts"], result.done["closed"] = sweep_closing(db, rules, now)
        elif kind == "vendors":
            from mailbridge.escalation.reminders import remind_overdue_vendors

            result.done["vendor_reminders"] = len(remind_overdue_vendors(db, rules, now))
        else:
            raise ValueError(f"unknown sweep {kind!r} (known: {', '.join(SWEEP_KINDS)})")
    except Exception:
        metrics.SLA_SWEEPS.labels(kind=kind, outcome="error").inc()
        raise
    metrics.SLA_SWEEPS.labels(kind=kind, outcome="ok").inc()
    level = logging.INFO if any(result.done.values()) else logging.DEBUG
    log.log(level, "sla sweep", extra={"kind": kind, "now": now.isoformat(), **result.done})
    return result


def sweep_all(db: Database, rules: Rules, now: datetime) -> dict[str, SweepResult]:
    """Every sweep once, in a fixed order (tests and `mailbridge sla sweep`)."""
    return {kind: run_sweep(kind, db, rules, now) for kind in SWEEP_KINDS}
