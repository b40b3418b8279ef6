"""Hostile round 2, end to end: SMTP in to the real daemon, a real relay sink out.

One stranger's internationalised address must not stop every acknowledgement; a Cc list
must not turn an acknowledgement into a mailing; a forged From must not make us mail a
victim (RFC 3834 §4); several support addresses give the highest priority.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from tests.support.daemon import Daemon, opening_mail
from tests.support.sink import Received, SmtpSink


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()  # no SMTPUTF8, like many older relays
    yield sink
    sink.stop()


def _send_raw(daemon: Daemon, msg: EmailMessage, *, mail_from: str, rcpt: list[str],
              smtputf8: bool = False) -> None:
    with daemon.smtp() as client:
        client.ehlo()
        options = ["SMTPUTF8"] if smtputf8 else []
        data = msg.as_bytes(policy=msg.policy.clone(utf8=smtputf8))
        client.sendmail(mail_from, rcpt, data, mail_options=options)


def _stranger_mail(sender: str, subject: str = "Necesito ayuda urgente") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "soporte-a@mesa.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@stranger.example>"
    msg.set_content("Hola, ¿me pueden ayudar?")
    return msg


def _wait(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _acks(relay: SmtpSink) -> list[Received]:
    return [r for r in relay.received if "[Caso" in str(r.message["Subject"])]


def test_an_internationalised_stranger_does_not_stop_the_next_acknowledgement(
        make_daemon, relay) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    # The stranger's refusal needs SMTPUTF8, which this relay does not offer.
    _send_raw(daemon, _stranger_mail("jdöe@mächine.example"), mail_from="jdöe@mächine.example",
              rcpt=["soporte-a@mesa.example"], smtputf8=True)
    daemon.send(opening_mail())
    ack = _wait(lambda: _acks(relay))[0]
    assert ack.rcpt_tos == ["ana@compensar.example"]
    status = _wait(lambda: (s := daemon.cli_json("status", "--json"))["outbox"]["failed"] and s)
    (failure,) = status["outbox"]["recent_failures"]
    assert failure["kind"] == "refusal" and "SMTPUTF8" in failure["error"]
    assert status["outbox"]["pending"] == 0
    time.sleep(1.0)  # what a hot loop would fill the log with in a second
    log = daemon.log_path.read_text()
    assert log.count('"outbound refused"') == 1
    assert "outbox pass failed" not in log
    _, metrics = daemon.http_get("/metrics")
    assert b"mailbridge_outbox_failed 1.0" in metrics
    # The internationalised mail itself was stored and answered where it could be: no case,
    # its refusal recorded as failed, nothing lost.
    outcomes = daemon.outcomes()
    assert outcomes[0].startswith("refused:unknown-sender") and outcomes[1] == "ticket"
    daemon.stop()


def test_a_relay_with_smtputf8_gets_the_internationalised_refusal(make_daemon) -> None:
    relay = SmtpSink(smtputf8=True).start()
    try:
        daemon = make_daemon(relay_port=relay.port).start()
        _send_raw(daemon, _stranger_mail("jdöe@mächine.example"),
                  mail_from="jdöe@mächine.example", rcpt=["soporte-a@mesa.example"],
                  smtputf8=True)
        (refusal,) = _wait(lambda: relay.received)
        assert refusal.rcpt_tos == ["jdöe@mächine.example"]
        assert "jdöe@mächine.example" in refusal.raw.decode("utf-8")
        daemon.stop()
    finally:
        relay.stop()


def test_outsiders_in_cc_are_recorded_not_mailed_until_staff_add_one(make_daemon, relay) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    outsiders = [f"persona{i}@otra-empresa.example" for i in range(30)]
    msg = opening_mail()
    msg["Cc"] = ", ".join(["luis@compensar.example", "pedro@compensar.example", *outsiders])
    daemon.send(msg)
    (ack,) = _wait(lambda: _acks(relay))
    # The sender, a registered contact, a colleague of the tenant's own domain: no outsider.
    assert sorted(ack.rcpt_tos) == ["ana@compensar.example", "luis@compensar.example",
                                    "pedro@compensar.example"]
    assert "otra-empresa" not in str(ack.message["Cc"])
    shown = daemon.wait_ticket(1)
    assert shown["cc"] == ["luis@compensar.example", "pedro@compensar.example"]
    assert shown["cc_held"] == outsiders
    # Staff add one outsider; the next mail the desk sends on the case reaches them.
    reply = EmailMessage()
    reply["From"] = "Carlos Agente <carlos@mesa.example>"
    reply["To"] = "soporte+1@mesa.example"
    reply["Subject"] = "Re: [Caso 1] TEN-1001 Caída del servicio de correo"
    reply["Message-ID"] = f"<{time.time_ns()}@mesa.example>"
    reply.set_content("#cc persona7@otra-empresa.example\n\nEstamos revisando el servidor.")
    daemon.send(reply)
    answer = _wait(lambda: [r for r in relay.received if "ana@compensar.example" in r.rcpt_tos
                            and r is not ack])
    assert "persona7@otra-empresa.example" in answer[0].rcpt_tos
    assert "persona8@otra-empresa.example" not in answer[0].rcpt_tos
    confirmation = _wait(lambda: [r for r in relay.received
                                  if r.rcpt_tos == ["carlos@mesa.example"]])
    assert "persona7@otra-empresa.example" in confirmation[0].message.get_content()
    shown = daemon.wait_ticket(1)
    assert "persona7@otra-empresa.example" in shown["cc"]
    assert "persona7@otra-empresa.example" not in shown["cc_held"]
    daemon.stop()


def test_a_staff_reply_all_does_not_release_the_held_outsiders(make_daemon, relay) -> None:
    """Reply-all carries everyone on the thread: only someone staff copy anew is vouched for."""
    daemon = make_daemon(relay_port=relay.port).start()
    outsiders = [f"persona{i}@otra-empresa.example" for i in range(5)]
    msg = opening_mail()
    msg["Cc"] = ", ".join(outsiders)
    daemon.send(msg)
    _wait(lambda: _acks(relay))
    reply = EmailMessage()
    reply["From"] = "Carlos Agente <carlos@mesa.example>"
    reply["To"] = "ana@compensar.example, soporte+1@mesa.example"
    reply["Cc"] = ", ".join([*outsiders, "tecnico@proveedor.example"])
    reply["Subject"] = "Re: [Caso 1] TEN-1001 Caída del servicio de correo"
    reply["Message-ID"] = f"<{time.time_ns()}@mesa.example>"
    reply.set_content("Estamos revisando el servidor; copio a nuestro técnico.")
    daemon.send(reply, rcpt=["soporte+1@mesa.example"])
    daemon.settle()
    shown = daemon.wait_ticket(1)
    assert shown["cc"] == ["tecnico@proveedor.example"]
    assert shown["cc_held"] == outsiders
    daemon.stop()


def test_automatic_mail_goes_to_ten_people_at_most(make_daemon, relay) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    colleagues = [f"colega{i}@compensar.example" for i in range(15)]
    msg = opening_mail()
    msg["Cc"] = ", ".join(colleagues)
    daemon.send(msg)
    (ack,) = _wait(lambda: _acks(relay))
    assert len(ack.rcpt_tos) == 10
    assert "ana@compensar.example" in ack.rcpt_tos  # the sender first, always
    assert len(daemon.wait_ticket(1)["cc"]) == 15  # all recorded
    daemon.stop()


@pytest.mark.parametrize(("header_from", "envelope", "answered"), [
    ("victima@victima.example", "atacante@malo.example", False),  # forged From: no backscatter
    ("juan@desconocido.example", "juan@desconocido.example", True),  # the same address
    ("juan@desconocido.example", "prvs=1234abcd=juan@desconocido.example", True),  # BATV
    ("MAILER-DAEMON@desconocido.example", "mailer-daemon@desconocido.example", False),
    ("postmaster@desconocido.example", "postmaster@desconocido.example", False),
    ("juan@desconocido.example", "", False),  # null envelope sender
])
def test_refusals_go_only_to_an_envelope_sender_that_wrote_the_mail(
        make_daemon, relay, header_from: str, envelope: str, answered: bool) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    _send_raw(daemon, _stranger_mail(header_from), mail_from=envelope,
              rcpt=["soporte-a@mesa.example"])
    daemon.send(opening_mail())  # a known mail after it: when its ack is out, all is settled
    _wait(lambda: _acks(relay))
    daemon.settle()
    refusals = [r for r in relay.received if not r.message["Subject"].startswith("[Caso")]
    if answered:
        (refusal,) = refusals
        assert refusal.rcpt_tos == [envelope]
    else:
        assert refusals == []
        _, metrics = daemon.http_get("/metrics")
        assert b"mailbridge_auto_replies_withheld_total" in metrics
    assert daemon.outcomes()[0].startswith("refused:")  # kept, with its outcome
    daemon.stop()


def test_several_support_addresses_give_the_highest_priority(make_daemon, relay) -> None:
    daemon = make_daemon(relay_port=relay.port).start()
    msg = opening_mail(to="soporte-c@mesa.example, soporte-a@mesa.example")
    with daemon.smtp() as client:
        client.send_message(msg, to_addrs=["soporte-c@mesa.example", "soporte-a@mesa.example"])
    case = daemon.wait_ticket(1)
    assert case["priority"] == "A"
    daemon.stop()


def test_a_half_written_outbound_file_is_cleaned_on_start(make_daemon) -> None:
    daemon = make_daemon()
    tmp = daemon.data_dir / "outbound" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    import socket

    leftover = tmp / f"mb{'a' * 32}.{socket.gethostname()}.{2 ** 22 + 3}"
    leftover.write_bytes(b"Return-Path: <soporte@mesa.example>\r\nSubject: [Caso")
    daemon.start()
    assert not leftover.exists()
    daemon.send(opening_mail())
    maildir = daemon.data_dir / "outbound" / "new"
    (written,) = _wait(lambda: list(maildir.iterdir()))
    assert b"[Caso 1]" in written.read_bytes()
    assert list(tmp.iterdir()) == []
    daemon.stop()


def test_check_config_refuses_a_relay_password_in_clear(make_daemon) -> None:
    daemon = make_daemon()
    daemon.env.update({"MAILBRIDGE_RELAY": "smtp.mesa.example:587",
                       "MAILBRIDGE_RELAY_USER": "mesa", "MAILBRIDGE_RELAY_PASSWORD": "secreto"})
    result = daemon.cli("check-config", check=False)
    assert result.returncode == 78
    assert b"not be encrypted" in result.stderr
    assert b"secreto" not in result.stderr + result.stdout
    daemon.env["MAILBRIDGE_RELAY_STARTTLS"] = "true"
    result = daemon.cli("check-config", check=False)
    assert result.returncode == 0, result.stderr
    assert b"starttls" in result.stdout


def test_smtplib_refuses_what_the_relay_test_relies_on() -> None:
    """The premise of the first test: smtplib cannot send a UTF-8 address without SMTPUTF8."""
    sink = SmtpSink().start()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            with pytest.raises((UnicodeEncodeError, smtplib.SMTPNotSupportedError)):
                client.sendmail("a@b.example", ["jdöe@mächine.example"], b"Subject: x\r\n\r\nx")
    finally:
        sink.stop()
