"""The relay with OAuth2 (issue 19.4), end to end: the real daemon sends its
acknowledgements through an aiosmtpd relay (STARTTLS, test CA) that accepts AUTH XOAUTH2
only with a live token the local OAuth2 server issued (it asks that server's introspection
endpoint), the client-credentials grant as Microsoft 365 app-only SMTP uses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailbridge.oauth import write_secret_file
from tests.support.daemon import Daemon, opening_mail
from tests.support.oauth_server import OAuthServer
from tests.support.sink import SmtpSink
from tests.support.tls import Certificates, make_certificates

MAILBOX = "soporte@mesa.example"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def idp(certs: Certificates) -> Iterator[OAuthServer]:
    server = OAuthServer(certs, expires_in=3).start()  # tokens live 3 seconds
    server.add_client("mailbridge-app", "app-secret-1", "client_credentials", mailbox=MAILBOX)
    server.add_resource("relay.mesa.example", "relay-secret")
    yield server
    server.stop()


@pytest.fixture
def relay(idp: OAuthServer, certs: Certificates) -> Iterator[SmtpSink]:
    def accepts(user: str, token: str) -> bool:
        answer = idp.introspect(token)
        return bool(answer.get("active")) and answer.get("username") == user

    sink = SmtpSink(starttls=certs.server_context(), xoauth2=accepts).start()
    yield sink
    sink.stop()


def _daemon(make_daemon: Any, relay: SmtpSink, idp: OAuthServer, certs: Certificates,
            tmp_path: Path, secret: str = "app-secret-1", name: str = "d",
            **extra: str) -> Daemon:
    tmp_path.mkdir(parents=True, exist_ok=True)
    secret_file = tmp_path / "app.secret"
    write_secret_file(secret_file, secret)
    return make_daemon(
        name, relay_port=relay.port, relay_starttls="true", relay_ca_file=str(certs.ca_file),
        relay_user=MAILBOX, relay_auth="xoauth2", relay_oauth_provider="generic",
        relay_oauth_token_url=idp.token_url, relay_oauth_client_id="mailbridge-app",
        relay_oauth_client_secret_file=str(secret_file), relay_oauth_scope="mail",
        relay_oauth_ca_file=str(certs.ca_file), oauth_retry_base="0.5", oauth_retry_max="2",
        **extra,
    )


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _ready(daemon: Daemon) -> dict[str, Any]:
    return json.loads(daemon.http_get("/readyz")[1])["checks"]  # type: ignore[no-any-return]


def test_acks_go_through_xoauth2_with_renewed_tokens(make_daemon, relay, idp, certs,
                                                     tmp_path) -> None:
    daemon = _daemon(make_daemon, relay, idp, certs, tmp_path).start()
    daemon.send(opening_mail())
    (ack,) = relay.wait_for(1)
    assert ack.tls and ack.rcpt_tos == ["ana@compensar.example"]
    assert relay.handler.xoauth2_logins[0] == (MAILBOX, True)
    # Nobody sends meanwhile: the daemon renews the 3-second token on its own.
    _wait(lambda: idp.counts.issued.get("client_credentials", 0) >= 4)
    state = _ready(daemon)["oauth:relay"]
    assert state["ok"] and state["renewals"] >= 4 and state["grant"] == "client_credentials"
    daemon.send(opening_mail(subject="TEN-1001 Segundo caso"))
    relay.wait_for(2)
    assert all(ok for _user, ok in relay.handler.xoauth2_logins)
    _, metrics = daemon.http_get("/metrics")
    assert b'mailbridge_oauth_token_ok{account="relay"} 1.0' in metrics
    print(f"token renewals seen: {state['renewals']}, relay logins: "
          f"{len(relay.handler.xoauth2_logins)}")
    assert daemon.stop() == 0


def test_a_revoked_token_is_replaced_and_the_mail_still_leaves(make_daemon, relay, idp, certs,
                                                               tmp_path) -> None:
    idp.expires_in = 3600  # the same token would be used for an hour
    # Each mail on a connection of its own, so the second one logs in again (a kept
    # connection stays logged in: tests/outbound/test_relay_keep_open.py).
    daemon = _daemon(make_daemon, relay, idp, certs, tmp_path, relay_keep_open="0").start()
    daemon.send(opening_mail())
    relay.wait_for(1)
    (token,) = idp.live_access_tokens(MAILBOX)
    assert idp.revoke(token, idp.clients["relay.mesa.example"]) == 200
    daemon.send(opening_mail(subject="TEN-1001 Tras la revocación"))
    relay.wait_for(2)
    logins = relay.handler.xoauth2_logins
    assert (MAILBOX, False) in logins and logins[-1] == (MAILBOX, True)
    assert idp.counts.issued["client_credentials"] == 2
    assert daemon.stop() == 0


def test_a_failing_token_endpoint_is_alerted_and_mail_waits(make_daemon, relay, idp, certs,
                                                             tmp_path) -> None:
    daemon = _daemon(make_daemon, relay, idp, certs, tmp_path)
    idp.unavailable = True
    daemon.start()
    _wait(lambda: not _ready(daemon)["oauth:relay"]["ok"])
    state = _ready(daemon)["oauth:relay"]
    assert "503" in state["last_error"]
    assert daemon.http_get("/readyz")[0] == 503
    status = daemon.cli_json("status")
    assert status["oauth"]["relay"]["ok"] is False
    text = daemon.cli("status").stdout.decode()
    assert "oauth relay: RENEWAL FAILING since" in text
    _, metrics = daemon.http_get("/metrics")
    assert b'mailbridge_oauth_token_ok{account="relay"} 0.0' in metrics
    assert "oauth token renewal failed" in daemon.log_path.read_text()
    daemon.send(opening_mail())  # intake goes on; the acknowledgement waits in the outbox
    time.sleep(1.5)
    assert relay.received == []
    idp.unavailable = False
    relay.wait_for(1)
    _wait(lambda: _ready(daemon)["oauth:relay"]["ok"])
    assert daemon.http_get("/readyz")[0] == 200
    assert daemon.stop() == 0


def test_oauth_test_command(make_daemon, relay, idp, certs, tmp_path) -> None:
    daemon = _daemon(make_daemon, relay, idp, certs, tmp_path)
    done = daemon.cli("oauth", "test", "relay")
    out = done.stdout.decode()
    assert "client_credentials grant" in out and f"logged in to 127.0.0.1:{relay.port}" in out
    assert relay.handler.xoauth2_logins == [(MAILBOX, True)]
    wrong = _daemon(make_daemon, relay, idp, certs, tmp_path / "wrong", secret="nope",
                    name="wrong")
    failed = wrong.cli("oauth", "test", "relay", check=False)
    assert failed.returncode == 1 and b"invalid_client" in failed.stderr
    assert b"nope" not in failed.stderr + failed.stdout
    checked = daemon.cli("check-config").stdout.decode()
    assert f"relay oauth: generic, client_credentials grant at {idp.token_url}" in checked
