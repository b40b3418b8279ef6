"""Each outbox row succeeds or fails on its own, against real relays (hostile round 2).

An internationalised address, a 550 for one recipient, a relay answering 421 for a while,
TLS that must be verified: one mail's trouble never stops the others, and every failure
is recorded on its row, its case and in `status`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from mailbridge.db import Database
from mailbridge.outbound.outbox import STATE_FAILED, STATE_PENDING, STATE_SENT
from mailbridge.outbound.render import Draft
from mailbridge.outbound.sender import MaildirTransport, OutboxSender, _maildir_name
from mailbridge.settings import Settings
from mailbridge.status import status_report
from tests.outbound.test_sender import add_case, events, queue, rows
from tests.support.sink import SmtpSink
from tests.support.tls import Certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sinks() -> Iterator[list[SmtpSink]]:
    started: list[SmtpSink] = []
    yield started
    for sink in started:
        sink.stop()


def _start(sinks: list[SmtpSink], **options: Any) -> SmtpSink:
    sink = SmtpSink(**options).start()
    sinks.append(sink)
    return sink


def _sender(db: Database, settings: Settings, port: int, **changes: Any) -> OutboxSender:
    return OutboxSender(db, settings.model_copy(update={"relay": f"127.0.0.1:{port}", **changes}))


def test_an_internationalised_address_fails_alone_where_the_relay_lacks_smtputf8(
        db, settings, sinks) -> None:
    relay = _start(sinks)  # aiosmtpd without SMTPUTF8
    case = add_case(db)
    stranger = queue(db, None, kind="refusal", to=("jdöe@mächine.example",))
    ack = queue(db, case)
    result = _sender(db, settings, relay.port).send_due()
    assert (result.sent, result.failed, result.deferred) == (1, 1, 0)
    state = rows(db)
    assert state[ack]["state"] == STATE_SENT
    assert state[stranger]["state"] == STATE_FAILED
    assert "SMTPUTF8" in state[stranger]["last_error"]
    assert [r.message["Message-ID"] for r in relay.received] == [ack]
    with db.reader() as session:
        report = status_report(session)
    assert report["outbox"]["failed"] == 1
    (failure,) = report["outbox"]["recent_failures"]
    assert failure["rcpt_tos"] == ["jdöe@mächine.example"] and "SMTPUTF8" in failure["error"]
    # Failed for good: the next pass does not try it again.
    assert _sender(db, settings, relay.port).send_due().failed == 0
    assert len(relay.mail_commands) == 1


def test_an_internationalised_address_goes_with_smtputf8_where_offered(db, settings, sinks) -> None:
    relay = _start(sinks, smtputf8=True)
    case = add_case(db)
    queue(db, case, to=("jdöe@mächine.example",))
    result = _sender(db, settings, relay.port).send_due()
    assert result.sent == 1
    (got,) = relay.received
    assert got.rcpt_tos == ["jdöe@mächine.example"]
    assert "SMTPUTF8" in [o.upper() for o in relay.mail_commands[0][1]]


def test_an_ascii_local_part_at_an_idn_domain_needs_no_smtputf8(db, settings, sinks,
                                                                rules) -> None:
    """The ack for a customer at an internationalised domain, rendered and sent for real."""
    from mailbridge.outbound.outbox import insert_outbox_mail

    relay = _start(sinks)
    case = add_case(db)
    draft = Draft(template="staff_answer.txt.j2", to=["jose@mächine.example"], subject="Señal",
                  from_address="soporte@mesa.example", from_name="Mesa de Soporte",
                  context={"desk": rules.desk, "ticket": {"number": 7},
                           "body": "Hola", "agent_name": "Ana"})
    with db.transaction() as session:
        insert_outbox_mail(session, draft, kind="staff_answer", ticket_id=case)
    assert _sender(db, settings, relay.port).send_due().sent == 1
    (got,) = relay.received
    assert got.rcpt_tos == ["jose@xn--mchine-bua.example"]
    assert got.message["To"] == "jose@xn--mchine-bua.example"
    assert relay.mail_commands[0][1] == [] or "SMTPUTF8" not in relay.mail_commands[0][1]


def test_a_refused_copy_is_recorded_and_the_others_get_the_mail(db, settings, sinks) -> None:
    relay = _start(sinks)
    relay.handler.refuse = {"nadie@compensar.example"}
    case = add_case(db)
    both = queue(db, case, to=("ana@compensar.example", "nadie@compensar.example"))
    assert _sender(db, settings, relay.port).send_due().sent == 1
    assert rows(db)[both]["state"] == STATE_SENT
    assert relay.received[0].rcpt_tos == ["ana@compensar.example"]
    (partly,) = events(db, "outbound_partly_refused")
    assert partly["message_id"] == both and "550" in partly["refused"]["nadie@compensar.example"]


def test_a_temporary_refusal_of_one_mail_does_not_hold_the_others(db, settings) -> None:
    from tests.outbound.test_sender import _Relay

    relay = SmtpSink()
    relay.handler = _Relay()  # type: ignore[assignment]
    relay.start()
    try:
        case = add_case(db)
        slow = queue(db, case, to=("demora@compensar.example",))
        fine = queue(db, case)
        sender = _sender(db, settings, relay.port, outbox_retry_base=60.0)
        result = sender.send_due()
        assert (result.sent, result.deferred) == (1, 1)
        state = rows(db)
        assert state[slow]["state"] == STATE_PENDING and "451" in state[slow]["last_error"]
        assert state[fine]["state"] == STATE_SENT
        assert not sender.paused()  # the relay itself is fine
    finally:
        relay.stop()


def test_a_relay_saying_421_rests_then_gets_each_mail_once(db, settings, sinks) -> None:
    relay = _start(sinks)
    relay.handler.busy_until = time.monotonic() + 0.6
    case = add_case(db)
    ids = [queue(db, case) for _ in range(3)]
    sender = _sender(db, settings, relay.port, outbox_retry_base=0.2, outbox_retry_max=0.5)
    first = sender.send_due()
    assert (first.sent, first.deferred) == (0, 1)  # one try, then the relay rests
    assert len(relay.mail_commands) == 1 and sender.paused()
    assert sender.send_due().deferred == 0  # resting: nothing tried
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(relay.received) < 3:
        if not sender.paused():
            sender.send_due()
        time.sleep(0.05)
    assert sorted(r.message["Message-ID"] for r in relay.received) == sorted(ids)
    assert all(row["state"] == STATE_SENT for row in rows(db).values())


class _BrokenFor:
    """A fault: the transport raises an unexpected error for one Message-ID."""

    def __init__(self, inner: Any, message_id: str) -> None:
        self.inner, self.message_id = inner, message_id

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def release(self) -> None:
        self.inner.release()

    def expire(self) -> float | None:
        return self.inner.expire()  # type: ignore[no-any-return]

    def send(self, mail_from: str, rcpt_tos: list[str], raw: bytes, message_id: str) -> Any:
        if message_id == self.message_id:
            raise KeyError("a fault nobody foresaw")
        return self.inner.send(mail_from, rcpt_tos, raw, message_id)


def test_an_unexpected_error_fails_that_mail_alone(db, settings, sinks) -> None:
    relay = _start(sinks)
    case = add_case(db)
    bad, good = queue(db, case), queue(db, case)
    sender = _sender(db, settings, relay.port)
    sender.transport = _BrokenFor(sender.transport, bad)  # type: ignore[assignment]
    result = sender.send_due()
    assert (result.sent, result.failed) == (1, 1)
    state = rows(db)
    assert state[bad]["state"] == STATE_FAILED and "a fault nobody foresaw" in state[bad]["last_error"]
    assert state[good]["state"] == STATE_SENT
    assert [e["message_id"] for e in events(db, "outbound_failed")] == [bad]


# -- TLS to the relay ---------------------------------------------------------------------

def test_starttls_to_a_self_signed_relay_is_refused(db, settings, sinks, certs) -> None:
    relay = _start(sinks, starttls=certs.server_context(self_signed=True))
    case = add_case(db)
    ack = queue(db, case)
    sender = _sender(db, settings, relay.port, relay_starttls=True)
    assert sender.send_due().deferred == 1
    assert "CERTIFICATE_VERIFY_FAILED" in rows(db)[ack]["last_error"]
    assert relay.received == [] and sender.paused()


def test_starttls_with_the_private_ca_is_accepted_and_auth_goes_encrypted(
        db, settings, sinks, certs) -> None:
    relay = _start(sinks, starttls=certs.server_context(), auth={"mesa": "s3creto"})
    case = add_case(db)
    queue(db, case)
    sender = _sender(db, settings, relay.port, relay_starttls=True, relay_ca_file=certs.ca_file,
                     relay_user="mesa", relay_password=SecretStr("s3creto"))
    assert sender.send_due().sent == 1
    assert relay.logins == [("mesa", True)]
    assert len(relay.received) == 1


def test_starttls_checks_the_host_name(db, settings, sinks, certs) -> None:
    """The CA is trusted, but its certificate names localhost and 127.0.0.1, not 127.0.0.2."""
    relay = _start(sinks, starttls=certs.server_context(), host="127.0.0.2")
    case = add_case(db)
    ack = queue(db, case)
    sender = OutboxSender(db, settings.model_copy(update={
        "relay": f"127.0.0.2:{relay.port}", "relay_starttls": True,
        "relay_ca_file": certs.ca_file}))
    assert sender.send_due().deferred == 1
    assert "doesn't match" in rows(db)[ack]["last_error"] or \
        "mismatch" in rows(db)[ack]["last_error"].lower()
    assert relay.received == []


def test_implicit_tls_is_verified(db, settings, sinks, certs) -> None:
    trusted = _start(sinks, implicit_tls=certs.server_context())
    untrusted = _start(sinks, implicit_tls=certs.server_context(self_signed=True))
    case = add_case(db)
    queue(db, case)
    refused = _sender(db, settings, untrusted.port, relay_tls=True, outbox_retry_base=0.0)
    assert refused.send_due().deferred == 1
    assert untrusted.received == []
    ok = _sender(db, settings, trusted.port, relay_tls=True, relay_ca_file=certs.ca_file,
                 outbox_retry_base=0.0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not trusted.received:
        ok.paused_until = 0.0
        ok.send_due()
        time.sleep(0.05)
    assert len(trusted.received) == 1


def test_a_password_is_never_configured_for_a_clear_relay_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not be encrypted"):
        Settings(data_dir=tmp_path, relay="smtp.mesa.example:587", relay_user="mesa",
                 relay_password="x")
    for relay in ("127.0.0.1:2525", "localhost:25", "[::1]:25"):
        Settings(data_dir=tmp_path, relay=relay, relay_user="mesa", relay_password="x")
    assert Settings(data_dir=tmp_path, relay="smtp.mesa.example:465").relay_security == "tls"
    assert Settings(data_dir=tmp_path, relay="smtp.mesa.example:587",
                    relay_starttls=True).relay_security == "starttls"
    with pytest.raises(ValidationError, match="exclude each other"):
        Settings(data_dir=tmp_path, relay="smtp.mesa.example:465", relay_tls=True,
                 relay_starttls=True)


# -- the Maildir transport ----------------------------------------------------------------

def test_maildir_cleans_what_a_killed_writer_left_and_never_writes_a_mail_twice(
        tmp_path: Path) -> None:
    root = tmp_path / "outbound"
    (root / "tmp").mkdir(parents=True)
    dead_pid = 2 ** 22 + 17  # above the default pid_max: no such process
    import socket

    host = socket.gethostname()
    leftover = root / "tmp" / f"mb{'0' * 32}.{host}.{dead_pid}"
    leftover.write_bytes(b"Subject: half")
    alive = root / "tmp" / f"mb{'1' * 32}.{host}.{os.getpid()}"
    alive.write_bytes(b"Subject: being written")
    transport = MaildirTransport(root)
    assert not leftover.exists() and alive.exists()
    raw = b"Subject: una vez\r\n\r\nHola\r\n"
    transport.send("soporte@mesa.example", ["ana@compensar.example"], raw, "<uno@mesa.example>")
    transport.send("soporte@mesa.example", ["ana@compensar.example"], raw, "<uno@mesa.example>")
    (written,) = list((root / "new").iterdir())
    assert written.name == _maildir_name("<uno@mesa.example>")
    assert written.read_bytes().endswith(raw)


def test_a_dead_workers_marker_is_taken_over_and_its_mail_not_sent_again(
        db, settings, sinks) -> None:
    """PostgreSQL workers may share a data directory: each keeps its own marker, and the
    next one to start on this host records what a killed one had handed to the relay."""
    import socket

    if db.is_sqlite:
        pytest.skip("SQLite has one marker for its one daemon (test_sender.py)")
    relay = _start(sinks)
    case = add_case(db)
    handed, other = queue(db, case), queue(db, case)
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    dead = run_dir / f"outbox-accepted.{socket.gethostname()}.{2 ** 22 + 5}"
    dead.write_bytes(f"{handed}\n".encode().ljust(64 * 1024, b"\0"))
    result = _sender(db, settings, relay.port).send_due()
    assert result.sent == 1
    assert [r.message["Message-ID"] for r in relay.received] == [other]
    assert rows(db)[handed]["state"] == STATE_SENT
    assert not dead.exists()
