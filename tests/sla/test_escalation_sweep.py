"""Automatic escalation of high-priority cases by the sweep (seed 000 §4, seed 001).

A fake clock walks a Premium URGENTE case opened on a Saturday night through the days after
it: every 24 clock hours without a desk update it escalates to the commercial executive;
after more than two escalations without traction it goes to the next level (gerencia).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from mailbridge.sla.escalation import claim_action
from mailbridge.sla.sweep import run_sweep
from mailbridge.tickets.models import CaseAction
from tests.sla.helpers import (
    BOGOTA,
    body_of,
    case,
    deliver_at,
    events,
    local,
    opening,
    outbox,
    race,
    reply,
    sla_rules,
)

OPENED = local(BOGOTA, 2026, 3, 21, 2, 0)  # Saturday 02:00, Bogotá


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return sla_rules()


def _escalate_at(db, rules, at):  # type: ignore[no-untyped-def]
    return run_sweep("escalation", db, rules, at).done["escalated"]


def test_high_priority_escalates_after_24_hours_with_the_seed_000_template(
    db, settings, rules
) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    assert _escalate_at(db, rules, OPENED + timedelta(hours=23, minutes=59)) == 0
    # Sunday 02:00: 24 clock hours (a weekend night counts).
    assert _escalate_at(db, rules, OPENED + timedelta(hours=24)) == 1
    assert _escalate_at(db, rules, OPENED + timedelta(hours=24, minutes=5)) == 0  # once

    (mail,) = outbox(db, "escalation")
    assert mail.rcpt_tos == ["ejecutivo.compensar@mesa.example"]
    assert mail.subject == "Compensar – [Caso 1] – Caída del servicio de correo"
    text = body_of(mail)
    for line in (
        "Número del Ticket de soporte: 1",
        "Nombre del Cliente: Compensar",
        "Región/País del Cliente: Colombia",
        "Descripción detallada del incidente: desde las 8:00 los usuarios no reciben correos",
        "Impacto empresarial/Justificación de la urgencia: 300 agentes sin correo externo. / "
        "campaña de cobranza en curso.",
        "Producto o Productos Involucrados: EMAIL, INBOUND",
        "Su Teléfono: +57 300 123 4567",
        "Su Nombre: Ana Gómez",
        "Empresa para la cual trabaja: Compensar",
        "Escalamiento automático del caso 1",
        "no se ha actualizado en las últimas 24 horas",
    ):
        assert line in text, line
    (event,) = events(db, 1, "escalated")
    assert event["data"] | {"reason": None} == {
        "seq": 1, "level": "ejecutivo_comercial", "to": "ejecutivo.compensar@mesa.example",
        "trigger": "automatic", "reason": None, "requested_by": None,
    }
    assert case(db, 1)["sla"]["escalations"][0]["trigger"] == "automatic"


def test_more_than_two_escalations_without_traction_go_one_level_up(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    levels = []
    for day in range(1, 7):
        at = OPENED + timedelta(days=day)
        _escalate_at(db, rules, at)
        _escalate_at(db, rules, at + timedelta(hours=1))  # a second sweep changes nothing
        levels.append([e["data"]["level"] for e in events(db, 1, "escalated")])
    assert levels[-1] == ["ejecutivo_comercial"] * 3 + ["gerencia"]
    assert [len(x) for x in levels] == [1, 2, 3, 4, 4, 4]  # at the top it waits for people
    rcpts = [m.rcpt_tos for m in outbox(db, "escalation")]
    assert rcpts[-1] == ["gerencia@mesa.example"]
    assert "ya se había escalado 3 veces" in body_of(outbox(db, "escalation")[-1])


def test_a_desk_update_is_traction_and_restarts_the_count(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    for day in (1, 2, 3):
        _escalate_at(db, rules, OPENED + timedelta(days=day))
    # Wednesday: staff answer. The next escalation needs 24 h from that update and goes
    # to the executive again.
    update_at = OPENED + timedelta(days=3, hours=5)
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Seguimos con el proveedor.",
                     to=["ana@compensar.example"]),
               update_at, rcpt="soporte+1@mesa.example")
    assert _escalate_at(db, rules, OPENED + timedelta(days=4)) == 0
    assert _escalate_at(db, rules, update_at + timedelta(hours=24)) == 1
    assert events(db, 1, "escalated")[-1]["data"]["level"] == "ejecutivo_comercial"


def test_medium_and_low_are_never_escalated_by_the_sweep(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(to="soporte-b@mesa.example"), OPENED,
               rcpt="soporte-b@mesa.example")
    deliver_at(db, settings, rules, opening(to="soporte-c@mesa.example", subject="Consulta"),
               OPENED, rcpt="soporte-c@mesa.example")
    assert [case(db, n)["severity"] for n in (1, 2)] == ["MEDIA", "BAJA"]
    assert _escalate_at(db, rules, OPENED + timedelta(days=30)) == 0


def test_resolved_and_closed_cases_are_not_escalated(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Listo.\n#estado resuelto",
                     to=["ana@compensar.example"]),
               OPENED + timedelta(hours=1), rcpt="soporte+1@mesa.example")
    assert _escalate_at(db, rules, OPENED + timedelta(days=3)) == 0


def test_an_action_is_claimed_once(db, settings, rules) -> None:
    """The unique key the sweeps rely on when two daemons share one database."""
    deliver_at(db, settings, rules, opening(), OPENED)
    with db.transaction() as session:
        assert claim_action(session, 1, "escalation", 1, OPENED, {}) is not None
    with db.transaction() as session:
        assert claim_action(session, 1, "escalation", 1, OPENED, {}) is None
        # the savepoint kept the transaction usable
        assert claim_action(session, 1, "escalation", 2, OPENED, {}) is not None
    with db.reader() as session:
        assert session.scalars(select(CaseAction.seq)).all() == [1, 2]


def test_two_workers_sweeping_at_once_escalate_once(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    at = OPENED + timedelta(days=1)
    results = race(settings.resolved_database_url, db, lambda d: _escalate_at(d, rules, at))
    assert sorted(results) == [0, 1]
    assert len(outbox(db, "escalation")) == 1
