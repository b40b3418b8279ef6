"""The SLA timers in the real daemon: persisted jobs survive a restart and catch up; the
escalation mail reaches the commercial executive through the relay (a real aiosmtpd sink)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from tests.sla.helpers import rewind_stored_jobs
from tests.support.daemon import opening_mail
from tests.support.sink import SmtpSink

SWEEP_JOBS = ["sla-sweep:acks", "sla-sweep:chase", "sla-sweep:closing", "sla-sweep:escalation",
              "sla-sweep:response", "sla-sweep:vendors", "sla-sweep:warnings"]


def _age_case(daemon, hours: float) -> None:  # type: ignore[no-untyped-def]
    """Move case 1 and its messages `hours` into the past (what a stopped daemon misses)."""
    from sqlalchemy import select

    from mailbridge.db import Database
    from mailbridge.tickets.models import Ticket, TicketMessage

    back = timedelta(hours=hours)
    database = Database(daemon.database_url)
    try:
        with database.transaction() as session:
            ticket = session.scalars(select(Ticket).where(Ticket.number == 1)).one()
            for column in ("created_at", "updated_at", "ack_due_at", "acked_at",
                           "response_started_at", "response_at_risk_at", "response_due_at"):
                if getattr(ticket, column) is not None:
                    setattr(ticket, column, getattr(ticket, column) - back)
            for message in session.scalars(select(TicketMessage)):
                message.created_at -= back
    finally:
        database.dispose()


def test_timers_survive_a_restart_and_a_missed_escalation_reaches_the_executive(
    make_daemon, sink: SmtpSink
) -> None:
    daemon = make_daemon(relay_port=sink.port, sla_sweep_interval="3600").start()
    daemon.send(opening_mail(message_id="<sla-e2e@compensar.example>"))
    sink.wait_for(1)  # the acknowledgement
    daemon.settle()
    shown = daemon.cli_json("tickets", "show", "1")
    started = datetime.fromisoformat(shown["sla"]["response_started_at"])  # the 250, 7x24
    assert started <= datetime.fromisoformat(shown["created_at"])
    assert datetime.fromisoformat(shown["sla"]["response_due_at"]) == started + timedelta(hours=1)
    assert shown["sla"]["state"] == "a_tiempo"

    jobs = daemon.query("SELECT id, next_run_time FROM scheduler_jobs ORDER BY id")
    assert [job for job, _ in jobs] == SWEEP_JOBS
    assert daemon.stop() == 0
    assert daemon.query("SELECT id, next_run_time FROM scheduler_jobs ORDER BY id") == jobs

    # Down for a day and a bit: the URGENTE case went 25 h without an update, and the
    # sweeps fell due while nobody was there to run them.
    _age_case(daemon, 25)
    rewind_stored_jobs(daemon.database_url, datetime.now(UTC) - timedelta(hours=3))
    daemon.start()
    (_, escalation) = sink.wait_for(2)
    daemon.settle()
    message = escalation.message
    assert escalation.rcpt_tos == ["ejecutivo.compensar@mesa.example"]
    assert message["Subject"] == "Compensar – [Caso 1] – Caída del servicio de correo"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Reply-To"].addresses[0].addr_spec == "soporte+1@mesa.example"
    text = message.get_content()
    for line in ("Número del Ticket de soporte: 1", "Nombre del Cliente: Compensar",
                 "Región/País del Cliente: Colombia", "Producto o Productos Involucrados: EMAIL, INBOUND",
                 "Su Nombre: Ana Gómez", "Su Teléfono: +57 300 123 4567",
                 "Empresa para la cual trabaja: Compensar"):
        assert line in text, line

    shown = daemon.cli_json("tickets", "show", "1")
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds.count("escalated") == 1 and kinds.count("sla_breached") == 1
    assert "ack_late" not in kinds  # the acknowledgement left in time
    assert shown["sla"]["state"] == "vencido"
    assert shown["sla"]["escalations"][0]["to"] == "ejecutivo.compensar@mesa.example"
    # The same jobs, each moved a whole interval on: the missed runs coalesced into one.
    after = daemon.query("SELECT id, next_run_time FROM scheduler_jobs ORDER BY id")
    assert [job for job, _ in after] == SWEEP_JOBS
    assert all(next_run > time.time() + 3000 for _, next_run in after)
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert [t["job"] for t in status["sla"]["timers"]] == SWEEP_JOBS
    assert status["sla"]["response_breached"][0]["case"] == 1
    assert daemon.stop() == 0
    assert len(sink.received) == 2


def test_a_customer_writes_to_the_escalation_address(make_daemon, sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    with daemon.smtp() as client:
        client.ehlo("compensar.example")
        client.mail("ana@compensar.example")
        assert client.rcpt("escalamiento@mesa.example")[0] == 250
        client.rset()
    daemon.send(opening_mail(message_id="<sla-e2e-2@compensar.example>"))
    sink.wait_for(1)
    request = opening_mail(to="escalamiento@mesa.example",
                           subject="RE: [Caso 1] TEN-1001 Caída del servicio de correo",
                           body="Solicitamos escalar el caso, es urgente.")
    daemon.send(request, rcpt=["escalamiento@mesa.example"])
    (_, answer) = sink.wait_for(2)
    daemon.settle()
    assert answer.rcpt_tos == ["ana@compensar.example"]
    assert answer.message["Subject"] == "[Caso 1] TEN-1001 Caída del servicio de correo"
    text = " ".join(answer.message.get_content().split())
    assert "Decisión: por ahora su caso no puede escalarse." in text
    assert "podrá escalarlo a su ejecutivo comercial a partir del" in text
    events = daemon.cli_json("tickets", "show", "1")["events"]
    assert [e["data"]["via"] for e in events if e["kind"] == "escalation_request"] == ["address"]
    assert daemon.stop() == 0


def test_two_daemons_on_one_database_escalate_once(make_daemon, sink: SmtpSink) -> None:
    """SPEC §6: timers run once with several workers. Both daemons sweep twice a second on
    the same database (PostgreSQL on the PostgreSQL pass, one SQLite file otherwise)."""
    first = make_daemon("w1", relay_port=sink.port, shared_db="sla", sla_sweep_interval="0.5")
    second = make_daemon("w2", relay_port=sink.port, shared_db="sla", sla_sweep_interval="0.5",
                         **({} if "postgresql" in first.database_url
                            else {"database_url": first.database_url}))
    assert second.database_url == first.database_url
    first.start()
    second.start()
    first.send(opening_mail(message_id="<sla-two@compensar.example>"))
    sink.wait_for(1)
    first.settle()
    _age_case(first, 25)  # now both daemons find it due on their next sweep
    sink.wait_for(2)
    deadline = time.monotonic() + 2.5  # several more sweeps in each daemon
    while time.monotonic() < deadline:
        assert len(sink.received) == 2, [r.rcpt_tos for r in sink.received]
        time.sleep(0.1)
    assert sink.received[1].rcpt_tos == ["ejecutivo.compensar@mesa.example"]
    assert first.query("SELECT count(*) FROM case_actions WHERE kind = 'escalation'") == [(1,)]
    assert first.query("SELECT count(*) FROM scheduler_jobs") == [(len(SWEEP_JOBS),)]
    assert first.stop() == 0 and second.stop() == 0
