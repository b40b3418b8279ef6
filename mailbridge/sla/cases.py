"""A case's service level: its tenant's calendar, its response clock, its SLA JSON and status."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from mailbridge.rules import Rules, Tenant
from mailbridge.service_levels.calendars import BusinessCalendar, require_aware
from mailbridge.service_levels.clocks import (
    STATUS_LABELS_ES,
    ClockStatus,
    PlanSLA,
    at_risk_from,
    clock_started_at,
    response_due,
)
from mailbridge.tickets.models import (
    ACKED_LATE,
    CLOCK_RUNNING,
    STATUS_CLOSED,
    STATUS_RESOLVED,
    UNANSWERED,
    CaseAction,
    SchedulerJob,
    Ticket,
    TicketMessage,
)

AT_RISK_FRACTION = 0.75  # the default of rules.yaml desk.sla_warning_share

_calendar_lock = threading.Lock()
# (id of the rules object, tenant id) → (the rules object, its calendar). Holding the
# rules object keeps its id from being reused while the entry lives.
_calendars: dict[tuple[int, str], tuple[Rules, BusinessCalendar]] = {}


def plan_sla(rules: Rules, tenant: Tenant | None) -> PlanSLA | None:
    """The tenant's plan's service levels, None when the tenant or its plan has none."""
    if tenant is None:
        return None
    plan = rules.plans.get(tenant.plan)
    return plan.sla if plan is not None else None


def tenant_calendar(rules: Rules, tenant: Tenant | None) -> BusinessCalendar | None:
    """The tenant's business calendar: plan hours, its zone, country holidays, closed dates."""
    sla = plan_sla(rules, tenant)
    if sla is None or tenant is None:
        return None
    key = (id(rules), tenant.id)
    with _calendar_lock:
        cached = _calendars.get(key)
        if cached is not None and cached[0] is rules:
            return cached[1]
        calendar = sla.calendar(
            tenant.timezone,
            country=tenant.country,
            subdivision=tenant.subdivision,
            closed_dates=tenant.closed_dates,
        )
        if len(_calendars) > 512:  # many reloads: start over
            _calendars.clear()
        _calendars[key] = (rules, calendar)
        return calendar


def start_response_clock(
    ticket: Ticket, rules: Rules, tenant: Tenant | None, received_at: datetime
) -> None:
    """Set the case's response clock from its severity and its tenant's plan (seed 003).

    Received outside the contracted hours, the clock starts at the next opening. A tenant
    whose plan declares no `sla` gets no clock.
    """
    sla = plan_sla(rules, tenant)
    calendar = tenant_calendar(rules, tenant)
    if sla is None or calendar is None:
        return
    started = clock_started_at(received_at, calendar)
    due = response_due(received_at, ticket.severity, sla, calendar)
    ticket.response_started_at = started
    ticket.response_due_at = due
    ticket.response_at_risk_at = at_risk_from(started, due, rules.desk.sla_warning_share,
                                              calendar)
    ticket.response_breached_at = None
    ticket.response_paused_at = None


def pause_response_clock(ticket: Ticket, now: datetime) -> None:
    """The desk waits on the customer: a running response clock stops counting."""
    if ticket.response_due_at is not None and ticket.first_response_at is None \
            and ticket.response_paused_at is None:
        ticket.response_paused_at = now


def resume_response_clock(ticket: Ticket, rules: Rules, now: datetime) -> None:
    """The wait is over: the clock goes on with the (business) time it had left."""
    paused = ticket.response_paused_at
    if paused is None:
        return
    ticket.response_paused_at = None
    calendar = tenant_calendar(rules, rules.tenant(ticket.tenant_id))
    for name in ("response_due_at", "response_at_risk_at"):
        at = getattr(ticket, name)
        if at is None:
            continue
        if calendar is None:
            setattr(ticket, name, at + (now - paused))
        elif at > paused:
            left = calendar.business_time_between(paused, at)
            setattr(ticket, name, calendar.add_business_time(calendar.next_opening(now), left))
        else:  # already past when it paused: it stays past
            setattr(ticket, name, now)


def response_state(ticket: Ticket, now: datetime) -> ClockStatus | None:
    """The response clock's status at `now`, None when the case has no clock.

    Equal to `clocks.clock_state` with the tenant's calendar: the at-risk instant was
    computed in business time when the clock was set, so no calendar is needed here.
    """
    due = ticket.response_due_at
    if due is None:
        return None
    if ticket.response_paused_at is not None and ticket.first_response_at is None:
        return "en_pausa"
    if ticket.first_response_at is not None:
        return "cumplido" if ticket.first_response_at <= due else "vencido"
    now = require_aware(now, "now")
    if now > due:
        return "vencido"
    at_risk = ticket.response_at_risk_at or due
    return "en_riesgo" if now >= at_risk else "a_tiempo"


