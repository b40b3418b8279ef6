"""Inbound STARTTLS (issue 19.2), end to end: the real daemon with a certificate signed by the
test CA (tests/support/tls.py), smtplib verifying it, SIGHUP loading a new one, and the
option that refuses mail before STARTTLS. Then SMTPUTF8 over it, through to a TLS relay.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.test_round2 import _stranger_mail
from tests.support.daemon import Daemon, opening_mail
from tests.support.sink import SmtpSink
from tests.support.tls import Certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def served(tmp_path: Path, certs: Certificates) -> tuple[Path, Path]:
    """Copies of the CA-signed certificate and key that a test may replace."""
    cert, key = tmp_path / "listener.pem", tmp_path / "listener.key"
    shutil.copy(certs.cert_file, cert)
    shutil.copy(certs.key_file, key)
    return cert, key


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def _tls_daemon(make_daemon: Any, relay: SmtpSink, served: tuple[Path, Path],
                **env: str) -> Daemon:
    return make_daemon(relay_port=relay.port, smtp_tls_cert=str(served[0]),
                       smtp_tls_key=str(served[1]), **env).start()


def _verifying(certs: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca_file))


def _fingerprint(daemon: Daemon) -> str:
    """SHA-256 of the certificate the listener offers on a new connection."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with daemon.smtp() as client:
        client.starttls(context=unverified)
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return hashlib.sha256(der).hexdigest()


