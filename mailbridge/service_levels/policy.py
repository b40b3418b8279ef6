"""Escalation eligibility and auto-closing rules (seeds 000, 001, 003), as pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mailbridge.service_levels.calendars import BusinessCalendar, require_aware
from mailbridge.service_levels.clocks import Duration, Severity

_WEEKDAYS_ES = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
_MONTHS_ES = (
    "enero", "febrero", "marzo", "abril", "mayo", "junio",
    "julio", "agosto", "septiembre", "octubre", "noviembre", "diciembre",
)  # fmt: skip


def format_when_es(at: datetime, zone: ZoneInfo) -> str:
    """'lunes 12 de enero de 2026 a las 09:30 (America/Bogota)': a date a customer can read."""
    local = require_aware(at).astimezone(zone)
    return (
        f"{_WEEKDAYS_ES[local.weekday()]} {local.day} de {_MONTHS_ES[local.month - 1]} "
        f"de {local.year} a las {local:%H:%M} ({zone.key})"
    )


class EscalationRules(BaseModel):
    """Escalation thresholds; the defaults are the seed values, rules.yaml may override them.

    Severities in `high_severities` are "prioridad alta", those in `medium_severities`
    "impacto medio"; every other severity is low priority and never eligible.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    high_severities: tuple[Severity, ...] = ("URGENTE", "ALTA")
    medium_severities: tuple[Severity, ...] = ("MEDIA",)
    # Seed 000 §4: "no se ha actualizado ... en las últimas 24 horas" (clock hours).
    high_stale_after: Duration = timedelta(hours=24)
    # Seed 000 §5 / seed 001: "durante 3 días laborables".
    medium_stale_business_days: int = Field(default=3, ge=0)
    # Seed 000 §1: RCA "a menos que hayan pasado 5 días laborables".
    rca_min_business_days: int = Field(default=5, ge=0)
    # Seed 001: "se ha escalado más de dos veces y no ha ganado ninguna tracción".
    max_escalations_without_traction: int = Field(default=2, ge=0)
    first_level: str = "ejecutivo_comercial"
    next_level: str = "gerencia"
    level_labels_es: dict[str, str] = Field(
        default_factory=lambda: {
            "ejecutivo_comercial": "su ejecutivo comercial",
            "gerencia": "la gerencia de servicio",
        }
    )

    @model_validator(mode="after")
    def _consistent(self) -> EscalationRules:
        both = set(self.high_severities) & set(self.medium_severities)
        if both:
            raise ValueError(f"{', '.join(sorted(both))} cannot be both high and medium")
        if self.high_stale_after <= timedelta(0):
            raise ValueError("high_stale_after must be positive")
        return self

    def label(self, level: str) -> str:
        return self.level_labels_es.get(level, level)


