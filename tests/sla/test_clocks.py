"""Response clocks: seed-003 targets per plan, due times, and the statuses staff see."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from mailbridge.service_levels.calendars import BusinessCalendar
from mailbridge.service_levels.clocks import (
    PREMIUM_SLA,
    PROFESIONAL_SLA,
    SEED_PLANS,
    STATUS_LABELS_ES,
    PlanSLA,
    at_risk_from,
    clock_started_at,
    clock_state,
    parse_duration,
    response_due,
)

BOGOTA = ZoneInfo("America/Bogota")
MANAGUA = ZoneInfo("America/Managua")
PREMIUM_CAL = PREMIUM_SLA.calendar(BOGOTA, country="CO")
PROFESIONAL_CAL = PROFESIONAL_SLA.calendar(BOGOTA, country="CO")


def bogota(d: int, hh: int = 0, mm: int = 0, month: int = 1) -> datetime:
    return datetime(2026, month, d, hh, mm, tzinfo=BOGOTA)


@pytest.mark.parametrize(
    ("plan", "severity", "target"),
    [
        (PREMIUM_SLA, "URGENTE", timedelta(hours=1)),
        (PREMIUM_SLA, "ALTA", timedelta(hours=2)),
        (PREMIUM_SLA, "MEDIA", timedelta(hours=6)),
        (PREMIUM_SLA, "BAJA", timedelta(hours=10)),
        (PROFESIONAL_SLA, "URGENTE", timedelta(hours=3)),
        (PROFESIONAL_SLA, "ALTA", timedelta(hours=4)),
        (PROFESIONAL_SLA, "MEDIA", timedelta(hours=9)),
        (PROFESIONAL_SLA, "BAJA", timedelta(hours=10)),
    ],
)
def test_seed_003_response_targets(plan: PlanSLA, severity: str, target: timedelta) -> None:
    assert plan.response_target(severity) == target


def test_seed_plans_hours() -> None:
    assert SEED_PLANS == {"premium": PREMIUM_SLA, "profesional": PROFESIONAL_SLA}
    assert (PREMIUM_SLA.hours, PROFESIONAL_SLA.hours) == ("7x24", "5x8")
    # Profesional 5x8: Monday–Friday 09:00–17:00 local.
    assert PROFESIONAL_CAL.is_open(bogota(13, 9)) and not PROFESIONAL_CAL.is_open(bogota(13, 17))


@pytest.mark.parametrize(
    ("plan", "calendar", "severity", "received", "due"),
    [
        # Premium 7x24 ignores nights, weekends and holidays.
        (PREMIUM_SLA, PREMIUM_CAL, "URGENTE", bogota(10, 23, 30), bogota(11, 0, 30)),
        (PREMIUM_SLA, PREMIUM_CAL, "BAJA", bogota(12, 2), bogota(12, 12)),  # Reyes Magos
        (PREMIUM_SLA, PREMIUM_CAL, "MEDIA", bogota(16, 22), bogota(17, 4)),
        # Profesional 5x8 Friday 16:30 URGENTE (3 h): ½ h on Friday, 2½ h on Monday.
        (PROFESIONAL_SLA, PROFESIONAL_CAL, "URGENTE", bogota(16, 16, 30), bogota(19, 11, 30)),
        # MEDIA 9 h is more than one 8-hour day.
        (PROFESIONAL_SLA, PROFESIONAL_CAL, "MEDIA", bogota(13, 10), bogota(14, 11)),
        # Received Saturday: the clock starts Monday 09:00, BAJA 10 h → Tuesday 11:00.
        (PROFESIONAL_SLA, PROFESIONAL_CAL, "BAJA", bogota(17, 11), bogota(20, 11)),
        # Received Sunday before Reyes Magos: starts Tuesday 09:00, ALTA 4 h → 13:00.
        (PROFESIONAL_SLA, PROFESIONAL_CAL, "ALTA", bogota(11, 15), bogota(13, 13)),
        # Received at night: starts next morning.
        (PROFESIONAL_SLA, PROFESIONAL_CAL, "URGENTE", bogota(13, 23), bogota(14, 12)),
    ],
)
def test_response_due(
    plan: PlanSLA, calendar: BusinessCalendar, severity: str, received: datetime, due: datetime
) -> None:
    assert response_due(received, severity, plan, calendar) == due
    assert response_due(received, severity, plan.response_targets, calendar) == due


def test_nicaraguan_tenant_on_profesional_skips_september_holidays() -> None:
    calendar = PROFESIONAL_SLA.calendar("America/Managua", country="NI")
    received = datetime(2026, 9, 11, 16, 0, tzinfo=MANAGUA)  # Friday, 1 h before closing
    due = response_due(received, "ALTA", PROFESIONAL_SLA, calendar)
    assert due == datetime(2026, 9, 16, 12, 0, tzinfo=MANAGUA)  # 14 and 15 Sep are holidays


@pytest.mark.parametrize(
    ("calendar", "received", "started"),
    [
        (PROFESIONAL_CAL, bogota(17, 11), bogota(19, 9)),  # Saturday → Monday 09:00
        (PROFESIONAL_CAL, bogota(13, 7, 45), bogota(13, 9)),  # before opening
        (PROFESIONAL_CAL, bogota(13, 10, 15), bogota(13, 10, 15)),  # open: starts on receipt
        (PREMIUM_CAL, bogota(17, 11), bogota(17, 11)),  # 7x24 starts on receipt
    ],
)
def test_clock_starts_at_the_next_business_opening(
    calendar: BusinessCalendar, received: datetime, started: datetime
) -> None:
    assert clock_started_at(received, calendar) == started


def test_unknown_severity_is_refused() -> None:
    with pytest.raises(ValueError, match="CRITICA"):
        response_due(bogota(13, 10), "CRITICA", PREMIUM_SLA, PREMIUM_CAL)


STARTED = datetime(2026, 1, 13, 15, 0, tzinfo=UTC)
DUE = STARTED + timedelta(hours=4)


@pytest.mark.parametrize(
    ("now", "stopped_at", "status"),
    [
        (STARTED, None, "a_tiempo"),
        (STARTED - timedelta(minutes=5), None, "a_tiempo"),
        (STARTED + timedelta(hours=2, minutes=59), None, "a_tiempo"),
        (STARTED + timedelta(hours=3), None, "en_riesgo"),  # 75 % of 4 h used
        (DUE, None, "en_riesgo"),  # due at 19:00 means answered by 19:00
        (DUE + timedelta(seconds=1), None, "vencido"),
        (DUE + timedelta(days=3), STARTED + timedelta(hours=1), "cumplido"),
        (DUE + timedelta(days=3), DUE, "cumplido"),
        (DUE + timedelta(days=3), DUE + timedelta(minutes=1), "vencido"),  # answered late
    ],
)
def test_clock_state(now: datetime, stopped_at: datetime | None, status: str) -> None:
    assert clock_state(now, DUE, STARTED, stopped_at) == status


def test_clock_state_at_risk_fraction_is_a_parameter() -> None:
    half_way = STARTED + timedelta(hours=2)
    assert clock_state(half_way, DUE, STARTED) == "a_tiempo"
    assert clock_state(half_way, DUE, STARTED, at_risk_fraction=0.5) == "en_riesgo"
    with pytest.raises(ValueError, match="at_risk_fraction"):
        clock_state(half_way, DUE, STARTED, at_risk_fraction=1.5)


def test_a_weekend_does_not_put_a_friday_case_at_risk_when_measured_in_business_time() -> None:
    received = bogota(16, 16, 30)  # Friday, Profesional URGENTE: 3 business hours
    due = response_due(received, "URGENTE", PROFESIONAL_SLA, PROFESIONAL_CAL)
    assert due == bogota(19, 11, 30)
    monday_early = bogota(19, 9, 30)  # 1 business hour used of 3
    assert clock_state(monday_early, due, received) == "en_riesgo"  # wall clock: 97 % gone
    assert clock_state(monday_early, due, received, calendar=PROFESIONAL_CAL) == "a_tiempo"
    assert at_risk_from(received, due, calendar=PROFESIONAL_CAL) == bogota(19, 10, 45)
    at_three_quarters = clock_state(bogota(19, 10, 45), due, received, calendar=PROFESIONAL_CAL)
    assert at_three_quarters == "en_riesgo"


def test_at_risk_from_without_calendar_is_wall_clock() -> None:
    assert at_risk_from(STARTED, DUE) == STARTED + timedelta(hours=3)


def test_status_labels_are_spanish() -> None:
    assert STATUS_LABELS_ES == {
        "a_tiempo": "A tiempo",
        "en_riesgo": "En riesgo",
        "vencido": "Vencido",
        "cumplido": "Cumplido",
        "en_pausa": "En pausa (esperando al cliente)",
    }


# PlanSLA as the lead embeds it in rules.yaml.
PROFESIONAL_YAML = """
hours: 5x8
opening: "09:00"
response_targets: {URGENTE: 3h, ALTA: 4 horas, MEDIA: 540m, BAJA: 10h}
"""


def test_plan_sla_from_yaml_equals_the_seed_plan() -> None:
    assert PlanSLA.model_validate(yaml.safe_load(PROFESIONAL_YAML)) == PROFESIONAL_SLA


def test_plan_sla_round_trips_through_json() -> None:
    for plan in SEED_PLANS.values():
        assert PlanSLA.model_validate(plan.model_dump(mode="json")) == plan


@pytest.mark.parametrize(
    ("text", "duration"),
    [("1h", timedelta(hours=1)), ("90m", timedelta(minutes=90)),
     ("1h30m", timedelta(minutes=90)), ("1,5 h", timedelta(minutes=90)),
     ("2 horas", timedelta(hours=2)), ("45 minutos", timedelta(minutes=45)),
     ("30s", timedelta(seconds=30)), ("10 días", timedelta(days=10)), ("2d", timedelta(days=2))],
)  # fmt: skip
def test_parse_duration(text: str, duration: timedelta) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"response_targets": {"URGENTE": "3h", "ALTA": "4h", "MEDIA": "9h"}}, "BAJA"),
        ({"response_targets": {"URGENTE": 3, "ALTA": "4h", "MEDIA": "9h", "BAJA": "10h"}},
         "write a unit"),
        ({"response_targets": {"URGENTE": "3 semanas", "ALTA": "4h", "MEDIA": "9h", "BAJA": "1h"}},
         "not a duration"),
        ({"response_targets": {"URGENTE": "0m", "ALTA": "4h", "MEDIA": "9h", "BAJA": "10h"}},
         "positive"),
        ({"response_targets": {"CRITICA": "1h", "URGENTE": "3h", "ALTA": "4h", "MEDIA": "9h",
                               "BAJA": "10h"}}, "URGENTE"),
        ({"hours": "8x8"}, "opening days"),
        ({"hours": "24/7"}, "7x24"),
        ({"opening": 540}, "in quotes"),  # YAML 1.1 reads an unquoted 9:00 as 540
        ({"horario": "5x8"}, "Extra inputs"),
    ],
)  # fmt: skip
def test_plan_sla_errors_say_what_is_wrong(change: dict, message: str) -> None:
    data = yaml.safe_load(PROFESIONAL_YAML) | change
    with pytest.raises(ValidationError, match=message):
        PlanSLA.model_validate(data)


def test_plan_opening_moves_the_office_day() -> None:
    early = PlanSLA.model_validate(yaml.safe_load(PROFESIONAL_YAML) | {"opening": "07:30"})
    assert early.opening == time(7, 30)
    calendar = early.calendar(BOGOTA, country="CO")
    assert calendar.is_open(bogota(13, 7, 30)) and not calendar.is_open(bogota(13, 15, 30))
