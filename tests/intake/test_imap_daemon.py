"""The IMAP intake inside the running daemon: APPEND → case → ack → mail moved."""

from __future__ import annotations

import json
import time

from tests.support.daemon import opening_mail
from tests.support.dovecot import DovecotServer, skip_unless_dovecot


def test_appended_mail_becomes_a_case_and_leaves_the_inbox(make_daemon, sink) -> None:
    skip_unless_dovecot()
    with DovecotServer() as imap:
        accounts = [{
            "name": "mesa-a", "host": imap.host, "port": imap.port, "security": "none",
            "username": imap.user, "password_env": "TEST_IMAP_PASSWORD",
            "queue_address": "soporte-a@mesa.example", "initial_sync": "all", "poll_interval": 1,
        }]
        daemon = make_daemon(relay_port=sink.port, imap_accounts=json.dumps(accounts))
        daemon.env["TEST_IMAP_PASSWORD"] = imap.password
        daemon.start()
        started = time.monotonic()
        imap.append(opening_mail(to="soporte-a@mesa.example").as_bytes())
        (ack,) = sink.wait_for(1, timeout=20)
        delay = time.monotonic() - started
        assert ack.message["Subject"] == "[Caso 1] TEN-1001 Caída del servicio de correo"
        ticket = daemon.cli_json("tickets", "show", "1")
        assert ticket["priority"] == "A" and ticket["tenant_id"] == "TEN-1001"
        deadline = time.monotonic() + 20
        while imap.uids("INBOX") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert imap.uids("INBOX") == []
        assert len(imap.uids("Procesados")) == 1
        status, body = daemon.http_get("/readyz")
        assert status == 200 and json.loads(body)["checks"]["imap:mesa-a"]["connected"] is True
        print(f"APPEND → ack at the relay in {delay * 1000:.0f} ms")
        assert daemon.stop() == 0
        # Restart: nothing is fetched twice.
        daemon.start()
        time.sleep(1.5)
        daemon.settle()
        assert daemon.query("SELECT count(*) FROM inbound") == [(1,)]
        assert len(sink.received) == 1
        daemon.stop()
        # The password never reaches the logs.
        assert imap.password not in daemon.log_tail(500)


def test_bad_imap_settings_are_refused_with_their_place(make_daemon) -> None:
    daemon = make_daemon(imap_accounts='[{"name": "x", "host": "imap.example", "security": "none"}]')
    result = daemon.cli("check-config", check=False)
    assert result.returncode == 78
    assert b"MAILBRIDGE_IMAP_ACCOUNTS" in result.stderr
