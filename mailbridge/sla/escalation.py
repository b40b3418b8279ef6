"""Escalation to the commercial executive and one level up (seeds 000, 001), on a case.

Two ways in, one set of rules (`rules.escalation`, read by `policy.escalation_decision`):
the sweep escalates cases of `automatic_severities` by itself (seed 000 §4: "si no se ha
actualizado un caso de prioridad alta en las últimas 24 horas"), and a customer who asks by
mail gets the decision and its reason. Each escalation is a `CaseAction` row (its unique
key makes it happen once even with several workers), a mail built on seed 000's
escalation template, and an `escalated` event on the case.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.outbound.compose import Mail, compose
from mailbridge.parse.fieldvalues import fold
from mailbridge.rules import Rules, Tenant
from mailbridge.service_levels.calendars import BusinessCalendar
from mailbridge.service_levels.config import EscalationConfig
from mailbridge.service_levels.policy import (
    CaseView,
    EscalationDecision,
    escalation_decision,
    format_when_es,
)
from mailbridge.sla.cases import last_desk_update, tenant_calendar
from mailbridge.tickets.models import (
    STATUS_IN_PROGRESS,
    STATUS_INCOMPLETE,
    STATUS_OPEN,
    CaseAction,
    Ticket,
    TicketEvent,
    TicketMessage,
)

log = logging.getLogger(__name__)

ACTION_ESCALATION = "escalation"
# A resolved case waits for the customer's confirmation; a closed one is done.
ESCALATABLE_STATUSES = (STATUS_OPEN, STATUS_INCOMPLETE, STATUS_IN_PROGRESS)


@dataclass(frozen=True)
class EscalationHistory:
    """A case's escalations so far; "without traction" = after the desk's last update."""

    count: int
    without_traction: int
    last_at: datetime | None
    last_level: str | None


def claim_action(
    session: Session, ticket_id: int, kind: str, seq: int, now: datetime, data: dict[str, Any]
) -> CaseAction | None:
    """Insert action `seq` of `kind` on the case, or None when another worker already did.

    A savepoint keeps the caller's transaction usable when the unique key says no; on
    PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    fails here, so exactly one worker goes on to send the mail.
    """
    action = CaseAction(ticket_id=ticket_id, kind=kind, seq=seq, at=now, data=data)
    try:
        with session.begin_nested():
            session.add(action)
            session.flush()
    except IntegrityError:
        log.info("case action already taken", extra={"ticket_id": ticket_id, "kind": kind,
                                                      "seq": seq})
        return None
    return action


def next_seq(session: Session, ticket_id: int, kind: str) -> int:
    """The sequence number the next action of `kind` on the case will claim.

    Read it before anything the decision depends on: under PostgreSQL's READ COMMITTED a
    stale value then collides with the other worker's row, and a fresh one means every
    later read in the transaction sees that worker's action too.
    """
    latest = session.scalar(
        select(CaseAction.seq)
        .where(CaseAction.ticket_id == ticket_id, CaseAction.kind == kind)
        .order_by(CaseAction.seq.desc())
        .limit(1)
    )
    return (latest or 0) + 1


def escalation_history(
    session: Session, ticket: Ticket, last_update: datetime
) -> EscalationHistory:
    actions = session.scalars(
        select(CaseAction)
        .where(CaseAction.ticket_id == ticket.id, CaseAction.kind == ACTION_ESCALATION)
        .order_by(CaseAction.seq)
    ).all()
    last = actions[-1] if actions else None
    return EscalationHistory(
        count=len(actions),
        without_traction=sum(1 for a in actions if a.at > last_update),
        last_at=last.at if last is not None else None,
        last_level=last.data.get("level") if last is not None else None,
    )


def case_calendar(rules: Rules, tenant: Tenant | None) -> BusinessCalendar:
    """The tenant's calendar; a tenant whose plan has no hours counts every day in its zone."""
    calendar = tenant_calendar(rules, tenant)
    if calendar is not None:
        return calendar
    zone = tenant.timezone if tenant is not None else "UTC"
    country = tenant.country if tenant is not None else None
    return BusinessCalendar.always_open(zone, country=country)


