"""Response clocks: each plan's targets per severity, due times and the status staff see."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator

from mailbridge.service_levels.calendars import BusinessCalendar, parse_hours_spec, require_aware

Severity = Literal["URGENTE", "ALTA", "MEDIA", "BAJA"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
# "en_pausa": the desk waits on the customer (esperando_cliente) and the clock stops.
ClockStatus = Literal["a_tiempo", "en_riesgo", "vencido", "cumplido", "en_pausa"]
STATUS_LABELS_ES: dict[ClockStatus, str] = {
    "a_tiempo": "A tiempo",
    "en_riesgo": "En riesgo",
    "vencido": "Vencido",
    "cumplido": "Cumplido",
    "en_pausa": "En pausa (esperando al cliente)",
}

_DURATION_PART_RE = re.compile(
    r"(\d+(?:[.,]\d+)?)\s*(d[ií]as?|d|horas?|hrs?|h|minutos?|mins?|m|segundos?|segs?|s)(?![a-z])",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"d": 86_400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any) -> Any:
    """Read "1h", "90m", "1h30m", "2 horas" or "10 días" as a timedelta (clock time).

    timedelta and ISO 8601 ("PT1H") pass on to pydantic. A bare number is refused: in a
    rules file `URGENTE: 1` could mean an hour or a second. A day is 24 clock hours, never
    a business day.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool | int | float):
        raise ValueError(f"write a unit with the duration, e.g. '1h' or '90m', not {value!r}")
    if not isinstance(value, str):
        return value  # let pydantic report the wrong type
    text = value.strip()
    if text.upper().startswith("P"):
        return text  # ISO 8601 (what model_dump(mode="json") writes): pydantic parses it
    position, total = 0, 0.0
    for match in _DURATION_PART_RE.finditer(text):
        if text[position : match.start()].strip():
            break
        total += float(match.group(1).replace(",", ".")) * _UNIT_SECONDS[match.group(2)[0].lower()]
        position = match.end()
    if position == 0 or text[position:].strip():
        raise ValueError(f"not a duration: {value!r} (write e.g. '1h', '90m' or '1h30m')")
    return timedelta(seconds=total)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class PlanSLA(BaseModel):
    """A support plan's service hours and response targets, as declared in rules.yaml.

    `hours` is the plan's "horas de atención" ("7x24", "5x8"); `opening` is when an
    office-hours plan opens each day. `response_targets` names every severity.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hours: str
    opening: time = time(9)
    response_targets: dict[Severity, Duration]

    @field_validator("hours")
    @classmethod
    def _hours_spec(cls, value: str) -> str:
        parse_hours_spec(value)
        return value.strip()

    @field_validator("opening", mode="before")
    @classmethod
    def _opening_is_a_clock_time(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted 9:00 as the number 540.
            raise ValueError("write the opening time in quotes, e.g. opening: '09:00'")
        return value

    @field_validator("response_targets")
    @classmethod
    def _every_severity(cls, value: dict[Severity, timedelta]) -> dict[Severity, timedelta]:
        missing = [severity for severity in SEVERITIES if severity not in value]
        if missing:
            raise ValueError(f"no response target for {', '.join(missing)}")
        for severity, target in value.items():
            if target <= timedelta(0):
                raise ValueError(f"the {severity} response target must be positive")
        return value

    def calendar(
        self,
        zone: str | ZoneInfo,
        *,
        country: str | None = None,
        subdivision: str | None = None,
        closed_dates: Iterable[date] = (),
    ) -> BusinessCalendar:
        """This plan's hours in a tenant's zone, with the tenant's country holidays."""
        return BusinessCalendar.from_spec(
            self.hours,
            zone,
            opening=self.opening,
            country=country,
            subdivision=subdivision,
            closed_dates=closed_dates,
        )

    def response_target(self, severity: str) -> timedelta:
        return _target_for(self.response_targets, severity)


