"""The SLA sweeps: what the scheduler runs, each a pure function of the database and `now`.

Every sweep is idempotent and claims its work with a database-side guard (an UPDATE whose
WHERE still requires the old state, or a `case_actions` row with a unique key), so running
it twice, late, or in two daemons at once does each thing once. After downtime one run
catches up: every rule is "due by now", not "due at this exact tick".

A sweep runs every minute beside the pipeline, and on SQLite a write transaction holds the
one write lock: the sweeps here look for their work in read transactions, only at cases
that can be due (a WHERE on the instants), in chunks, and take the write lock only for
the cases that change, a chunk at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.db import Database
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.rules import Rules
from mailbridge.service_levels.calendars import require_aware
from mailbridge.service_levels.config import EscalationConfig
from mailbridge.sla.closing import sweep_chase, sweep_closing
from mailbridge.sla.escalation import (
    ACTION_ESCALATION,
    ESCALATABLE_STATUSES,
    automatic_decision,
    escalate,
    next_seq,
)
from mailbridge.sla.warnings import warn_responses
from mailbridge.tickets.models import (
    ACK_LATE_UNTOLD,
    ANSWERED_LATE_UNTOLD,
    STATUS_CLOSED,
    STATUS_RESOLVED,
    UNACKED,
    UNANSWERED,
    CaseAction,
    Ticket,
    TicketEvent,
    TicketMessage,
)

log = logging.getLogger(__name__)

SWEEP_KINDS = ("acks", "response", "warnings", "escalation", "closing", "chase", "vendors")
_ACTIVE = ~Ticket.status.in_((STATUS_RESOLVED, STATUS_CLOSED))
# Cases read per query, and changed per write transaction: a sweep after a long outage
# (thousands due) never holds SQLite's write lock for long at a stretch.
CHUNK = 100


@dataclass
class SweepResult:
    kind: str
    done: dict[str, int] = field(default_factory=dict)

    @property
    def mails(self) -> bool:
        """Whether the sweep queued outbound mail (the sender should wake up)."""
        queued = ("escalated", "attempts", "closed", "vendor_reminders", "at_risk",
                  "breach_told", "chased", "chase_closed")
        return any(self.done.get(k) for k in queued)


def has_ack_mail() -> ColumnElement[bool]:
    return exists().where(OutboxMail.ticket_id == Ticket.id, OutboxMail.kind == "ack")


def count_overdue_acks(session: Session, now: datetime) -> int:
    """Cases whose acknowledgement is still unsent after its deadline."""
    return session.scalar(
        select(func.count(Ticket.id)).where(UNACKED, Ticket.ack_due_at < now, has_ack_mail())
    ) or 0


def _claim_in_chunks(
    db: Database,
    condition: ColumnElement[bool],
    values: dict[str, Any],
    returning: Sequence[Any],
    chunk: int,
    record: Callable[[Any], dict[str, Any]],
) -> int:
    """Mark the cases matching `condition` with `values`, once, `chunk` at a time.

    The candidates are found in a read; each chunk is claimed by one UPDATE whose
    WHERE repeats `condition`, so it reads the cases again under the write lock (a
    case another worker marked, or that changed since the read, is left out).
    `record(row)` gives, per claimed row (id first), the data of its event, which is
    written in the same transaction. Returns how many were claimed.
    """
    with db.reader() as session:
        # No ORDER BY: sorting by id would have SQLite walk every case in id order
        # instead of the partial index the condition names (models.py); few are found.
        candidates = sorted(session.scalars(select(Ticket.id).where(condition)))
    claimed_total = 0
    for start in range(0, len(candidates), chunk):
        with db.transaction() as session:
            claimed = session.execute(
                update(Ticket)
                .where(Ticket.id.in_(candidates[start:start + chunk]), condition)
                .values(**values)
                .returning(Ticket.id, *returning)
                .execution_options(synchronize_session=False)
            ).all()
            claimed.sort(key=lambda row: row[0])
            claimed_total += len(claimed)
            events = [record(row) for row in claimed]
            if events:
                session.execute(insert(TicketEvent.__table__), events)
    return claimed_total


def watch_acks(db: Database, now: datetime, chunk: int = CHUNK) -> int:
    """Log and count, once per case, every acknowledgement that missed its deadline (SPEC
    §5: the 15-minute promise): unsent past it, or sent after it. Each is found through
    its partial index: the unacknowledged cases, the ones acknowledged late and not told.
    """

    def record(row: Any) -> dict[str, Any]:
        ticket_id, number, due, sent = row
        data = {"due_at": due.isoformat(), "sent_at": sent.isoformat() if sent else None}
        metrics.ACKS_LATE_TOTAL.inc()
        log.warning(
            "acknowledgement overdue" if sent is None else "acknowledgement sent late",
            extra={"case": number, **data},
        )
        return {"ticket_id": ticket_id, "kind": "ack_late", "at": now, "data": data}

    unsent = and_(UNACKED, Ticket.ack_late_at.is_(None), Ticket.ack_due_at < now,
                  has_ack_mail())
    told = sum(
        _claim_in_chunks(db, condition, {"ack_late_at": now},
                         (Ticket.number, Ticket.ack_due_at, Ticket.acked_at), chunk, record)
        for condition in (unsent, and_(ACK_LATE_UNTOLD, has_ack_mail()))
    )
    with db.reader() as session:
        metrics.ACKS_LATE.set(count_overdue_acks(session, now))
    return told


def watch_responses(db: Database, now: datetime, chunk: int = CHUNK) -> int:
    """Record, log and count once every case whose first response missed its target."""
    # Unanswered past the target (not while paused), or answered after it: each through
    # its partial index (models.py), never a walk over every case the desk keeps.
    unanswered = and_(UNANSWERED, Ticket.response_due_at < now,
                      Ticket.response_breached_at.is_(None), Ticket.response_paused_at.is_(None))

    def record(row: Any) -> dict[str, Any]:
        ticket_id, number, severity, due, answered = row
        data = {"severity": severity, "due_at": due.isoformat(),
                "answered_at": answered.isoformat() if answered else None}
        metrics.SLA_BREACHES.labels(severity=severity).inc()
        log.warning("response target missed", extra={"case": number, **data})
        return {"ticket_id": ticket_id, "kind": "sla_breached", "at": now, "data": data}

    told = sum(
        _claim_in_chunks(
            db, condition, {"response_breached_at": Ticket.response_due_at},
            (Ticket.number, Ticket.severity, Ticket.response_due_at, Ticket.first_response_at),
            chunk, record,
        )
        for condition in (unanswered, ANSWERED_LATE_UNTOLD)
    )
    waiting = and_(UNANSWERED, _ACTIVE, Ticket.response_paused_at.is_(None))
    with db.reader() as session:
        metrics.SLA_BREACHED_OPEN.set(session.scalar(
            select(func.count(Ticket.id)).where(waiting, Ticket.response_due_at < now)
        ) or 0)
        metrics.SLA_AT_RISK.set(session.scalar(
            select(func.count(Ticket.id)).where(
                waiting, Ticket.response_at_risk_at <= now, Ticket.response_due_at >= now
            )
        ) or 0)
    return told


def _shortest_stale_windows(cfg: EscalationConfig) -> dict[timedelta, list[str]]:
    """The automatic severities grouped by the least time without a desk update, and since
    the case's last escalation, before the sweep may escalate it (`automatic_decision`).

    High: `high_stale_after`, exactly. Medium: `medium_stale_business_days` business days
    are as many whole days in the tenant's zone, at least; one day less covers any DST
    change. Low priority is never escalated.
    """
    windows: dict[timedelta, list[str]] = {}
    for severity in cfg.automatic_severities:
        if severity in cfg.high_severities:
            window = cfg.high_stale_after
        elif severity in cfg.medium_severities:
            window = timedelta(days=max(cfg.medium_stale_business_days - 1, 0))
        else:
            continue
        windows.setdefault(window, []).append(severity)
    return windows


def escalation_candidates(
    session: Session, rules: Rules, now: datetime, *, after: int = 0, limit: int = CHUNK
) -> Sequence[int]:
    """Ids (above `after`, ascending, at most `limit`) of the open cases that can be due
    for an automatic escalation at `now`; `automatic_decision` decides about each.

    A case can be due only when neither its opening, a desk update (a staff message) nor
    its last escalation is more recent than its stale window: the escalation's clock runs
    from the later of them (escalation times grow with their sequence, the clock does
    not go back). Cases updated or escalated recently are not read at all.
    """
    messages, actions = TicketMessage.__table__.c, CaseAction.__table__.c
    due = []
    for window, severities in _shortest_stale_windows(rules.escalation).items():
        since = now - window
        due.append(and_(
            Ticket.severity.in_(severities),
            Ticket.created_at <= since,
            ~exists().where(messages.ticket_id == Ticket.id, messages.author_role == "staff",
                            messages.direction == "in", messages.created_at > since),
            ~exists().where(actions.ticket_id == Ticket.id, actions.kind == ACTION_ESCALATION,
                            actions.at > since),
        ))
    if not due:
        return []
    return session.scalars(
        select(Ticket.id)
        .where(Ticket.status.in_(ESCALATABLE_STATUSES), Ticket.id > after, or_(*due))
        .order_by(Ticket.id)
        .limit(limit)
    ).all()


def sweep_due_escalations(db: Database, rules: Rules, now: datetime, chunk: int = CHUNK) -> int:
    """Escalate every case due for an automatic escalation at `now`; returns how many.

    The cases that can be due are read a chunk at a time and decided in a read
    transaction; each one due is escalated in its own write transaction, where the
    sequence number is read first and the decision made again (`next_seq`).
    """
    done = 0
    after = 0
    while True:
        with db.reader() as session:
            ids = escalation_candidates(session, rules, now, after=after, limit=chunk)
            tickets = session.scalars(select(Ticket).where(Ticket.id.in_(ids))).all()
            due = sorted(
                ticket.id for ticket in tickets
                if automatic_decision(session, rules, ticket, rules.tenant(ticket.tenant_id),
                                      now) is not None
            )
        for ticket_id in due:
            with db.transaction() as session:
                ticket = session.get(Ticket, ticket_id)
                if ticket is None:
                    continue
                seq = next_seq(session, ticket.id, ACTION_ESCALATION)  # first: see next_seq
                tenant = rules.tenant(ticket.tenant_id)
                decision = automatic_decision(session, rules, ticket, tenant, now)
                if decision is None:
                    continue
                if escalate(session, rules, ticket, tenant, decision, now=now,
                            trigger="automatic", seq=seq) is not None:
                    done += 1
        if len(ids) < chunk:
            return done
        after = ids[-1]


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
            result.done["escalated"] = sweep_due_escalations(db, rules, now)
        elif kind == "warnings":
            result.done["at_risk"], result.done["breach_told"] = warn_responses(db, rules, now)
        elif kind == "closing":
            result.done["attempts"], result.done["closed"] = sweep_closing(db, rules, now)
        elif kind == "chase":
            result.done["chased"], result.done["chase_closed"] = sweep_chase(db, rules, now)
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
    """Every sweep once, in a fixed order (`mailbridge sweep --now`, tests)."""
    return {kind: run_sweep(kind, db, rules, now) for kind in SWEEP_KINDS}
