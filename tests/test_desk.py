"""The desk side, end to end (issue 17): the shipped demo rules, the real daemon over SMTP,
a relay sink out, and `mailbridge sweep --now` to move the clock.

Staff hear of every case in their queue, own it, are warned before and at an SLA breach;
the lifecycle follows seed 003 (reopen, close on request, chase a customer who does not
answer); close subjects link to the open case.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest

from tests.support.daemon import Daemon, opening_mail
from tests.support.sink import Received, SmtpSink

QUEUE_A = "agentes-a@mesa.example"
ANA = "ana@compensar.example"
CARLOS = "carlos@mesa.example"


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def desk(make_daemon, relay) -> Daemon:  # type: ignore[no-untyped-def]
    """The daemon with the shipped rules; the timers run only when a test sweeps."""
    return make_daemon(relay_port=relay.port, desk_notices=True, sla_sweep_interval="0").start()


def mails_to(relay: SmtpSink, address: str) -> list[Received]:
    return [r for r in relay.received if address in r.rcpt_tos]


def wait_mails(relay: SmtpSink, address: str, count: int, timeout: float = 20.0) -> list[Received]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = mails_to(relay, address)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{address} got {len(mails_to(relay, address))} mails, wanted {count}: "
                         f"{[(r.rcpt_tos, r.message['Subject']) for r in relay.received]}")


def reply(number: int, *, sender: str, body: str, to: list[str] | None = None,
          name: str = "") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>" if name else sender
    msg["To"] = ", ".join(to or [f"soporte+{number}@mesa.example"])
    msg["Subject"] = f"RE: [Caso {number}] TEN-1001 Caída del servicio de correo"
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg.set_content(body)
    return msg


def send(daemon: Daemon, msg: EmailMessage) -> None:
    rcpts = [a.strip() for a in str(msg["To"]).split(",")]
    daemon.send(msg, rcpt=rcpts)
    daemon.settle()


def sweep(daemon: Daemon, at: datetime) -> dict[str, Any]:
    return daemon.cli_json("sweep", "--now", at.isoformat())["sweeps"]  # type: ignore[no-any-return]


def test_the_queue_hears_of_a_new_case_and_the_first_answer_takes_it(desk, relay) -> None:
    msg = opening_mail()
    msg.add_attachment(b"2026-03-12 08:15 smtp timeout", maintype="text", subtype="plain",
                       filename="registro-servidor.log")
    desk.send(msg)
    (notice,) = wait_mails(relay, QUEUE_A, 1)
    assert notice.message["Subject"] == "[Caso 1] TEN-1001 Caída del servicio de correo"
    assert notice.message["Reply-To"].endswith("<soporte+1@mesa.example>")
    assert notice.message["Auto-Submitted"] == "auto-generated"
    text = notice.message.get_content()
    assert "Nuevo caso 1 en la cola Crítica" in text
    assert "los usuarios no reciben correos" in text  # the customer's own words
    assert "- Nombre del Cliente: Compensar" in text  # the template fields as a table
    assert "(America/Bogota)" in text  # the due time, in the desk's zone
    assert "registro-servidor.log" in text
    assert mails_to(relay, ANA)  # the customer's acknowledgement, apart
    assert desk.wait_ticket(1)["owner"] is None

    # Carlos answers from the notice (its Reply-To: the case address only).
    send(desk, reply(1, sender=CARLOS, name="Carlos Agente",
                     body="Hola Ana, ya estamos revisando el servidor de correo."))
    shown = desk.wait_ticket(1)
    assert shown["owner"] == CARLOS
    assert [e["data"]["why"] for e in shown["events"] if e["kind"] == "owner"] == ["first_answer"]
    relayed = wait_mails(relay, ANA, 2)[-1]  # the answer reached the customer
    assert "ya estamos revisando" in relayed.message.get_content()
    assert mails_to(relay, CARLOS) == []  # nothing echoed to its author

    # Ana's follow-up now goes to the owner, not to the whole queue.
    send(desk, reply(1, sender=ANA, body="Sigue igual: no llega nada desde Gmail."))
    (follow_up,) = wait_mails(relay, CARLOS, 1)
    assert "Sigue igual: no llega nada desde Gmail." in follow_up.message.get_content()
    assert len(mails_to(relay, QUEUE_A)) == 1
    assert [t["number"] for t in desk.cli_json("tickets", "list", "--owner", CARLOS)] == [1]
    assert desk.cli_json("tickets", "list", "--owner", "-") == []
    desk.stop()


def test_asignar_names_the_owner_who_is_told(desk, relay) -> None:
    desk.send(opening_mail())
    wait_mails(relay, QUEUE_A, 1)
    send(desk, reply(1, sender=CARLOS, body="#asignar laura@mesa.example"))
    assert desk.wait_ticket(1)["owner"] == "laura@mesa.example"
    (told,) = wait_mails(relay, "laura@mesa.example", 1)
    assert "le asignó el caso 1" in told.message.get_content()
    (confirmation,) = wait_mails(relay, CARLOS, 1)
    assert "propietario del caso: laura@mesa.example" in confirmation.message.get_content()
    send(desk, reply(1, sender=CARLOS, body="#asignar ana@compensar.example"))
    assert desk.wait_ticket(1)["owner"] == "laura@mesa.example"  # only staff own cases
    assert "no es de la mesa" in wait_mails(relay, CARLOS, 2)[-1].message.get_content()
    desk.stop()


def test_sla_warnings_before_and_at_the_breach_each_once(desk, relay) -> None:
    desk.send(opening_mail())  # TEN-1001 is Premium 7x24; soporte-a@ is URGENTE: 1 h
    wait_mails(relay, QUEUE_A, 1)
    opened = datetime.fromisoformat(desk.wait_ticket(1)["created_at"])
    assert sweep(desk, opened + timedelta(minutes=30))["warnings"] == {"at_risk": 0,
                                                                       "breach_told": 0}
    assert sweep(desk, opened + timedelta(minutes=46))["warnings"]["at_risk"] == 1
    assert sweep(desk, opened + timedelta(minutes=50))["warnings"]["at_risk"] == 0  # once
    at_risk = wait_mails(relay, QUEUE_A, 2)[-1]
    assert "está en riesgo" in at_risk.message.get_content()
    assert desk.cli_json("tickets", "list", "--sla", "vencido") == []
    assert sweep(desk, opened + timedelta(minutes=61))["warnings"]["breach_told"] == 1
    assert sweep(desk, opened + timedelta(minutes=90))["warnings"]["breach_told"] == 0
    breach = wait_mails(relay, QUEUE_A, 3)[-1]
    assert "venció su plazo de respuesta" in breach.message.get_content()
    assert breach.message["Subject"].startswith("[Caso 1]")
    desk.stop()


def test_an_owned_case_warns_its_owner_and_at_the_breach_the_queue_too(desk, relay) -> None:
    desk.send(opening_mail())
    wait_mails(relay, QUEUE_A, 1)
    send(desk, reply(1, sender=CARLOS, body="#asignar laura@mesa.example"))  # no answer yet
    opened = datetime.fromisoformat(desk.wait_ticket(1)["created_at"])
    sweep(desk, opened + timedelta(minutes=46))
    laura = wait_mails(relay, "laura@mesa.example", 2)  # assigned, then at risk
    assert "está en riesgo" in laura[-1].message.get_content()
    assert len(mails_to(relay, QUEUE_A)) == 1  # the queue is told only of the unowned
    sweep(desk, opened + timedelta(minutes=61))
    breach = wait_mails(relay, QUEUE_A, 2)[-1]
    assert sorted(breach.rcpt_tos) == [QUEUE_A, "laura@mesa.example"]
    desk.stop()


def test_a_resolved_case_reopens_on_a_no_and_closes_on_a_request(desk, relay) -> None:
    desk.send(opening_mail())
    wait_mails(relay, QUEUE_A, 1)
    send(desk, reply(1, sender=CARLOS, body="Corregimos el registro MX.\n#estado resuelto"))
    assert desk.wait_ticket(1)["status"] == "resuelto"
    send(desk, reply(1, sender=ANA, body="No, todavía sigue fallando."))
    shown = desk.wait_ticket(1)
    assert shown["status"] == "abierto"
    assert shown["sla"]["first_response_at"] is None  # the desk owes an answer again
    (reopened,) = wait_mails(relay, CARLOS, 2)[-1:]  # confirmation of #estado, then this
    assert "vuelve a estar abierto" in reopened.message.get_content()

    before = len(mails_to(relay, ANA))
    send(desk, reply(1, sender=ANA, body="Ya funciona, pueden cerrar el caso. Gracias."))
    assert desk.wait_ticket(1)["status"] == "cerrado"
    closing = wait_mails(relay, ANA, before + 1)[-1]
    assert "Como nos lo pidió, hemos cerrado el caso 1" in closing.message.get_content()
    assert "pidió cerrar el caso 1" in wait_mails(relay, CARLOS, 3)[-1].message.get_content()
    desk.stop()


def test_an_incomplete_case_is_chased_three_times_then_closed(desk, relay) -> None:
    desk.send(opening_mail(body="Explicación detallada del incidente: no llega el correo."))
    wait_mails(relay, QUEUE_A, 1)
    shown = desk.wait_ticket(1)
    assert shown["status"] == "incompleto" and shown["waiting_since"]
    opened = datetime.fromisoformat(shown["created_at"])
    step = timedelta(days=10) / 3
    assert sweep(desk, opened + step + timedelta(minutes=1))["chase"]["chased"] == 1
    assert sweep(desk, opened + step + timedelta(minutes=2))["chase"]["chased"] == 0
    assert sweep(desk, opened + 2 * step + timedelta(minutes=1))["chase"]["chased"] == 1
    chase = wait_mails(relay, ANA, 3)[-1]  # ack, attempt 2, attempt 3
    text = chase.message.get_content()
    assert "intento de contacto 3 de 3" in text and "Nombre del Cliente" in text
    assert sweep(desk, opened + timedelta(days=10) + timedelta(minutes=1))["chase"] == {
        "chased": 0, "chase_closed": 1}
    assert desk.wait_ticket(1)["status"] == "cerrado"
    assert "no recibimos la respuesta" in wait_mails(relay, ANA, 4)[-1].message.get_content()
    desk.stop()


def test_an_answer_stops_the_chase_and_waiting_pauses_the_clock(desk, relay) -> None:
    desk.send(opening_mail())
    wait_mails(relay, QUEUE_A, 1)
    opened = datetime.fromisoformat(desk.wait_ticket(1)["created_at"])
    send(desk, reply(1, sender=CARLOS, body="#estado esperando_cliente"))
    shown = desk.wait_ticket(1)
    assert shown["status"] == "esperando_cliente" and shown["sla"]["state"] == "en_pausa"
    due = shown["sla"]["response_due_at"]
    # Past the due time while paused: no breach, no warning.
    assert sweep(desk, opened + timedelta(hours=2))["warnings"] == {"at_risk": 0,
                                                                    "breach_told": 0}
    send(desk, reply(1, sender=ANA, body="Aquí van los datos que pidieron."))
    shown = desk.wait_ticket(1)
    assert shown["status"] == "abierto" and shown["waiting_since"] is None
    assert shown["sla"]["response_due_at"] > due  # the clock went on from the answer
    now = datetime.now(UTC)
    assert sweep(desk, now + timedelta(days=11))["chase"] == {"chased": 0, "chase_closed": 0}
    desk.stop()


def test_a_close_subject_joins_the_open_case(desk, relay) -> None:
    desk.send(opening_mail(subject="TEN-1001 Fallan los reportes"))
    wait_mails(relay, QUEUE_A, 1)
    desk.send(opening_mail(subject="TEN-1001 Falla en reportes", sender="luis@compensar.example"))
    desk.settle()
    assert desk.outcomes() == ["ticket", "reply:look-alike"]
    told = wait_mails(relay, "luis@compensar.example", 1)[0]
    assert "1" in told.message["Subject"]
    assert len(desk.cli_json("tickets", "list")) == 1
    desk.stop()
