"""The LMTP listener (RFC 2033), end to end: the real daemon, Python's smtplib.LMTP over a
unix socket and over TCP, a real relay sink for the acknowledgement.

LMTP is how Postfix and Dovecot hand mail to a local program: one reply per recipient after
the final dot, so the MTA knows for each recipient whether the mail was taken.
"""

from __future__ import annotations

import email.policy
import json
import os
import signal
import smtplib
import stat
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailbridge.settings import Settings
from tests.support.daemon import Daemon, opening_mail
from tests.support.sink import SmtpSink

SUPPORT_A, SUPPORT_B = "soporte-a@mesa.example", "soporte-b@mesa.example"


def _short_socket_path(tmp_path: Path) -> Path:
    # sun_path holds ~108 bytes: pytest's tmp_path can be longer than that.
    path = tmp_path / "lmtp.sock"
    if len(str(path)) < 100:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="lmtp-")) / "lmtp.sock"


def _data_replies(client: smtplib.LMTP, msg: EmailMessage,
                  recipients: int) -> list[tuple[int, bytes]]:
    """DATA, then every reply LMTP owes: smtplib reads the first, the rest follow it."""
    first = client.data(msg.as_bytes(policy=email.policy.SMTP))
    return [first, *(client.getreply() for _ in range(recipients - 1))]


def _lmtp_daemon(make_daemon, sink: SmtpSink, listen: str) -> Daemon:  # type: ignore[no-untyped-def]
    return make_daemon(relay_port=sink.port, lmtp_listen=listen).start()


def test_unix_socket_one_reply_per_recipient_and_a_case(make_daemon, sink, tmp_path) -> None:
    path = _short_socket_path(tmp_path)
    daemon = _lmtp_daemon(make_daemon, sink, str(path))
    assert daemon.lmtp_where == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    raw = opening_mail(to=f"{SUPPORT_A}, {SUPPORT_B}")
    with daemon.lmtp() as client:
        code, features = client.ehlo("mx.mesa.example")  # smtplib sends LHLO
        assert code == 250 and b"SMTPUTF8" in features and b"AUTH" not in features
        assert client.docmd("EHLO", "mx.mesa.example")[0] == 500  # not an LMTP command
        assert client.mail("ana@compensar.example")[0] == 250
        assert client.rcpt(SUPPORT_A)[0] == 250
        code, text = client.rcpt("alguien@otro-dominio.example")
        assert code == 550 and b"not a support address" in text
        assert client.rcpt(SUPPORT_B)[0] == 250
        replies = _data_replies(client, raw, 2)
    assert [code for code, _ in replies] == [250, 250]
    assert f"<{SUPPORT_A}>".encode() in replies[0][1] and f"<{SUPPORT_B}>".encode() in replies[1][1]
    (row,) = daemon.query("SELECT channel, mail_from, rcpt_tos, source FROM inbound")
    assert row[0] == "lmtp" and row[1] == "ana@compensar.example"
    rcpts = json.loads(row[2]) if isinstance(row[2], str) else row[2]
    assert rcpts == [SUPPORT_A, SUPPORT_B] and row[3] == "unix"
    stored = daemon.query("SELECT raw FROM inbound_raw")[0][0]
    assert b"(mailbridge) with LMTP" in bytes(stored).split(b"\r\n\r\n")[0]
    (ack,) = sink.wait_for(1)
    assert ack.rcpt_tos == ["ana@compensar.example"]
    assert "[Caso 1]" in str(ack.message["Subject"])
    ticket = daemon.wait_ticket(1)
    assert ticket["priority"] == "A"  # the higher of the two support addresses
    _, metrics = daemon.http_get("/metrics")
    assert b'mailbridge_mails_received_total{channel="lmtp",outcome="stored"} 1.0' in metrics
    assert b'mailbridge_mails_received_total{channel="lmtp",outcome="rcpt_refused"} 1.0' in metrics
    _, ready = daemon.http_get("/readyz")
    assert json.loads(ready)["checks"]["lmtp"]["ok"] is True
    assert daemon.stop() == 0
    assert not path.exists()  # the socket goes with the daemon