def _pem_fingerprint(path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def _wait(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_starttls_verified_by_the_client_and_the_mail_stored(
        make_daemon, relay, served, certs) -> None:
    daemon = _tls_daemon(make_daemon, relay, served)
    with daemon.smtp() as client:
        _code, features = client.ehlo("mx.cliente.example")
        assert b"STARTTLS" in features and b"AUTH" not in features
        assert client.starttls(context=_verifying(certs))[0] == 220
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        _code, features = client.ehlo("mx.cliente.example")
        assert b"STARTTLS" not in features and b"AUTH" not in features  # nobody logs in
        client.send_message(opening_mail())
    relay.wait_for(1)
    raw = bytes(daemon.query("SELECT raw FROM inbound_raw")[0][0])
    assert b"(mailbridge) with ESMTPS" in raw.split(b"\r\n\r\n")[0]
    # Offered, not required: a client without TLS is still served.
    daemon.send(opening_mail(subject="TEN-1001 Otro caso"))
    relay.wait_for(2)
    _, metrics = daemon.http_get("/metrics")
    assert b'mailbridge_smtp_tls_sessions_total{outcome="ok"} 1.0' in metrics
    assert daemon.stop() == 0


def test_a_client_that_does_not_trust_the_certificate_sends_nothing(
        make_daemon, relay, certs, tmp_path) -> None:
    daemon = make_daemon(relay_port=relay.port, smtp_tls_cert=str(certs.self_signed_cert),
                         smtp_tls_key=str(certs.self_signed_key)).start()
    with daemon.smtp() as client, pytest.raises(ssl.SSLCertVerificationError):
        client.ehlo("mx.cliente.example")
        client.starttls(context=_verifying(certs))
    _, metrics = _wait(lambda: (m := daemon.http_get("/metrics")) and
                       b'tls_sessions_total{outcome="failed"} 1.0' in m[1] and m)
    assert b'tls_sessions_total{outcome="ok"}' not in metrics
    assert daemon.query("SELECT count(*) FROM inbound")[0][0] == 0
    assert daemon.stop() == 0


def test_require_tls_refuses_mail_in_clear(make_daemon, relay, served, certs) -> None:
    daemon = _tls_daemon(make_daemon, relay, served, smtp_require_tls="true")
    with daemon.smtp() as client:
        client.ehlo("mx.cliente.example")
        code, text = client.mail("ana@compensar.example")
        assert code == 530 and b"STARTTLS" in text
        assert client.docmd("AUTH", "PLAIN AGFuYQBjbGF2ZQ==")[0] == 530
        assert client.rcpt("soporte-a@mesa.example")[0] == 530
        client.starttls(context=_verifying(certs))
        client.ehlo("mx.cliente.example")
        client.send_message(opening_mail())
    relay.wait_for(1)
    assert daemon.query("SELECT count(*) FROM inbound")[0][0] == 1
    assert daemon.stop() == 0


def test_require_tls_without_a_certificate_is_a_configuration_error(make_daemon) -> None:
    daemon = make_daemon(smtp_require_tls="true")
    result = daemon.cli("check-config", check=False)
    assert result.returncode == 78
    assert b"MAILBRIDGE_SMTP_REQUIRE_TLS needs MAILBRIDGE_SMTP_TLS_CERT" in result.stderr


def test_check_config_loads_the_certificate(make_daemon, served, certs) -> None:
    good = make_daemon("good", smtp_tls_cert=str(served[0]), smtp_tls_key=str(served[1]))
    assert "smtp tls: STARTTLS offered" in good.cli("check-config").stdout.decode()
    wrong_key = make_daemon("bad", smtp_tls_cert=str(served[0]),
                            smtp_tls_key=str(certs.self_signed_key))
    result = wrong_key.cli("check-config", check=False)
    assert result.returncode == 78 and b"cannot load it with its key" in result.stderr


def test_sighup_loads_a_new_certificate_and_keeps_the_old_one_on_a_bad_file(
        make_daemon, relay, served, certs) -> None:
    cert, key = served
    daemon = _tls_daemon(make_daemon, relay, served)
    assert _fingerprint(daemon) == _pem_fingerprint(certs.cert_file)
    # A renewed certificate (certbot's deploy hook, then `systemctl reload mailbridge`).
    shutil.copy(certs.self_signed_cert, cert)
    shutil.copy(certs.self_signed_key, key)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    _wait(lambda: _fingerprint(daemon) == _pem_fingerprint(certs.self_signed_cert))
    # A broken file: refused, logged, and the certificate in use stays.
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    daemon.proc.send_signal(signal.SIGHUP)
    _wait(lambda: "SMTP TLS certificate not reloaded" in daemon.log_path.read_text())
    assert _fingerprint(daemon) == _pem_fingerprint(certs.self_signed_cert)
    daemon.send(opening_mail())  # and the listener still takes mail
    relay.wait_for(1)
    assert daemon.stop() == 0


def test_an_internationalised_stranger_over_tls_is_stored_and_answered_over_tls(
        make_daemon, served, certs) -> None:
    """tests/hostile/test_round2.py sends the same stranger in clear to a clear relay; here
    both legs are encrypted and verified, and what was stored is checked too."""
    relay = SmtpSink(smtputf8=True, starttls=certs.server_context()).start()
    try:
        daemon = make_daemon(relay_port=relay.port, smtp_tls_cert=str(served[0]),
                             smtp_tls_key=str(served[1]), smtp_require_tls="true",
                             relay_starttls="true", relay_ca_file=str(certs.ca_file)).start()
        stranger = "jdöe@mächine.example"
        msg = _stranger_mail(stranger, subject="Consulta de José Müller")
        with daemon.smtp() as client:
            client.ehlo("mx.xn--mchine-kva.example")
            client.starttls(context=_verifying(certs))
            client.ehlo("mx.xn--mchine-kva.example")
            assert client.has_extn("smtputf8")
            client.sendmail(stranger, ["soporte-a@mesa.example"],
                            msg.as_bytes(policy=msg.policy.clone(utf8=True)),
                            mail_options=["SMTPUTF8"])
        (refusal,) = relay.wait_for(1)
        assert refusal.tls and "SMTPUTF8" in refusal.mail_options
        assert refusal.rcpt_tos == [stranger]
        assert stranger in refusal.raw.decode("utf-8")
        (row,) = daemon.query("SELECT mail_from, rcpt_tos, outcome FROM inbound")
        assert row[0] == stranger and row[2].startswith("refused:unknown-sender")
        raw = bytes(daemon.query("SELECT raw FROM inbound_raw")[0][0])
        assert f"From: {stranger}".encode() in raw and b"with ESMTPS" in raw
        assert daemon.stop() == 0
    finally:
        relay.stop()