def level_address(rules: Rules, tenant: Tenant | None, level: str) -> str | None:
    """Who receives an escalation at `level`: its address, else the tenant's executive."""
    declared = rules.escalation.levels.get(level)
    if declared is not None and declared.address:
        return declared.address
    return tenant.executive if tenant is not None else None


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_field_text(v) for v in value if v)
    if isinstance(value, dict):
        return " – ".join(str(v) for v in value.values() if v)
    return str(value).strip()


def template_values(rules: Rules, ticket: Ticket, tenant: Tenant | None) -> dict[str, Any]:
    """Seed 000's escalation template lines, filled from the case's fields."""
    fields = ticket.fields or {}
    lines = rules.escalation.template_fields
    values: dict[str, Any] = {
        line: " / ".join(t for t in (_field_text(fields.get(key)) for key in keys) if t)
        for line, keys in lines.items()
    }
    contact: dict[str, Any] = {}
    for key in lines.get("contacto", ()):
        if isinstance(fields.get(key), dict):
            contact = fields[key]
            break
    values["contacto_nombre"] = contact.get("nombre") or ticket.sender_name or ""
    values["contacto_correo"] = contact.get("correo") or ticket.sender
    values["contacto_telefono"] = contact.get("telefono") or ""
    if not values.get("cliente") and tenant is not None:
        values["cliente"] = tenant.name
    values["empresa"] = tenant.name if tenant is not None else values.get("cliente", "")
    return values


def brief_statement(rules: Rules, ticket: Ticket) -> str:
    """The subject without the tenant ID: seed 000's "declaración breve de incidente"."""
    text = rules.tenant_regex.sub(" ", ticket.subject or "")
    return re.sub(r"\s+", " ", text).strip(" -–—:") or ticket.subject


def escalate(
    session: Session,
    rules: Rules,
    ticket: Ticket,
    tenant: Tenant | None,
    decision: EscalationDecision,
    *,
    now: datetime,
    trigger: str,
    seq: int,
    requested_by: str | None = None,
) -> CaseAction | None:
    """Escalate the case to the decision's level: claim `seq`, mail, event. None if not done.

    `trigger` is "automatic" (the sweep) or "customer" (asked by mail); `seq` comes from
    `next_seq`, read before the decision was made.
    """
    level = decision.target_level or rules.escalation.first_level
    to = level_address(rules, tenant, level)
    if to is None:
        log.error("no address for escalation level", extra={"case": ticket.number,
                                                            "level": level})
        return None
    last_update = last_desk_update(session, ticket)
    history = escalation_history(session, ticket, last_update)
    data = {"level": level, "to": to, "trigger": trigger, "reason": decision.reason_es,
            "requested_by": requested_by}
    action = claim_action(session, ticket.id, ACTION_ESCALATION, seq, now, data)
    if action is None:
        return None
    values = template_values(rules, ticket, tenant)
    zone = case_calendar(rules, tenant).zone
    compose(session, rules, Mail(
        kind="escalation", template="escalation_executive.txt.j2", to=[to], ticket=ticket,
        subject=f"{values['cliente']} – [{rules.desk.case_token} {ticket.number}] – "
                f"{brief_statement(rules, ticket)}",
        case_token=False,  # the seed-000 subject places the token itself
        context={"now": now, "values": values, "decision": decision, "level": level,
                 "level_label": rules.escalation.label(level), "trigger": trigger,
                 "seq": seq, "tenant": tenant, "requested_by": requested_by,
                 "previous": history.without_traction,
                 "opened_es": format_when_es(ticket.created_at, zone),
                 "updated_es": ("sin actualizaciones" if last_update == ticket.created_at
                                else format_when_es(last_update, zone))},
    ), now=now)
    session.add(TicketEvent(ticket_id=ticket.id, kind="escalated", at=now, data={
        "seq": seq, "level": level, "to": to, "trigger": trigger,
        "reason": decision.reason_es, "requested_by": requested_by,
    }))
    metrics.ESCALATIONS.labels(level=level, trigger=trigger).inc()
    log.warning("case escalated", extra={"case": ticket.number, "seq": seq, "level": level,
                                         "to": to, "trigger": trigger})
    return action