def test_tcp_several_mails_in_one_session_beside_smtp(make_daemon, sink) -> None:
    daemon = _lmtp_daemon(make_daemon, sink, "127.0.0.1:0")
    host, port = daemon.lmtp_where
    assert host == "127.0.0.1" and port > 0 and port != daemon.smtp_port
    with daemon.lmtp() as client:
        client.ehlo("mx.mesa.example")
        for n in range(3):  # Postfix keeps an LMTP connection for several deliveries
            client.mail(f"luis{n}@compensar.example")
            client.rcpt(SUPPORT_B)
            replies = _data_replies(client, opening_mail(sender="luis@compensar.example",
                                                         to=SUPPORT_B), 1)
            assert replies[0][0] == 250 and f"<{SUPPORT_B}>".encode() in replies[0][1]
    daemon.send(opening_mail())  # SMTP goes on beside it
    sink.wait_for(4)
    assert sorted(r[0] for r in daemon.query("SELECT channel FROM inbound")) == \
        ["lmtp", "lmtp", "lmtp", "smtp"]
    assert daemon.stop() == 0


def test_storage_failure_is_451_for_each_recipient_then_250(make_daemon, sink, tmp_path) -> None:
    daemon = _lmtp_daemon(make_daemon, sink, str(_short_socket_path(tmp_path)))
    raw = opening_mail(to=f"{SUPPORT_A}, {SUPPORT_B}")
    daemon.break_spool_inserts()
    with daemon.lmtp() as client:
        client.ehlo("mx.mesa.example")
        client.mail("ana@compensar.example")
        client.rcpt(SUPPORT_A)
        client.rcpt(SUPPORT_B)
        replies = _data_replies(client, raw, 2)
        assert [code for code, _ in replies] == [451, 451]
        assert all(b"4.3.0" in text and b"not stored" in text for _, text in replies)
        assert daemon.query("SELECT count(*) FROM inbound")[0][0] == 0
        daemon.break_spool_inserts(False)
        # The MTA keeps the mail and tries again: now it is taken, once.
        client.mail("ana@compensar.example")
        client.rcpt(SUPPORT_A)
        client.rcpt(SUPPORT_B)
        assert [code for code, _ in _data_replies(client, raw, 2)] == [250, 250]
    assert daemon.query("SELECT count(*) FROM inbound")[0][0] == 1
    _, metrics = daemon.http_get("/metrics")
    assert b'mailbridge_mails_received_total{channel="lmtp",outcome="tempfail"} 1.0' in metrics
    sink.wait_for(1)
    assert daemon.stop() == 0


def test_too_big_is_552_for_each_recipient(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port, lmtp_listen="127.0.0.1:0",
                         max_message_size="2000").start()
    with daemon.lmtp() as client:
        client.ehlo("mx.mesa.example")
        client.mail("ana@compensar.example")
        client.rcpt(SUPPORT_A)
        client.rcpt(SUPPORT_B)
        replies = _data_replies(client, opening_mail(body="x " * 2500), 2)
        assert [code for code, _ in replies] == [552, 552]
        assert client.noop()[0] == 250  # the session goes on in step
    assert daemon.query("SELECT count(*) FROM inbound")[0][0] == 0
    daemon.stop()


def test_a_socket_left_by_a_killed_daemon_is_replaced(make_daemon, sink, tmp_path) -> None:
    path = _short_socket_path(tmp_path)
    daemon = _lmtp_daemon(make_daemon, sink, str(path))
    daemon.stop(signal.SIGKILL)
    assert path.exists()  # nobody removed it
    daemon.start()
    with daemon.lmtp() as client:
        assert client.ehlo("mx.mesa.example")[0] == 250
    # A second daemon on the same socket is refused while the first one answers.
    other_dir = daemon.data_dir.parent / "other"
    settings = {k: v for k, v in daemon.env.items() if k.startswith("MAILBRIDGE_")}
    other = Daemon(other_dir, {**settings, "MAILBRIDGE_DATA_DIR": str(other_dir)})
    other.upgrade()
    with pytest.raises(AssertionError, match="another process listens"):
        other.start(timeout=15)
    assert daemon.stop() == 0


def test_lmtp_address_setting(tmp_path) -> None:
    def address(value: str | None) -> object:
        return Settings(lmtp_listen=value, data_dir=tmp_path, _env_file=None).lmtp_address

    assert address(None) is None
    assert address("127.0.0.1:2424") == ("127.0.0.1", 2424)
    assert address("[::1]:24") == ("::1", 24)
    assert address("localhost") == ("localhost", 24)  # LMTP's own port
    assert address("/run/mailbridge/lmtp.sock") == "/run/mailbridge/lmtp.sock"
    assert os.path.basename(str(address("./var/lmtp.sock"))) == "lmtp.sock"
