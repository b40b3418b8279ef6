"""The SMTP listener, end to end: real daemon, real client, real relay sink."""

from __future__ import annotations

import signal
import smtplib
import time

import pytest

from tests.support.daemon import free_port, opening_mail
from tests.support.sink import SmtpSink


def _inbound_count(daemon) -> int:  # type: ignore[no-untyped-def]
    return int(daemon.query("SELECT count(*) FROM inbound")[0][0])


def test_ack_reaches_sender_with_case_number(make_daemon, sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    msg = opening_mail(message_id="<apertura-1@compensar.example>")
    sent_at = time.monotonic()
    daemon.send(msg)

    (ack,) = sink.wait_for(1)
    latency = time.monotonic() - sent_at
    reply = ack.message
    assert ack.rcpt_tos == ["ana@compensar.example"]
    assert reply["Subject"] == "[Caso 1] TEN-1001 Caída del servicio de correo"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<apertura-1@compensar.example>"
    assert "<apertura-1@compensar.example>" in reply["References"]
    assert reply["Message-ID"].endswith("@mesa.example>")
    assert reply["Reply-To"].addresses[0].addr_spec == "soporte+1@mesa.example"
    body = reply.get_content()
    assert "caso número 1" in body
    assert "Compensar" in body

    ticket = daemon.wait_ticket(1)
    assert ticket["tenant_id"] == "TEN-1001"
    assert ticket["priority"] == "A"
    assert ticket["status"] == "abierto"
    assert ticket["subject"] == "TEN-1001 Caída del servicio de correo"
    assert ticket["sender"] == "ana@compensar.example"
    assert ticket["acked_at"] is not None
    assert [o["state"] for o in ticket["outbound"]] == ["sent"]
    print(f"250 → ack received by the relay sink in {latency * 1000:.0f} ms")
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("address", "priority"),
    [("soporte-b@mesa.example", "B"), ("SOPORTE-C@mesa.example", "C")],
)
def test_recipient_address_decides_priority(make_daemon, sink, address, priority) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    daemon.send(opening_mail(sender="maria@lafise.example", to=address,
                             subject="TEN-2002 No puedo ingresar a INBOUND"))
    sink.wait_for(1)
    ticket = daemon.wait_ticket(1)
    assert ticket["priority"] == priority
    assert ticket["tenant_id"] == "TEN-2002"
    daemon.stop()


def test_unknown_recipient_gets_550_and_nothing_is_stored(make_daemon) -> None:
    daemon = make_daemon().start()
    with daemon.smtp() as client:
        client.ehlo("cliente.example")
        client.mail("ana@compensar.example")
        code, text = client.rcpt("alguien@otro-dominio.example")
        assert code == 550
        assert b"not a support address" in text
        code, _ = client.rcpt("soporte-z@mesa.example")
        assert code == 550
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@compensar.example", ["victim@elsewhere.example"], b"Subject: x\r\n\r\nx")
    assert _inbound_count(daemon) == 0
    daemon.stop()


def test_oversize_gets_552(make_daemon) -> None:
    daemon = make_daemon(max_message_size=20_000).start()
    big = opening_mail(body="Registro de errores del servidor de correo.\n" * 1000)
    # smtplib declares SIZE=… in MAIL FROM: refused there.
    with daemon.smtp() as client, pytest.raises(smtplib.SMTPSenderRefused) as declared:
        client.send_message(big)
    assert declared.value.smtp_code == 552
    # Without a declared size the DATA itself is refused.
    with daemon.smtp() as client:
        client.ehlo("cliente.example")
        assert client.mail("ana@compensar.example")[0] == 250
        assert client.rcpt("soporte-a@mesa.example")[0] == 250
        code, _ = client.data(big.as_bytes().replace(b"\n", b"\r\n"))
        assert code == 552
    assert _inbound_count(daemon) == 0
    daemon.stop()


