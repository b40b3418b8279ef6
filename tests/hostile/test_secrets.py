"""Secrets in logs: IMAP and relay passwords (and OAuth tokens, database passwords) never
appear in the daemon's log, at DEBUG level either, nor in `check-config` output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

from aiosmtpd.smtp import SMTP, AuthResult

from tests.hostile.helpers import report
from tests.support.daemon import free_port, opening_mail
from tests.support.dovecot import DovecotServer, dovecot_binary

RELAY_PASSWORD = "Relay-Secreto-7f3a9c"
IMAP_PASSWORD = "Imap-Secreto-91b2d4"
TOKEN = "ya29.Token-Secreto-55e1"
DB_PASSWORD = "Db-Secreto-0c7e"
SECRETS = (RELAY_PASSWORD, IMAP_PASSWORD, TOKEN, DB_PASSWORD)


class RefusingRelay:
    """A relay that offers AUTH without TLS and refuses every login (535)."""

    def __init__(self) -> None:
        self.port = 0
        self.attempts = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> RefusingRelay:
        ready = threading.Event()

        def refuse(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
            self.attempts += 1
            return AuthResult(success=False, handled=False)

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                return "250 OK"

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(loop.create_server(
                lambda: SMTP(Handler(), auth_require_tls=False, authenticator=refuse,
                             hostname="relay.example"),
                host="127.0.0.1", port=0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


def _no_secret(text: str, where: str, extra: tuple[str, ...] = ()) -> None:
    for secret in (*SECRETS, *extra):
        assert secret not in text, f"{secret!r} found in {where}"


def test_passwords_never_reach_logs_or_check_config(make_daemon, tmp_path) -> None:
    relay = RefusingRelay().start()
    imap_port = free_port()  # nothing listens: the poller fails and retries
    accounts = [
        {"name": "mesa-a", "host": "127.0.0.1", "port": imap_port, "security": "none",
         "username": "soporte-a@mesa.example", "password": IMAP_PASSWORD,
         "queue_address": "soporte-a@mesa.example", "poll_interval": 0.5},
        {"name": "mesa-b", "host": "127.0.0.1", "port": imap_port, "security": "none",
         "username": "soporte-b@mesa.example",
         "xoauth2_token_command": ["/bin/echo", TOKEN],
         "queue_address": "soporte-b@mesa.example", "poll_interval": 0.5},
    ]
    with contextlib.ExitStack() as stack:
        real: tuple[str, ...] = ()
        if dovecot_binary():
            # A real server too: a successful login (and its protocol trace) must not show it.
            imap = stack.enter_context(DovecotServer())
            imap.append(opening_mail(subject="TEN-1001 Por IMAP").as_bytes())
            accounts.append({"name": "mesa-c", "host": imap.host, "port": imap.port,
                             "security": "none", "username": imap.user, "password": imap.password,
                             "queue_address": "soporte-c@mesa.example", "initial_sync": "all",
                             "poll_interval": 0.5})
            real = (imap.password,)
        log, ready, metrics = _run_daemon(make_daemon, relay, accounts)
    _no_secret(log, "the daemon log (DEBUG)", real)
    assert "relay" in log and "mesa-a" in log  # the failures were logged, without secrets
    _no_secret(ready.decode(errors="replace") + metrics.decode(errors="replace"),
               "/readyz, /metrics", real)
    daemon = make_daemon(name="cfg", imap_accounts=json.dumps(accounts))
    _check_config(daemon, accounts, relay.attempts, real)


def _run_daemon(make_daemon, relay, accounts):  # type: ignore[no-untyped-def]
    daemon = make_daemon(relay_port=relay.port, relay_user="mesa", relay_password=RELAY_PASSWORD,
                         imap_accounts=json.dumps(accounts), log_level="DEBUG")
    try:
        daemon.start()
        daemon.send(opening_mail())
        deadline = time.monotonic() + 15
        while relay.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert relay.attempts >= 2  # it did log in (and was refused) more than once
        time.sleep(1.0)  # a few IMAP reconnects
        _, ready = daemon.http_get("/readyz")
        _, metrics = daemon.http_get("/metrics")
        daemon.stop()
    finally:
        relay.stop()
    return daemon.log_path.read_text(errors="replace"), ready, metrics


def _check_config(daemon, accounts, relay_attempts, real) -> None:  # type: ignore[no-untyped-def]
    outputs = {}
    # check-config with everything valid, then with mistakes next to the secrets.
    result = daemon.cli("check-config", check=False)
    outputs["valid"] = result.returncode
    _no_secret(result.stdout.decode() + result.stderr.decode(), "check-config", real)
    broken = [{**accounts[0], "port": "noventa", "security": "plana"},
              {**accounts[1], "password": IMAP_PASSWORD}]
    daemon.env["MAILBRIDGE_IMAP_ACCOUNTS"] = json.dumps(broken)
    result = daemon.cli("check-config", check=False)
    outputs["bad imap accounts"] = result.returncode
    assert result.returncode == 78
    _no_secret(result.stdout.decode() + result.stderr.decode(), "check-config (bad accounts)")
    daemon.env["MAILBRIDGE_IMAP_ACCOUNTS"] = json.dumps(accounts)[:-7]  # broken JSON
    result = daemon.cli("check-config", check=False)
    outputs["broken JSON"] = result.returncode
    _no_secret(result.stdout.decode() + result.stderr.decode(), "check-config (broken JSON)")
    daemon.env["MAILBRIDGE_IMAP_ACCOUNTS"] = json.dumps(accounts)
    daemon.env["MAILBRIDGE_DATABASE_URL"] = f"postgresql://mesa:{DB_PASSWORD}@127.0.0.1:1/mesa"
    daemon.env["MAILBRIDGE_RELAY_TIMEOUT"] = "no-es-numero"
    result = daemon.cli("check-config", check=False)
    outputs["bad relay timeout, database password"] = result.returncode
    _no_secret(result.stdout.decode() + result.stderr.decode(), "check-config (bad settings)")
    report("secrets", log_level="DEBUG",
           relay_logins_refused=relay_attempts, imap_accounts=len(accounts),
           dovecot=bool(dovecot_binary()), check_config_runs=outputs, secrets_found=0)