# Seed 003 ("Planes de soporte y tiempo de respuesta SLA").
PREMIUM_SLA = PlanSLA.model_validate(
    {
        "hours": "7x24",
        "response_targets": {"URGENTE": "1h", "ALTA": "2h", "MEDIA": "6h", "BAJA": "10h"},
    }
)
PROFESIONAL_SLA = PlanSLA.model_validate(
    {
        "hours": "5x8",
        "opening": "09:00",
        "response_targets": {"URGENTE": "3h", "ALTA": "4h", "MEDIA": "9h", "BAJA": "10h"},
    }
)
SEED_PLANS: dict[str, PlanSLA] = {"premium": PREMIUM_SLA, "profesional": PROFESIONAL_SLA}


def _target_for(targets: Mapping[Severity, timedelta], severity: str) -> timedelta:
    for known, target in targets.items():
        if known == severity:
            return target
    raise ValueError(f"no response target for severity {severity!r}")


def clock_started_at(received_at: datetime, calendar: BusinessCalendar) -> datetime:
    """When the response clock starts: on receipt if the desk is open, else at its next opening.

    Seed 003: outside the contracted hours a case "será atendido en el día siguiente hábil
    ... y de igual forma será a partir de ese momento cuando se considere oficialmente como
    abierta la llamada".
    """
    return calendar.next_opening(received_at)


def response_due(
    received_at: datetime,
    severity: str,
    targets: Mapping[Severity, timedelta] | PlanSLA,
    calendar: BusinessCalendar,
) -> datetime:
    """When the first response is due (UTC): the severity's target in the calendar's hours."""
    table = targets.response_targets if isinstance(targets, PlanSLA) else targets
    return calendar.add_business_time(received_at, _target_for(table, severity))


def _elapsed(a: datetime, b: datetime, calendar: BusinessCalendar | None) -> timedelta:
    return calendar.business_time_between(a, b) if calendar is not None else b - a


def at_risk_from(
    started: datetime,
    due: datetime,
    at_risk_fraction: float = 0.75,
    calendar: BusinessCalendar | None = None,
) -> datetime:
    """The instant a running clock turns "en_riesgo" (for the scheduler to wake up at)."""
    _check_fraction(at_risk_fraction)
    budget = _elapsed(started, due, calendar)
    if budget <= timedelta(0):
        return require_aware(started, "started")
    used = budget * at_risk_fraction
    if calendar is not None:
        return calendar.add_business_time(started, used)
    return require_aware(started, "started") + used


def _check_fraction(at_risk_fraction: float) -> None:
    if not 0 < at_risk_fraction <= 1:
        raise ValueError(f"at_risk_fraction must be in (0, 1], got {at_risk_fraction}")


def clock_state(
    now: datetime,
    due: datetime,
    started: datetime,
    stopped_at: datetime | None = None,
    at_risk_fraction: float = 0.75,
    *,
    calendar: BusinessCalendar | None = None,
) -> ClockStatus:
    """The status staff see for a response clock.

    "cumplido": answered by `due`; "vencido": past `due` without an answer, or answered late;
    "en_riesgo": `at_risk_fraction` of the time between `started` and `due` is used up;
    "a_tiempo": otherwise. With a `calendar` the fraction is measured in business time, so
    a weekend does not push a Friday-evening case into "en_riesgo" before Monday's opening.
    """
    _check_fraction(at_risk_fraction)
    now, due = require_aware(now, "now"), require_aware(due, "due")
    started = require_aware(started, "started")
    if stopped_at is not None:
        return "cumplido" if require_aware(stopped_at, "stopped_at") <= due else "vencido"
    if now > due:
        return "vencido"
    budget = _elapsed(started, due, calendar)
    if budget <= timedelta(0):
        return "en_riesgo"
    used = _elapsed(started, now, calendar)
    return "en_riesgo" if used >= budget * at_risk_fraction else "a_tiempo"