class ClosingRules(BaseModel):
    """Seed 003: closed after `attempts` unanswered contact attempts over `period`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=3, ge=1)
    period: Duration = timedelta(days=10)  # "durante un período de diez días": calendar days


DEFAULT_ESCALATION_RULES = EscalationRules()
DEFAULT_CLOSING_RULES = ClosingRules()


@dataclass(frozen=True, kw_only=True)
class CaseView:
    """What escalation rules need to know about a case; times are aware datetimes."""

    severity: Severity
    created_at: datetime
    last_update_at: datetime
    calendar: BusinessCalendar
    is_rca_request: bool = False
    escalation_count: int = 0
    escalations_without_traction: int = 0

    def __post_init__(self) -> None:
        require_aware(self.created_at, "created_at")
        require_aware(self.last_update_at, "last_update_at")
        if not 0 <= self.escalations_without_traction <= self.escalation_count:
            raise ValueError(
                "escalations_without_traction must be between 0 and escalation_count, got "
                f"{self.escalations_without_traction} of {self.escalation_count}"
            )


@dataclass(frozen=True)
class EscalationDecision:
    """The answer to "can this case be escalated now?", with the reason the customer reads.

    `eligible_from` is when a case that is not eligible yet becomes eligible if nothing
    changes (None when waiting will not help): the scheduler's wake-up time.
    """

    eligible: bool
    target_level: str | None
    reason_es: str
    eligible_from: datetime | None = None


def _target_level(case: CaseView, rules: EscalationRules) -> str:
    if case.escalations_without_traction > rules.max_escalations_without_traction:
        return rules.next_level
    return rules.first_level


def _eligible(case: CaseView, rules: EscalationRules, why: str) -> EscalationDecision:
    level = _target_level(case, rules)
    return EscalationDecision(True, level, f"{why}; el caso se escala a {rules.label(level)}.")


def escalation_decision(
    case: CaseView, now: datetime, rules: EscalationRules = DEFAULT_ESCALATION_RULES
) -> EscalationDecision:
    """Whether `case` may be escalated at `now`, to which level, and why (in Spanish).

    Rules apply in this order, the first that matches decides:
    1. an RCA request waits `rca_min_business_days` from its creation; after that it is
       eligible whatever its priority (the RCA delivery standard was missed);
    2. low priority (neither high nor medium) is never eligible: ask for a priority change;
    3. more than `max_escalations_without_traction` escalations without traction: eligible
       at once, one level up (`next_level`);
    4. high priority: eligible after `high_stale_after` (clock hours) without an update;
    5. medium impact: eligible after `medium_stale_business_days` business days without one.
    Eligible cases go to `first_level` unless rule 3's count is exceeded.
    """
    now = require_aware(now, "now")
    zone = case.calendar.zone

    if case.is_rca_request:
        days = rules.rca_min_business_days
        rca_from = case.calendar.add_business_days(case.created_at, days)
        if now < rca_from:
            return EscalationDecision(
                False,
                None,
                "Una solicitud de RCA no puede escalarse antes de que pasen "
                f"{days} días laborables, según nuestro estándar de nivel de servicio para "
                "la entrega de RCA. Podrá escalarla a partir del "
                f"{format_when_es(rca_from, zone)}.",
                rca_from,
            )
        return _eligible(
            case,
            rules,
            f"Han pasado {days} días laborables desde su solicitud de RCA sin que se haya "
            "entregado",
        )

    if case.severity not in rules.high_severities + rules.medium_severities:
        return EscalationDecision(
            False,
            None,
            "Los casos de baja prioridad no son aptos para escalamiento. Si el impacto del "
            "caso ha aumentado, solicite el cambio a impacto medio mediante una nota de "
            "trabajo en el ticket del caso; si requiere prioridad alta, comuníquese con "
            "nuestros números de contacto corporativos.",
        )

    if case.escalations_without_traction > rules.max_escalations_without_traction:
        return _eligible(
            case,
            rules,
            f"El caso se ha escalado {case.escalations_without_traction} veces sin avances",
        )

    updated = format_when_es(case.last_update_at, zone)
    if case.severity in rules.high_severities:
        stale_from = require_aware(case.last_update_at) + rules.high_stale_after
        hours = _hours_text(rules.high_stale_after)
        if now >= stale_from:
            return _eligible(
                case,
                rules,
                f"El caso de prioridad alta no se ha actualizado en las últimas {hours} "
                f"(última actualización: {updated})",
            )
        return EscalationDecision(
            False,
            None,
            f"El caso de prioridad alta se actualizó por última vez el {updated}. Si no "
            f"recibe una actualización en {hours}, podrá escalarlo a "
            f"{rules.label(_target_level(case, rules))} a partir del "
            f"{format_when_es(stale_from, zone)}.",
            stale_from,
        )

    days = rules.medium_stale_business_days
    stale_from = case.calendar.add_business_days(case.last_update_at, days)
    if now >= stale_from:
        return _eligible(
            case,
            rules,
            f"El caso de impacto medio no se ha actualizado durante {days} días laborables "
            f"(última actualización: {updated})",
        )
    return EscalationDecision(
        False,
        None,
        f"El caso de impacto medio se actualizó por última vez el {updated}. Será apto para "
        f"escalamiento si no se actualiza durante {days} días laborables, es decir, a partir "
        f"del {format_when_es(stale_from, zone)}. Si el impacto aumentó, solicite al "
        "propietario del caso un cambio de prioridad.",
        stale_from,
    )


def _hours_text(duration: timedelta) -> str:
    hours = duration.total_seconds() / 3600
    shown = f"{hours:g}".replace(".", ",")
    return f"{shown} hora" if hours == 1 else f"{shown} horas"


def _unanswered(
    attempts: Iterable[datetime], customer_replied_at: datetime | None
) -> list[datetime]:
    replied = None
    if customer_replied_at is not None:
        replied = require_aware(customer_replied_at, "customer_replied_at")
    times = sorted(require_aware(attempt, "attempt") for attempt in attempts)
    return [attempt for attempt in times if replied is None or attempt > replied]


def auto_close_at(
    attempts: Iterable[datetime],
    *,
    customer_replied_at: datetime | None = None,
    rules: ClosingRules = DEFAULT_CLOSING_RULES,
) -> datetime | None:
    """When the case closes for lack of answer, given the contact attempts made so far.

    Attempts at or before the customer's last reply were answered and do not count. None
    while fewer than `rules.attempts` unanswered attempts exist.
    """
    pending = _unanswered(attempts, customer_replied_at)
    if len(pending) < rules.attempts:
        return None
    return max(pending[rules.attempts - 1], pending[0] + rules.period)


def auto_close_due(
    attempts: list[datetime],
    now: datetime,
    *,
    customer_replied_at: datetime | None = None,
    rules: ClosingRules = DEFAULT_CLOSING_RULES,
) -> bool:
    """Seed 003: three contact attempts over ten days without an answer close the case."""
    now = require_aware(now, "now")
    made = [attempt for attempt in attempts if require_aware(attempt, "attempt") <= now]
    close_at = auto_close_at(made, customer_replied_at=customer_replied_at, rules=rules)
    return close_at is not None and now >= close_at