def test_too_many_recipients_gets_452(make_daemon) -> None:
    daemon = make_daemon(max_recipients=2).start()
    with daemon.smtp() as client:
        client.ehlo("cliente.example")
        client.mail("ana@compensar.example")
        assert client.rcpt("soporte-a@mesa.example")[0] == 250
        assert client.rcpt("soporte-b@mesa.example")[0] == 250
        assert client.rcpt("soporte-c@mesa.example")[0] == 452
    daemon.stop()


def test_storage_failure_gets_451_and_nothing_is_stored(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    # A real database fault: every insert into the spool aborts.
    daemon.break_spool_inserts()
    with daemon.smtp() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.send_message(opening_mail())
    assert refused.value.smtp_code == 451
    assert _inbound_count(daemon) == 0
    assert daemon.cli_json("tickets", "list") == []

    # The fault clears: the next delivery works without a restart.
    daemon.break_spool_inserts(False)
    daemon.send(opening_mail())
    sink.wait_for(1)
    assert _inbound_count(daemon) == 1
    daemon.stop()


def test_relay_down_then_up_delivers_the_ack_once(make_daemon) -> None:
    relay_port = free_port()
    daemon = make_daemon(relay_port=relay_port).start()
    daemon.send(opening_mail())
    ticket = daemon.wait_ticket(1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ticket = daemon.wait_ticket(1)
        if ticket["outbound"] and ticket["outbound"][0]["attempts"] >= 2:
            break
        time.sleep(0.1)
    assert ticket["outbound"][0]["state"] == "pending"
    assert ticket["outbound"][0]["attempts"] >= 2  # it did try, and failed

    relay = SmtpSink(port=relay_port).start()
    try:
        relay.wait_for(1, timeout=20)
        time.sleep(1.5)  # long enough for a wrong second delivery to show up
        assert len(relay.received) == 1
        assert relay.received[0].message["Subject"].startswith("[Caso 1]")
    finally:
        relay.stop()
    assert daemon.wait_ticket(1)["outbound"][0]["state"] == "sent"
    daemon.stop()


def test_restart_with_queued_outbox_delivers_once(make_daemon) -> None:
    relay_port = free_port()
    daemon = make_daemon(relay_port=relay_port).start()
    daemon.send(opening_mail())
    daemon.send(opening_mail(to="soporte-c@mesa.example", subject="TEN-1001 Consulta de facturación"))
    daemon.wait_ticket(2)
    assert daemon.stop() == 0

    relay = SmtpSink(port=relay_port).start()
    try:
        daemon.start()
        got = relay.wait_for(2, timeout=20)
        time.sleep(1.5)
        assert len(relay.received) == 2
        subjects = sorted(r.message["Subject"] for r in got)
        assert subjects[0].startswith("[Caso 1]") and subjects[1].startswith("[Caso 2]")
        assert len({r.message["Message-ID"] for r in relay.received}) == 2
    finally:
        relay.stop()
    daemon.stop()


def test_sigterm_drains_and_exits_zero(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    for n in range(5):
        daemon.send(opening_mail(subject=f"TEN-1001 Incidente {n}"))
    assert daemon.stop(signal.SIGTERM) == 0
    # Everything acknowledged with 250 was turned into a case before exit.
    cases = daemon.cli_json("tickets", "list")
    assert len(cases) == 5
    assert "mailbridge stopped" in daemon.log_tail()


def test_health_endpoints(make_daemon) -> None:
    daemon = make_daemon().start()
    assert daemon.http_get("/healthz")[0] == 200
    status, body = daemon.http_get("/readyz")
    assert status == 200 and b'"ready": true' in body
    daemon.stop()


def test_no_relay_writes_outbound_to_maildir(make_daemon) -> None:
    daemon = make_daemon().start()
    daemon.send(opening_mail())
    maildir = daemon.data_dir / "outbound" / "new"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not list(maildir.glob("*")):
        time.sleep(0.05)
    (path,) = list(maildir.glob("*"))
    assert b"Subject: [Caso 1] TEN-1001" in path.read_bytes()
    daemon.stop()