def next_automatic_from(
    last_escalated_at: datetime, severity: str, rules: EscalationConfig,
    calendar: BusinessCalendar,
) -> datetime:
    """After an automatic escalation without traction, the next one waits a stale window."""
    if severity in rules.high_severities:
        return last_escalated_at + rules.high_stale_after
    return calendar.add_business_days(last_escalated_at, rules.medium_stale_business_days)


def automatic_decision(
    session: Session, rules: Rules, ticket: Ticket, tenant: Tenant | None, now: datetime
) -> EscalationDecision | None:
    """The decision to escalate the case by itself now, or None.

    Automatic escalation covers `automatic_severities` (seed 000 §4: high priority). It
    repeats every stale window while the desk does not update the case; once the case went
    up to `next_level` without traction, the sweep leaves it there (people are on it).
    """
    cfg = rules.escalation
    if ticket.severity not in cfg.automatic_severities or ticket.status not in ESCALATABLE_STATUSES:
        return None
    calendar = case_calendar(rules, tenant)
    last_update = last_desk_update(session, ticket)
    history = escalation_history(session, ticket, last_update)
    view = CaseView(
        severity=ticket.severity,  # type: ignore[arg-type]
        created_at=ticket.created_at,
        last_update_at=last_update,
        calendar=calendar,
        escalation_count=history.count,
        escalations_without_traction=history.without_traction,
    )
    decision = escalation_decision(view, now, cfg)
    if not decision.eligible:
        return None
    if history.without_traction and history.last_at is not None:
        if history.last_level == cfg.next_level:
            return None
        if now < next_automatic_from(history.last_at, ticket.severity, cfg, calendar):
            return None
    return decision


# -- a customer asks ------------------------------------------------------------------------

def mentions(pattern: re.Pattern[str] | None, *texts: str) -> bool:
    return pattern is not None and any(pattern.search(fold(t or "")) for t in texts)


def rca_requested_at(session: Session, rules: Rules, ticket: Ticket) -> datetime | None:
    """When the customer first asked for an RCA on the case (their opening or a reply)."""
    pattern = rules.escalation.rca_regex()
    if pattern is None:
        return None
    if mentions(pattern, ticket.subject):
        return ticket.created_at
    messages = session.execute(
        select(TicketMessage.created_at, TicketMessage.body, TicketMessage.subject)
        .where(TicketMessage.ticket_id == ticket.id, TicketMessage.author_role == "customer",
               TicketMessage.direction == "in")
        .order_by(TicketMessage.id)
    ).all()
    for created_at, body, subject in messages:
        if mentions(pattern, body, subject):
            return created_at  # type: ignore[no-any-return]
    return None


def requested_decision(
    session: Session,
    rules: Rules,
    ticket: Ticket,
    tenant: Tenant | None,
    now: datetime,
    *,
    about_rca: bool,
) -> EscalationDecision:
    """The decision for a customer's escalation request at `now` (seed 000's criteria).

    An RCA request counts its 5 business days from when the RCA was first asked for on the
    case (this very mail when it is the first time).
    """
    calendar = case_calendar(rules, tenant)
    last_update = last_desk_update(session, ticket)
    history = escalation_history(session, ticket, last_update)
    rca_since = (rca_requested_at(session, rules, ticket) or now) if about_rca else None
    view = CaseView(
        severity=ticket.severity,  # type: ignore[arg-type]
        # CaseView.created_at is what the RCA wait counts from (policy rule 1).
        created_at=rca_since or ticket.created_at,
        last_update_at=last_update,
        calendar=calendar,
        is_rca_request=about_rca,
        escalation_count=history.count,
        escalations_without_traction=history.without_traction,
    )
    return escalation_decision(view, now, rules.escalation)