def clock_state_is(state: str, now: datetime) -> ColumnElement[bool]:
    """SQL for "the response clock's state at `now` is `state`" (`response_state` in SQL),
    for listing cases by SLA state."""
    t = Ticket
    running = CLOCK_RUNNING
    # The states of a running clock start from its partial index, as a subquery: with
    # the terms beside the others, SQLite walked the tenant's cases instead (20-38 ms
    # at 100,000 cases -> 1-2 ms). "vencido" and "cumplido" include the answered
    # history: they have no such bound.
    ticking = t.id.in_(select(t.id).where(running).scalar_subquery())
    conditions: dict[str, ColumnElement[bool]] = {
        "en_pausa": and_(ticking, running, t.response_paused_at.is_not(None)),
        "vencido": or_(and_(running, t.response_paused_at.is_(None), t.response_due_at < now),
                       t.first_response_at > t.response_due_at),
        "en_riesgo": and_(ticking, running, t.response_paused_at.is_(None),
                          t.response_due_at >= now,
                          func.coalesce(t.response_at_risk_at, t.response_due_at) <= now),
        "a_tiempo": and_(ticking, running, t.response_paused_at.is_(None),
                         func.coalesce(t.response_at_risk_at, t.response_due_at) > now),
        "cumplido": t.first_response_at <= t.response_due_at,
    }
    if state not in conditions:
        raise ValueError(f"unknown SLA state {state!r} (known: {', '.join(conditions)})")
    return conditions[state]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sla_json(session: Session, ticket: Ticket, now: datetime) -> dict[str, Any]:
    """The `sla` object of the ticket JSON: the response clock, escalations, closing."""
    state = response_state(ticket, now)
    actions = session.scalars(
        select(CaseAction).where(CaseAction.ticket_id == ticket.id).order_by(CaseAction.id)
    ).all()
    attempts = [
        a for a in actions
        if a.kind == "closing_attempt" and ticket.resolved_at is not None
        and a.at >= ticket.resolved_at
    ]  # fmt: skip
    return {
        "response_started_at": _iso(ticket.response_started_at),
        "response_due_at": _iso(ticket.response_due_at),
        "at_risk_at": _iso(ticket.response_at_risk_at),
        "first_response_at": _iso(ticket.first_response_at),
        "state": state,
        "state_label": STATUS_LABELS_ES[state] if state is not None else None,
        "breached_at": _iso(ticket.response_breached_at),
        "escalations": [
            {
                "seq": a.seq,
                "at": _iso(a.at),
                "level": a.data.get("level"),
                "to": a.data.get("to"),
                "trigger": a.data.get("trigger"),
            }
            for a in actions
            if a.kind == "escalation"
        ],
        "closing": (
            {"resolved_at": _iso(ticket.resolved_at), "attempts": [_iso(a.at) for a in attempts]}
            if ticket.resolved_at is not None
            else None
        ),
    }


def last_desk_update(session: Session, ticket: Ticket) -> datetime:
    """When the desk last updated the case: its latest staff message, else its opening.

    Seed 000 counts "no se ha actualizado" from the support side: a customer's reply or an
    escalation is not an update.
    """
    latest = session.scalar(
        select(TicketMessage.created_at)
        .where(
            TicketMessage.ticket_id == ticket.id,
            TicketMessage.author_role == "staff",
            TicketMessage.direction == "in",
        )
        .order_by(TicketMessage.created_at.desc())
        .limit(1)
    )
    return max(ticket.created_at, latest) if latest is not None else ticket.created_at


def last_customer_message_at(
    session: Session, ticket: Ticket, since: datetime | None = None
) -> datetime | None:
    """When the case's customer last wrote (optionally only after `since`)."""
    stmt = select(TicketMessage.created_at).where(
        TicketMessage.ticket_id == ticket.id,
        TicketMessage.author_role == "customer",
        TicketMessage.direction == "in",
    )
    if since is not None:
        stmt = stmt.where(TicketMessage.created_at > since)
    return session.scalar(stmt.order_by(TicketMessage.created_at.desc()).limit(1))


def sla_status(session: Session, now: datetime, limit: int = 100) -> dict[str, Any]:
    """What `mailbridge status` shows about service levels and the SLA timers."""
    waiting = and_(
        UNANSWERED,  # the partial index of unanswered cases (models.py)
        ~Ticket.status.in_((STATUS_RESOLVED, STATUS_CLOSED)),
        Ticket.response_due_at.is_not(None),
    )

    def cases(*where: Any) -> list[dict[str, Any]]:
        rows = session.execute(
            select(Ticket.number, Ticket.severity, Ticket.response_due_at)
            .where(waiting, *where)
            .order_by(Ticket.response_due_at)
            .limit(limit)
        ).all()
        return [{"case": n, "severity": s, "due_at": _iso(d)} for n, s, d in rows]

    jobs = session.execute(
        select(SchedulerJob.id, SchedulerJob.next_run_time).order_by(SchedulerJob.id)
    ).all()
    return {
        "response_breached": cases(Ticket.response_due_at < now),
        "response_at_risk": cases(Ticket.response_at_risk_at <= now, Ticket.response_due_at >= now),
        "awaiting_confirmation": session.scalar(
            select(func.count(Ticket.id)).where(Ticket.status == STATUS_RESOLVED)
        ) or 0,
        "timers": [
            {"job": job, "next_run_at": (datetime.fromtimestamp(ts, UTC).isoformat()
                                         if ts is not None else None)}
            for job, ts in jobs
        ],
    }


def acks_sent_late(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """Cases whose acknowledgement left after its deadline (newest first)."""
    rows = session.execute(
        select(Ticket.number, Ticket.ack_due_at, Ticket.acked_at)
        .where(ACKED_LATE)  # its partial index (models.py)
        .order_by(Ticket.acked_at.desc())
        .limit(limit)
    ).all()
    return [{"case": n, "due_at": _iso(d), "sent_at": _iso(s)} for n, d, s in rows]
