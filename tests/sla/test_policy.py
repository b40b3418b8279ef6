"""Escalation eligibility (seeds 000, 001) and auto-closing (seed 003), time driven by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from mailbridge.service_levels.calendars import BusinessCalendar
from mailbridge.service_levels.policy import (
    CaseView,
    ClosingRules,
    EscalationRules,
    auto_close_at,
    auto_close_due,
    escalation_decision,
    format_when_es,
)

BOGOTA = ZoneInfo("America/Bogota")
OFFICE = BusinessCalendar.from_spec("5x8", BOGOTA, country="CO")
ALWAYS = BusinessCalendar.from_spec("7x24", BOGOTA, country="CO")


def bogota(d: int, hh: int = 0, mm: int = 0) -> datetime:
    """A moment in January 2026, Bogotá time (Monday 12 is Reyes Magos, a holiday)."""
    return datetime(2026, 1, d, hh, mm, tzinfo=BOGOTA)


def case(
    severity: str,
    last_update_at: datetime,
    calendar: BusinessCalendar = OFFICE,
    **extra: object,
) -> CaseView:
    return CaseView(
        severity=severity,  # type: ignore[arg-type]
        created_at=extra.pop("created_at", bogota(5, 10)),  # type: ignore[arg-type]
        last_update_at=last_update_at,
        calendar=calendar,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("view", "now", "eligible", "target", "eligible_from"),
    [
        # Seed 000 §4: high priority without update for 24 h → commercial executive.
        (case("URGENTE", bogota(13, 10)), bogota(14, 9, 59), False, None, bogota(14, 10)),
        (case("URGENTE", bogota(13, 10)), bogota(14, 10), True, "ejecutivo_comercial", None),
        # 24 clock hours: a weekend counts.
        (case("ALTA", bogota(16, 10)), bogota(17, 10), True, "ejecutivo_comercial", None),
        # Seed 000 §5: medium impact without update for 3 business days.
        (case("MEDIA", bogota(14, 10)), bogota(16, 10), False, None, bogota(19, 10)),
        (case("MEDIA", bogota(14, 10)), bogota(19, 9, 59), False, None, bogota(19, 10)),
        (case("MEDIA", bogota(14, 10)), bogota(19, 10), True, "ejecutivo_comercial", None),
        # …skipping the weekend and Reyes Magos: Thu 8 → Wed 14.
        (case("MEDIA", bogota(8, 10)), bogota(13, 10), False, None, bogota(14, 10)),
        (case("MEDIA", bogota(8, 10)), bogota(14, 10), True, "ejecutivo_comercial", None),
        # Premium 7x24 is always open, but business days still skip weekend and holiday.
        (case("MEDIA", bogota(8, 10), ALWAYS), bogota(13, 10), False, None, bogota(14, 10)),
        # Seed 000 §6: low priority is never eligible, however stale.
        (case("BAJA", bogota(1, 10)), bogota(31, 10), False, None, None),
    ],
)
def test_escalation_by_priority_and_staleness(
    view: CaseView,
    now: datetime,
    eligible: bool,
    target: str | None,
    eligible_from: datetime | None,
) -> None:
    decision = escalation_decision(view, now)
    assert (decision.eligible, decision.target_level) == (eligible, target)
    assert decision.eligible_from == eligible_from


def test_high_priority_reasons_are_spanish_with_local_dates() -> None:
    waiting = escalation_decision(case("URGENTE", bogota(13, 10)), bogota(13, 18))
    assert waiting.reason_es == (
        "El caso de prioridad alta se actualizó por última vez el martes 13 de enero de 2026 "
        "a las 10:00 (America/Bogota). Si no recibe una actualización en 24 horas, podrá "
        "escalarlo a su ejecutivo comercial a partir del miércoles 14 de enero de 2026 a las "
        "10:00 (America/Bogota)."
    )
    eligible = escalation_decision(case("URGENTE", bogota(13, 10)), bogota(14, 12))
    assert eligible.reason_es == (
        "El caso de prioridad alta no se ha actualizado en las últimas 24 horas (última "
        "actualización: martes 13 de enero de 2026 a las 10:00 (America/Bogota)); el caso se "
        "escala a su ejecutivo comercial."
    )


def test_medium_reason_names_the_business_day_it_becomes_eligible() -> None:
    decision = escalation_decision(case("MEDIA", bogota(8, 10)), bogota(9, 10))
    assert "3 días laborables" in decision.reason_es
    assert "miércoles 14 de enero de 2026 a las 10:00" in decision.reason_es
    assert "cambio de prioridad" in decision.reason_es


def test_low_priority_is_told_to_ask_for_a_priority_change() -> None:
    decision = escalation_decision(case("BAJA", bogota(1, 10)), bogota(31, 10))
    assert decision.reason_es.startswith(
        "Los casos de baja prioridad no son aptos para escalamiento."
    )
    assert "solicite el cambio a impacto medio" in decision.reason_es
    assert "nota de trabajo" in decision.reason_es


@pytest.mark.parametrize(
    ("severity", "now", "eligible"),
    [
        # Seed 000 §1: created Mon 5 Jan; 5 business days skip Reyes Magos → Tue 13 10:00.
        ("ALTA", bogota(12, 10), False),  # stale high case, but RCA waits
        ("ALTA", bogota(13, 9, 59), False),
        ("ALTA", bogota(13, 10), True),
        ("BAJA", bogota(13, 10), True),  # the RCA delivery standard, not the priority
    ],
)
def test_rca_request_waits_five_business_days(severity: str, now: datetime, eligible: bool) -> None:
    view = case(severity, bogota(6, 10), is_rca_request=True)
    decision = escalation_decision(view, now)
    assert decision.eligible is eligible
    if eligible:
        assert decision.target_level == "ejecutivo_comercial"
        assert "5 días laborables desde su solicitud de RCA" in decision.reason_es
    else:
        assert decision.eligible_from == bogota(13, 10)
        assert "no puede escalarse antes de que pasen 5 días laborables" in decision.reason_es
        assert "martes 13 de enero de 2026 a las 10:00" in decision.reason_es


@pytest.mark.parametrize(
    ("severity", "updated", "escalations", "without_traction", "eligible", "target"),
    [
        # Seed 001: escalated more than twice without traction → one level up.
        ("MEDIA", bogota(14, 9), 3, 3, True, "gerencia"),  # even though updated an hour ago
        ("MEDIA", bogota(14, 9), 2, 2, False, None),  # twice is not "more than twice"
        ("ALTA", bogota(12, 9), 2, 2, True, "ejecutivo_comercial"),
        ("ALTA", bogota(12, 9), 4, 3, True, "gerencia"),
        ("ALTA", bogota(12, 9), 4, 1, True, "ejecutivo_comercial"),  # those escalations worked
        ("BAJA", bogota(14, 9), 3, 3, False, None),  # low priority stays ineligible
    ],
)
def test_escalations_without_traction_go_one_level_up(
    severity: str,
    updated: datetime,
    escalations: int,
    without_traction: int,
    eligible: bool,
    target: str | None,
) -> None:
    view = case(
        severity,
        updated,
        escalation_count=escalations,
        escalations_without_traction=without_traction,
    )
    decision = escalation_decision(view, bogota(14, 10))
    assert (decision.eligible, decision.target_level) == (eligible, target)
    if target == "gerencia":
        assert f"escalado {without_traction} veces sin avances" in decision.reason_es
        assert decision.reason_es.endswith("se escala a la gerencia de servicio.")


def test_rca_gate_comes_before_traction() -> None:
    view = case(
        "ALTA",
        bogota(6, 10),
        is_rca_request=True,
        escalation_count=3,
        escalations_without_traction=3,
    )
    assert not escalation_decision(view, bogota(8, 10)).eligible
    assert escalation_decision(view, bogota(13, 10)).target_level == "gerencia"


RULES_YAML = """
high_stale_after: 12h
medium_stale_business_days: 2
rca_min_business_days: 10
max_escalations_without_traction: 1
first_level: tam
next_level: csm
level_labels_es: {tam: su gerente técnico de cuentas, csm: su gerente de éxito del cliente}
"""


def test_thresholds_come_from_rules_yaml() -> None:
    rules = EscalationRules.model_validate(yaml.safe_load(RULES_YAML))
    high = escalation_decision(case("URGENTE", bogota(13, 10)), bogota(13, 22), rules)
    assert (high.eligible, high.target_level) == (True, "tam")
    assert "últimas 12 horas" in high.reason_es
    assert "su gerente técnico de cuentas" in high.reason_es
    medium = escalation_decision(case("MEDIA", bogota(14, 10)), bogota(16, 10), rules)
    assert medium.eligible
    rca = case("BAJA", bogota(6, 10), is_rca_request=True)
    assert escalation_decision(rca, bogota(16, 10), rules).eligible_from == bogota(20, 10)
    stuck = case("MEDIA", bogota(14, 9), escalation_count=2, escalations_without_traction=2)
    assert escalation_decision(stuck, bogota(14, 10), rules).target_level == "csm"


def test_default_rules_are_the_seed_values() -> None:
    rules = EscalationRules()
    assert rules.high_severities == ("URGENTE", "ALTA")
    assert rules.medium_severities == ("MEDIA",)
    assert rules.high_stale_after == timedelta(hours=24)
    assert rules.medium_stale_business_days == 3
    assert rules.rca_min_business_days == 5
    assert rules.max_escalations_without_traction == 2
    assert (rules.first_level, rules.next_level) == ("ejecutivo_comercial", "gerencia")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"high_severities": ["URGENTE", "MEDIA"]}, "both high and medium"),
        ({"high_stale_after": 24}, "write a unit"),
        ({"high_stale_after": "0h"}, "positive"),
        ({"medium_stale_business_days": -1}, "greater than or equal"),
        ({"high_severities": ["CRITICA"]}, "URGENTE"),
        ({"umbral": 3}, "Extra inputs"),
    ],
)
def test_bad_escalation_rules_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EscalationRules.model_validate(data)


def test_case_view_checks_its_counts_and_zones() -> None:
    with pytest.raises(ValueError, match="escalations_without_traction"):
        case("ALTA", bogota(13, 10), escalation_count=1, escalations_without_traction=2)
    with pytest.raises(ValueError, match="timezone-aware"):
        case("ALTA", datetime(2026, 1, 13, 10))


def test_format_when_es() -> None:
    assert format_when_es(datetime(2026, 8, 7, 20, 5, tzinfo=UTC), BOGOTA) == (
        "viernes 7 de agosto de 2026 a las 15:05 (America/Bogota)"
    )


# Seed 003: "tres intentos de contacto durante un período de diez días" without an answer.
DAY0 = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)


def day(n: float) -> datetime:
    return DAY0 + timedelta(days=n)


@pytest.mark.parametrize(
    ("attempts", "replied", "now", "due"),
    [
        ([day(0), day(3), day(7)], None, day(9), False),  # three attempts, nine days
        ([day(0), day(3), day(7)], None, day(10), True),  # ten days since the first
        ([day(0), day(3)], None, day(30), False),  # only two attempts
        ([day(0), day(3), day(12)], None, day(11), False),  # third not made yet
        ([day(0), day(3), day(12)], None, day(12), True),  # third attempt after ten days
        ([day(0), day(3), day(7)], day(5), day(10), False),  # the customer answered on day 5
        ([day(0), day(3), day(7), day(9), day(11)], day(5), day(17), True),  # 7, 9, 11 + ten
        ([day(0), day(3), day(7), day(9), day(11)], day(5), day(16.9), False),
        ([day(7), day(0), day(3)], None, day(10), True),  # order does not matter
    ],
)
def test_auto_close_due(
    attempts: list[datetime], replied: datetime | None, now: datetime, due: bool
) -> None:
    assert auto_close_due(attempts, now, customer_replied_at=replied) is due


def test_auto_close_at_is_the_wake_up_time() -> None:
    assert auto_close_at([day(0), day(3), day(7)]) == day(10)
    assert auto_close_at([day(0), day(3)]) is None
    assert auto_close_at([day(0), day(3), day(7)], customer_replied_at=day(1)) is None


def test_closing_rules_are_parameters() -> None:
    assert ClosingRules() == ClosingRules(attempts=3, period=timedelta(days=10))
    rules = ClosingRules.model_validate(yaml.safe_load("{attempts: 2, period: 5 días}"))
    assert rules.period == timedelta(days=5)
    assert not auto_close_due([day(0), day(1)], day(4.9), rules=rules)
    assert auto_close_due([day(0), day(1)], day(5), rules=rules)
    with pytest.raises(ValidationError, match="greater than or equal"):
        ClosingRules(attempts=0)
