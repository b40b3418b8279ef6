"""rules.yaml carries the service levels: plans, calendars, escalation and closing rules."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from mailbridge.rules import RulesError, load_rules, parse_rules
from mailbridge.service_levels.clocks import PREMIUM_SLA, PROFESIONAL_SLA
from tests.sla.helpers import REPO, sla_rules

DEMO = (REPO / "rules.yaml").read_text(encoding="utf-8")


def test_demo_plans_carry_the_seed_003_targets_and_hours() -> None:
    rules = load_rules(REPO / "rules.yaml")
    assert rules.plans["premium"].sla == PREMIUM_SLA
    assert rules.plans["profesional"].sla == PROFESIONAL_SLA
    assert rules.plans["premium"].sla.response_target("URGENTE") == timedelta(hours=1)
    assert rules.plans["profesional"].sla.response_target("MEDIA") == timedelta(hours=9)


def test_demo_escalation_and_closing_rules_are_the_seed_values() -> None:
    rules = load_rules(REPO / "rules.yaml")
    esc = rules.escalation
    assert esc.high_stale_after == timedelta(hours=24)
    assert (esc.medium_stale_business_days, esc.rca_min_business_days) == (3, 5)
    assert esc.max_escalations_without_traction == 2
    assert esc.automatic_severities == ("URGENTE", "ALTA")
    assert esc.levels["gerencia"].address == "gerencia@mesa.example"
    assert esc.levels["ejecutivo_comercial"].address is None  # the tenant's executive
    assert esc.label("gerencia") == "la gerencia de servicio"
    assert (rules.closing.attempts, rules.closing.period) == (3, timedelta(days=10))
    assert rules.tenant("TEN-2002").closed_dates == [date(2026, 12, 24), date(2026, 12, 31)]


def test_the_escalation_address_is_accepted_and_ours() -> None:
    rules = load_rules(REPO / "rules.yaml")
    assert rules.accepts_recipient("escalamiento@mesa.example")
    assert rules.accepts_recipient("Escalamiento+12@Mesa.Example")
    assert rules.is_escalation_address("escalamiento+12@mesa.example")
    assert "escalamiento@mesa.example" in rules.own_addresses
    assert not rules.accepts_recipient("escalamientos@mesa.example")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Confirmo, ya funciona. Gracias", True),
        ("Sí, resuelto.", True),
        ("Pueden cerrar el caso", True),
        ("No, todavía no está resuelto", False),
        ("¿Ya funciona? Nosotros seguimos sin correo", False),
        ("No pueden cerrar: sigue fallando", False),
        ("Seguimos con el problema desde las 10:00", False),
    ],
)
def test_confirmations_from_the_rules(text: str, expected: bool) -> None:
    assert load_rules(REPO / "rules.yaml").closing.confirms(text) is expected


@pytest.mark.parametrize(
    ("change", "place", "words"),
    [
        (("next_level: gerencia", "next_level: direccion"), "escalation", "not declared"),
        (("automatic_severities: [URGENTE, ALTA]", "automatic_severities: [BAJA]"),
         "escalation", "never eligible"),
        (("period: 10d", "period: 10"), "closing.period", "write a unit"),
        (("address: gerencia@mesa.example", "address: gerencia"),
         "escalation.levels.gerencia.address", "not an e-mail"),
        (("descripcion: [explicacion]", "descripcion: [explicaciones]"),
         "escalation.template_fields.descripcion", "not a template field"),
        (("country: NI", "country: XX"), "tenants.1.country", "no public holidays"),
        (("    closed_dates: [2026-12-24, 2026-12-31]", "    closed_dates: [mañana]"),
         "tenants.1.closed_dates.0", "date"),
        (("      hours: 5x8", "      hours: 8x8"), "plans.profesional.sla.hours", "opening days"),
    ],
)  # fmt: skip
def test_sla_mistakes_name_their_line(change: tuple[str, str], place: str, words: str) -> None:
    old, new = change
    assert old in DEMO
    text = DEMO.replace(old, new, 1)
    with pytest.raises(RulesError) as raised:
        parse_rules(text)
    problem = next(p for p in raised.value.problems if p.key.startswith(place))
    assert words in problem.message
    assert problem.line is not None  # `mailbridge check-config` shows file:line: key: message


def test_the_test_tenants_build_their_calendars() -> None:
    rules = sla_rules()
    assert rules.tenant("TEN-8008").plan == "profesional"
    assert rules.tenant("TEN-9009").timezone == "America/Santiago"
