"""Service levels: business calendars, response clocks and escalation/closing rules."""

from mailbridge.service_levels.calendars import BusinessCalendar, parse_hours_spec
from mailbridge.service_levels.clocks import (
    PREMIUM_SLA,
    PROFESIONAL_SLA,
    SEED_PLANS,
    ClockStatus,
    PlanSLA,
    Severity,
    at_risk_from,
    clock_started_at,
    clock_state,
    response_due,
)
from mailbridge.service_levels.policy import (
    CaseView,
    ClosingRules,
    EscalationDecision,
    EscalationRules,
    auto_close_at,
    auto_close_due,
    escalation_decision,
)

__all__ = [
    "PREMIUM_SLA",
    "PROFESIONAL_SLA",
    "SEED_PLANS",
    "BusinessCalendar",
    "CaseView",
    "ClockStatus",
    "ClosingRules",
    "EscalationDecision",
    "EscalationRules",
    "PlanSLA",
    "Severity",
    "at_risk_from",
    "auto_close_at",
    "auto_close_due",
    "clock_started_at",
    "clock_state",
    "escalation_decision",
    "parse_hours_spec",
    "response_due",
]
