"""The Dovecot test server itself: starts, serves mail, crashes, restarts, renumbers."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest

from .dovecot import (
    MISSING_REASON,
    DovecotError,
    DovecotServer,
    dovecot_binary,
    dovecot_version,
)

pytestmark = pytest.mark.skipif(dovecot_binary() is None, reason=MISSING_REASON)

MAIL = (
    b"From: a@b.example\r\nTo: c@d.example\r\nSubject: prueba\r\n"
    b"Message-ID: <t1@b>\r\n\r\nhola\r\n"
)


@pytest.fixture
def server() -> Iterator[DovecotServer]:
    with DovecotServer() as srv:
        yield srv


def test_version_is_23_or_later() -> None:
    version = dovecot_version()
    assert version is not None
    major, minor = (int(part) for part in version.split(".")[:2])
    assert (major, minor) >= (2, 3)


def test_listens_on_loopback_only_and_logs(server: DovecotServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.port > 1024
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        assert sock.recv(64).startswith(b"* OK")
    assert server.log_path.exists()
    assert "starting up" in server.log_path.read_text()


def test_append_returns_uid_and_keeps_bytes(server: DovecotServer) -> None:
    first = server.append(MAIL)
    second = server.append(MAIL.replace(b"t1@b", b"t2@b"), folder="Otra")
    assert first == 1 and second == 1
    assert server.uids() == [1]
    assert server.bodies()[1] == MAIL
    assert server.uids("Otra") == [1]


def test_kill_then_start_keeps_mail_and_port(server: DovecotServer) -> None:
    server.append(MAIL)
    port, validity = server.port, server.uidvalidity()
    server.kill()
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection((server.host, port), timeout=1).close()
    server.start()
    assert server.port == port
    assert server.uids() == [1]
    assert server.uidvalidity() == validity


def test_restart_is_stop_and_start(server: DovecotServer) -> None:
    old_pid = server.pid
    server.restart()
    assert server.running and server.pid != old_pid


def test_reset_uidvalidity_changes_it_and_keeps_mail(server: DovecotServer) -> None:
    server.append(MAIL)
    before = server.uidvalidity()
    after = server.reset_uidvalidity()
    assert after != before
    assert list(server.bodies().values()) == [MAIL]


def test_start_failure_reports_the_log_tail(tmp_path_factory: pytest.TempPathFactory) -> None:
    broken = DovecotServer(directory=tmp_path_factory.mktemp("broken"))
    broken._write_config()  # then spoil it: Dovecot must refuse it
    original = DovecotServer._write_config

    def spoiled(self: DovecotServer) -> None:
        original(self)
        self.conf_path.write_text(self.conf_path.read_text() + "no_such_setting = 1\n")

    broken._write_config = spoiled.__get__(broken)  # type: ignore[method-assign]
    with pytest.raises(DovecotError) as info:
        broken.start(attempts=1)
    assert "no_such_setting" in str(info.value)
    assert not broken.running
    broken.cleanup()


def test_tls_variant_serves_imaps_and_starttls() -> None:
    from imapclient import IMAPClient

    with DovecotServer(tls=True) as srv:
        assert srv.tls_files is not None
        context = ssl.create_default_context(cafile=str(srv.tls_files.cert))
        with IMAPClient(srv.host, port=srv.tls_port, ssl=True, ssl_context=context) as client:
            client.login(srv.user, srv.password)
        with IMAPClient(srv.host, port=srv.port, ssl=False) as client:
            client.starttls(context)
            client.login(srv.user, srv.password)
        with pytest.raises(ssl.SSLCertVerificationError):
            IMAPClient(srv.host, port=srv.tls_port, ssl=True,
                       ssl_context=ssl.create_default_context())


def test_missing_dovecot_skips_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from . import dovecot

    monkeypatch.setattr(dovecot, "DOVECOT_CANDIDATES", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    assert dovecot.dovecot_binary() is None
    with pytest.raises(DovecotError, match=r"scripts/install-test-deps\.sh"):
        DovecotServer()
    with pytest.raises(pytest.skip.Exception, match="install dovecot-imapd"):
        dovecot.skip_unless_dovecot()
