"""Response clocks on real cases (seed 003), driven by a fake clock through the real pipeline.

Calendars: Premium 7x24 in Bogotá (nights and weekends count), Profesional 5x8 in Bogotá
(Monday 23 March 2026 is San José, a Colombian holiday) and in Santiago de Chile (clocks go
back from UTC-3 to UTC-4 on Sunday 5 April 2026; 3 April is Good Friday).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from mailbridge.sla.sweep import count_overdue_acks, run_sweep
from tests.sla.helpers import (
    BOGOTA,
    SANTIAGO,
    case,
    deliver_at,
    events,
    local,
    opening,
    reply,
    sla_rules,
    utc,
)


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return sla_rules()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_premium_clock_runs_through_the_night(db, settings, rules) -> None:
    # Saturday 02:00 in Bogotá, URGENTE (soporte-a): 7x24 answers within the hour.
    received = local(BOGOTA, 2026, 3, 21, 2, 0)
    deliver_at(db, settings, rules, opening(), received)
    sla = case(db, 1)["sla"]
    assert sla["response_started_at"] == "2026-03-21T07:00:00+00:00"
    assert sla["response_due_at"] == "2026-03-21T08:00:00+00:00"
    assert sla["at_risk_at"] == "2026-03-21T07:45:00+00:00"
    assert sla["first_response_at"] is None


def test_profesional_case_received_on_a_weekend_starts_after_the_colombian_holiday(
    db, settings, rules
) -> None:
    # Saturday 21 March 10:00 → Monday 23 is San José → the clock starts Tuesday 09:00.
    deliver_at(db, settings, rules, opening(tenant="TEN-8008", sender="pedro@colsubsidio.example",
                                             name="Pedro"),
               local(BOGOTA, 2026, 3, 21, 10, 0))
    sla = case(db, 1)["sla"]
    assert sla["response_started_at"] == "2026-03-24T14:00:00+00:00"  # Tue 09:00 Bogotá
    assert sla["response_due_at"] == "2026-03-24T17:00:00+00:00"  # URGENTE 3 h → 12:00


def test_profesional_medium_clock_states_across_weekend_and_holiday(db, settings, rules) -> None:
    """Friday 16:00 MEDIA (9 h): 1 h on Friday, the weekend and San José do not count,
    8 h on Tuesday → due Tuesday 24 March 17:00 Bogotá."""
    deliver_at(db, settings, rules,
               opening(tenant="TEN-8008", sender="pedro@colsubsidio.example", name="Pedro",
                       to="soporte-b@mesa.example"),
               local(BOGOTA, 2026, 3, 20, 16, 0), rcpt="soporte-b@mesa.example")
    first = case(db, 1)
    assert first["severity"] == "MEDIA"
    assert first["sla"]["response_due_at"] == "2026-03-24T22:00:00+00:00"
    assert first["sla"]["at_risk_at"] == "2026-03-24T19:45:00+00:00"  # 6.75 h of 9 h used

    from mailbridge.sla.cases import response_state
    from mailbridge.tickets.models import Ticket

    with db.reader() as session:
        ticket = session.get(Ticket, 1)
        states = {
            at: response_state(ticket, at)
            for at in (
                local(BOGOTA, 2026, 3, 21, 12),  # Saturday: the weekend does not count
                local(BOGOTA, 2026, 3, 23, 16),  # the holiday neither
                local(BOGOTA, 2026, 3, 24, 14, 44),
                local(BOGOTA, 2026, 3, 24, 14, 45),
                local(BOGOTA, 2026, 3, 24, 17, 1),
            )
        }
    assert list(states.values()) == ["a_tiempo", "a_tiempo", "a_tiempo", "en_riesgo", "vencido"]


def test_santiago_clock_is_exact_across_the_dst_change_and_good_friday(db, settings, rules) -> None:
    """Thursday 2 April 15:00 (UTC-3), MEDIA 9 h: 2 h on Thursday; Good Friday, Holy
    Saturday and Sunday closed; clocks go back on the 5th; 7 h on Monday → 16:00 at UTC-4."""
    deliver_at(db, settings, rules,
               opening(tenant="TEN-9009", sender="carolina@falabella.example", name="Carolina",
                       to="soporte-b@mesa.example"),
               local(SANTIAGO, 2026, 4, 2, 15, 0), rcpt="soporte-b@mesa.example")
    sla = case(db, 1)["sla"]
    assert sla["response_started_at"] == "2026-04-02T18:00:00+00:00"
    assert sla["response_due_at"] == "2026-04-06T20:00:00+00:00"  # 16:00 Santiago, UTC-4
    assert sla["at_risk_at"] == "2026-04-06T17:45:00+00:00"  # 13:45 Santiago


def test_first_staff_reply_stops_the_clock(db, settings, rules) -> None:
    received = local(BOGOTA, 2026, 3, 21, 2, 0)
    deliver_at(db, settings, rules, opening(), received)
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Hola Ana, lo estamos revisando.",
                     to=["ana@compensar.example"], cc=["soporte+1@mesa.example"]),
               received + timedelta(minutes=40), rcpt="soporte+1@mesa.example")
    sla = case(db, 1)["sla"]
    assert sla["first_response_at"] == "2026-03-21T07:40:00+00:00"
    assert (sla["state"], sla["state_label"]) == ("cumplido", "Cumplido")
    # A breach sweep much later finds nothing to report.
    assert run_sweep("response", db, rules, received + timedelta(days=3)).done == {"breached": 0}


def test_a_breach_is_recorded_logged_and_counted_once(db, settings, rules, caplog) -> None:
    deliver_at(db, settings, rules, opening(), utc(2026, 3, 21, 7, 0))  # due 08:00
    before = _metric("mailbridge_sla_breaches_total", severity="URGENTE")
    assert run_sweep("response", db, rules, utc(2026, 3, 21, 7, 59)).done["breached"] == 0
    assert _metric("mailbridge_sla_at_risk") == 1
    with caplog.at_level(logging.WARNING, logger="mailbridge.sla.sweep"):
        assert run_sweep("response", db, rules, utc(2026, 3, 21, 8, 1)).done["breached"] == 1
        assert run_sweep("response", db, rules, utc(2026, 3, 21, 9, 0)).done["breached"] == 0
    assert [r.message for r in caplog.records].count("response target missed") == 1
    assert _metric("mailbridge_sla_breaches_total", severity="URGENTE") == before + 1
    assert _metric("mailbridge_sla_breached_open") == 1
    data = case(db, 1)
    assert data["sla"]["breached_at"] == "2026-03-21T08:00:00+00:00"
    assert len(events(db, 1, "sla_breached")) == 1
    # A late first response is still a breach (seed 003: answered after the target).
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Ya lo revisamos.",
                     to=["ana@compensar.example"]),
               utc(2026, 3, 21, 9, 30), rcpt="soporte+1@mesa.example")
    assert case(db, 1)["sla"]["state"] == "vencido"


def test_a_late_answer_missed_while_the_daemon_was_down_is_still_counted(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), utc(2026, 3, 21, 7, 0))
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Revisado.", to=["ana@compensar.example"]),
               utc(2026, 3, 21, 10, 0), rcpt="soporte+1@mesa.example")
    assert run_sweep("response", db, rules, utc(2026, 3, 22)).done["breached"] == 1
    assert events(db, 1, "sla_breached")[0]["data"]["answered_at"] == "2026-03-21T10:00:00+00:00"


def test_overdue_acknowledgement_is_logged_once_counted_and_listed(
    db, settings, rules, caplog
) -> None:
    """SPEC §5: an ack still unsent 15 minutes after the 250 is visible (metric, log, status)."""
    from mailbridge.status import status_report

    deliver_at(db, settings, rules, opening(), utc(2026, 3, 21, 7, 0))  # nothing sends it
    before = _metric("mailbridge_acks_late_total")
    assert run_sweep("acks", db, rules, utc(2026, 3, 21, 7, 14)).done == {"acks_late": 0}
    with caplog.at_level(logging.WARNING, logger="mailbridge.sla.sweep"):
        assert run_sweep("acks", db, rules, utc(2026, 3, 21, 7, 16)).done == {"acks_late": 1}
        assert run_sweep("acks", db, rules, utc(2026, 3, 21, 8, 0)).done == {"acks_late": 0}
    assert [r.message for r in caplog.records].count("acknowledgement overdue") == 1
    assert _metric("mailbridge_acks_late_total") == before + 1
    assert _metric("mailbridge_acks_overdue") == 1
    assert len(events(db, 1, "ack_late")) == 1
    with db.reader() as session:
        assert count_overdue_acks(session, utc(2026, 3, 21, 8)) == 1
        report = status_report(session)
    assert [row["case"] for row in report["acks"]["overdue"]] == [1]
    assert "sla" in report and report["sla"]["response_breached"][0]["case"] == 1
