"""Closing a resolved case (seed 003): the customer confirms, or three unanswered contact
attempts over ten days close it. The sweep is driven by a fake clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailbridge.sla.sweep import run_sweep
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
    utc,
)

PEDRO = {"tenant": "TEN-8008", "sender": "pedro@colsubsidio.example", "name": "Pedro Ruiz"}


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return sla_rules()


def _text(row) -> str:  # type: ignore[no-untyped-def]
    return " ".join(body_of(row).split())


def _resolve(db, settings, rules, at, number=1, customer="ana@compensar.example"):  # type: ignore[no-untyped-def]
    deliver_at(db, settings, rules,
               reply(number, sender="carla@mesa.example",
                     body="Corregimos la cola de salida.\n#estado resuelto", to=[customer]),
               at, rcpt=f"soporte+{number}@mesa.example")


def _closing(db, rules, at):  # type: ignore[no-untyped-def]
    return run_sweep("closing", db, rules, at).done


def test_resuelto_asks_the_customer_and_a_confirmation_closes(db, settings, rules) -> None:
    opened = utc(2026, 3, 16, 14)
    deliver_at(db, settings, rules, opening(), opened)
    _resolve(db, settings, rules, opened + timedelta(hours=3))
    (request,) = outbox(db, "closing_request")
    assert request.rcpt_tos == ["ana@compensar.example"]
    assert request.subject == "[Caso 1] TEN-1001 Caída del servicio de correo"
    assert "«Confirmo» o «Pueden cerrar el caso»" in _text(request)
    assert "no antes del jueves 26 de marzo de 2026 a las 12:00 (America/Bogota)" in _text(request)
    (confirmation,) = outbox(db, "command_confirmation")
    assert "se pidió al cliente que confirme la solución" in _text(confirmation)
    assert case(db, 1)["status"] == "resuelto"

    result = deliver_at(db, settings, rules,
                        reply(1, sender="ana@compensar.example", body="Confirmo, ya funciona. Gracias."),
                        opened + timedelta(hours=5), rcpt="soporte+1@mesa.example")
    assert result.outcome == "reply:closed-by-customer"
    data = case(db, 1)
    assert data["status"] == "cerrado"
    assert data["messages"][-1]["body"].startswith("Confirmo")
    (closed,) = outbox(db, "closing")
    assert "Gracias por confirmar la solución. Hemos cerrado el caso 1" in _text(closed)
    assert events(db, 1, "closed")[0]["data"]["reason"] == "confirmed"
    # Nothing left for the sweep.
    assert _closing(db, rules, opened + timedelta(days=30)) == {"attempts": 0, "closed": 0}


def test_three_attempts_over_ten_days_close_a_premium_case(db, settings, rules) -> None:
    resolved = utc(2026, 3, 16, 17)
    deliver_at(db, settings, rules, opening(), resolved - timedelta(hours=3))
    _resolve(db, settings, rules, resolved)
    step = timedelta(days=10) / 3  # 3 days 8 hours
    assert _closing(db, rules, resolved + step - timedelta(minutes=1)) == {"attempts": 0,
                                                                          "closed": 0}
    assert _closing(db, rules, resolved + step) == {"attempts": 1, "closed": 0}
    assert _closing(db, rules, resolved + step + timedelta(hours=1))["attempts"] == 0  # once
    assert _closing(db, rules, resolved + 2 * step) == {"attempts": 1, "closed": 0}
    last = outbox(db, "closing_attempt")[-1]
    assert "intento de contacto 3 de 3" in _text(last)
    assert "Este es el último intento" in _text(last)
    assert "el jueves 26 de marzo de 2026 a las 12:00 (America/Bogota)" in _text(last)
    assert _closing(db, rules, resolved + timedelta(days=10) - timedelta(minutes=1))["closed"] == 0
    assert _closing(db, rules, resolved + timedelta(days=10)) == {"attempts": 0, "closed": 1}
    assert case(db, 1)["status"] == "cerrado"
    (closed,) = outbox(db, "closing")
    assert "no recibimos respuesta tras 3 intentos de contacto en 10 días" in _text(closed)
    assert [e["data"]["number"] for e in events(db, 1, "closing_attempt")] == [1, 2, 3]
    assert len(case(db, 1)["sla"]["closing"]["attempts"]) == 3


def test_office_hours_attempts_wait_for_the_desk_through_weekend_and_holy_week(
    db, settings, rules
) -> None:
    """Profesional in Bogotá, resolved Wednesday 25 March 10:00. Attempt 2 falls on Saturday
    18:00 → Monday 30 09:00; attempt 3 on Thursday 2 April 17:00 (closing time, and Maundy
    Thursday) → after Good Friday and the weekend, Monday 6 April 09:00; the case closes
    one interval later, Thursday 9 April 17:00, never sooner than ten days."""
    opened = local(BOGOTA, 2026, 3, 24, 9)
    deliver_at(db, settings, rules, opening(**PEDRO), opened)
    _resolve(db, settings, rules, local(BOGOTA, 2026, 3, 25, 10), customer=PEDRO["sender"])
    attempts = []
    at = local(BOGOTA, 2026, 3, 25, 10)
    while case(db, 1)["status"] == "resuelto" and at < local(BOGOTA, 2026, 4, 30):
        at += timedelta(hours=1)
        done = _closing(db, rules, at)
        if done["attempts"] or done["closed"]:
            attempts.append((at.astimezone(BOGOTA).strftime("%a %d %H:%M"), done))
    assert attempts == [
        ("Mon 30 09:00", {"attempts": 1, "closed": 0}),
        ("Mon 06 09:00", {"attempts": 1, "closed": 0}),
        ("Thu 09 17:00", {"attempts": 0, "closed": 1}),
    ]


def test_a_customer_answer_that_is_not_a_confirmation_reopens_the_case(
    db, settings, rules
) -> None:
    """Seed 003, issue 17: "No, todavía sigue fallando" on a resolved case reopens it (it
    used to stay resuelto and its 10-day count started again, so live incidents closed)."""
    resolved = utc(2026, 3, 16, 17)
    deliver_at(db, settings, rules, opening(), resolved - timedelta(hours=3))
    _resolve(db, settings, rules, resolved)
    step = timedelta(days=10) / 3
    _closing(db, rules, resolved + step)  # attempt 2
    answered = resolved + step + timedelta(days=1)
    result = deliver_at(db, settings, rules,
                        reply(1, sender="ana@compensar.example",
                              body="No, todavía no está resuelto: siguen rebotando."),
                        answered, rcpt="soporte+1@mesa.example")
    assert result.outcome.startswith("reply")
    shown = case(db, 1)
    assert shown["status"] == "abierto"
    assert [e["data"]["by"] for e in events(db, 1, "reopened")] == ["ana@compensar.example"]
    # The desk owes a response again: a new clock from the answer, not yet answered.
    assert shown["sla"]["first_response_at"] is None
    assert shown["sla"]["response_started_at"] >= answered.isoformat()[:16]
    # No closing count runs on an open case, however long it waits.
    for n in (1, 2, 3, 4):
        assert _closing(db, rules, answered + n * step) == {"attempts": 0, "closed": 0}
    assert case(db, 1)["status"] == "abierto"
    assert [e["data"]["number"] for e in events(db, 1, "closing_attempt")] == [1, 2]


def test_staff_reopening_stops_the_closing(db, settings, rules) -> None:
    resolved = utc(2026, 3, 16, 17)
    deliver_at(db, settings, rules, opening(), resolved - timedelta(hours=3))
    _resolve(db, settings, rules, resolved)
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="#estado en_progreso",
                     to=["soporte+1@mesa.example"]),
               resolved + timedelta(hours=1), rcpt="soporte+1@mesa.example")
    assert _closing(db, rules, resolved + timedelta(days=20)) == {"attempts": 0, "closed": 0}
    assert case(db, 1)["status"] == "en_progreso"


def test_two_workers_send_an_attempt_once(db, settings, rules) -> None:
    resolved = utc(2026, 3, 16, 17)
    deliver_at(db, settings, rules, opening(), resolved - timedelta(hours=3))
    _resolve(db, settings, rules, resolved)
    at = resolved + timedelta(days=10) / 3
    results = race(settings.resolved_database_url, db, lambda d: _closing(d, rules, at))
    assert sorted(r["attempts"] for r in results) == [0, 1]
    assert len(outbox(db, "closing_attempt")) == 1
    _closing(db, rules, resolved + 2 * timedelta(days=10) / 3)  # attempt 3, on time
    at = resolved + timedelta(days=10)
    results = race(settings.resolved_database_url, db, lambda d: _closing(d, rules, at))
    assert sorted(r["closed"] for r in results) == [0, 1]
    assert len(outbox(db, "closing")) == 1
