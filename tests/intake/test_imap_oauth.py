"""IMAP with OAuth2 (issue 19.4-5) against real servers: a private Dovecot whose oauth2
passdb asks the local OAuth2 server (authlib's server parts, HTTPS with the test CA) about
every token, so expiry, renewal, rotation and revocation all happen over IMAP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import LoginError

from mailbridge.intake.imap import ImapPoller, ImapPollers
from mailbridge.intake.imap_config import CredentialError, ImapAccount
from mailbridge.oauth import REGISTRY, write_secret_file
from tests.support.daemon import Daemon
from tests.support.dovecot import DovecotServer, skip_unless_dovecot
from tests.support.oauth_server import OAuthServer
from tests.support.tls import Certificates, make_certificates

USER = "desk@mesa.example"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def idp(certs: Certificates) -> Iterator[OAuthServer]:
    server = OAuthServer(certs, expires_in=3, rotate=True).start()  # 3-second tokens
    server.add_client("mesa-imap", "imap-secret", "refresh_token")
    server.add_client("mesa-app", "app-secret", "client_credentials", mailbox=USER)
    server.add_resource("dovecot", "dovecot-secret")
    yield server
    server.stop()


@pytest.fixture
def dovecot(idp: OAuthServer, certs: Certificates) -> Iterator[DovecotServer]:
    skip_unless_dovecot()
    url = f"https://dovecot:dovecot-secret@127.0.0.1:{idp.port}/introspect"
    with DovecotServer(user=USER, oauth2_introspection_url=url,
                       oauth2_ca_file=certs.ca_file) as server:
        yield server


def _refresh_file(idp: OAuthServer, tmp_path: Path) -> Path:
    path = tmp_path / "mesa-oauth.refresh"
    write_secret_file(path, idp.issue_refresh_token("mesa-imap", USER))
    return path


def _account(dovecot: DovecotServer, idp: OAuthServer, certs: Certificates,
             name: str = "mesa-oauth", **oauth: Any) -> ImapAccount:
    return ImapAccount(
        name=name, host=dovecot.host, port=dovecot.port, security="none", username=USER,
        auth="xoauth2", queue_address="soporte-a@mesa.example", initial_sync="all",
        poll_interval=0.5,
        oauth={"provider": "generic", "token_url": idp.token_url, "client_id": "mesa-imap",
               "client_secret": "imap-secret", "ca_file": str(certs.ca_file), **oauth})


def _mail(n: int) -> bytes:
    return (f"From: Ana <ana@compensar.example>\r\nTo: soporte-a@mesa.example\r\n"
            f"Subject: TEN-1001 Consulta {n}\r\nMessage-ID: <oauth-{n}-{time.time_ns()}"
            f"@compensar.example>\r\n\r\nHola {n}\r\n").encode()


def _stored(db: Any) -> int:
    from sqlalchemy import text

    with db.reader() as session:
        return int(session.execute(text("SELECT count(*) FROM inbound")).scalar_one())


def test_expiry_renewal_rotation_and_revocation_over_imap(
        dovecot, idp, certs, imap_db, tmp_path) -> None:
    refresh = _refresh_file(idp, tmp_path)
    first_refresh = refresh.read_text().strip()
    account = _account(dovecot, idp, certs, refresh_token_file=str(refresh))
    poller = ImapPoller(account, imap_db)
    dovecot.append(_mail(1))
    assert poller.poll_once().stored == 1  # logged in with XOAUTH2
    source = account.token_source()
    assert source is not None and source.renewals == 1
    # The server rotated the refresh token: the new one is in the file, the old one is dead.
    rotated = refresh.read_text().strip()
    assert rotated != first_refresh and source.rotations == 1
    (token,) = idp.live_access_tokens(USER)
    # Expiry: after 3 s Dovecot itself says no to the old token...
    time.sleep(3.2)
    assert idp.introspect(token)["active"] is False
    dovecot.append(_mail(2))
    assert poller.poll_once().stored == 1  # ...and the poller came with a renewed one
    assert source.renewals == 2 and source.rotations == 2
    assert refresh.read_text().strip() not in (first_refresh, rotated)
    # Revocation: the cached token is still in date, Dovecot refuses it (introspection says
    # inactive); the refusal drops it, and the next login gets a new one.
    idp.expires_in = 3600
    source.invalidate()
    dovecot.append(_mail(3))
    assert poller.poll_once().stored == 1
    live = source.token()  # the cached one, good for an hour
    assert idp.revoke(live, idp.clients["dovecot"]) == 200
    dovecot.append(_mail(4))
    with pytest.raises(LoginError, match=r"(?i)authenticat"):
        poller.poll_once()
    assert poller.state.auth_failed
    assert poller.poll_once().stored == 1
    assert not poller.state.auth_failed
    assert _stored(imap_db) == 4
    assert idp.counts.introspections[False] >= 2  # the expired and the revoked token
    print(f"renewals {source.renewals}, rotations {source.rotations}, introspections "
          f"{idp.counts.introspections}")


def test_client_credentials_app_only_login(dovecot, idp, certs, imap_db) -> None:
    """Microsoft 365 app-only IMAP: the app's token opens the mailbox it was granted."""
    account = _account(dovecot, idp, certs, name="mesa-app", client_id="mesa-app",
                       client_secret="app-secret", grant="client_credentials")
    dovecot.append(_mail(1))
    assert ImapPoller(account, imap_db).poll_once().stored == 1
    assert idp.counts.issued == {"client_credentials": 1}


def test_a_revoked_refresh_token_fails_one_account_only(
        dovecot, idp, certs, imap_db, tmp_path) -> None:
    refresh = _refresh_file(idp, tmp_path)
    oauth_account = _account(dovecot, idp, certs, refresh_token_file=str(refresh))
    password_account = ImapAccount(
        name="mesa-clave", host=dovecot.host, port=dovecot.port, security="none",
        username=USER, password=dovecot.password, queue_address="soporte-b@mesa.example",
        initial_sync="all", poll_interval=0.3)
    REGISTRY.retry_base, REGISTRY.retry_max = 0.5, 1.0
    assert idp.revoke(refresh.read_text().strip(), idp.clients["dovecot"]) == 200
    REGISTRY.source("imap:mesa-oauth", oauth_account.oauth)  # fresh: no token cached
    with pytest.raises(CredentialError, match="invalid_grant"):
        oauth_account.fetch_oauth_token()
    pollers = ImapPollers([oauth_account, password_account], imap_db)
    dovecot.append(_mail(1))
    pollers.start()
    try:
        deadline = time.monotonic() + 20
        while _stored(imap_db) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        state = pollers.readiness()
        assert _stored(imap_db) == 1  # the password account took the mail
        assert state["mesa-oauth"]["auth_failed"] and not state["mesa-clave"]["auth_failed"]
        token_state = REGISTRY.readiness()["imap:mesa-oauth"]
        assert not token_state["ok"] and "invalid_grant" in token_state["last_error"]
        assert token_state["failures"] >= 1
    finally:
        pollers.stop(10)


def test_daemon_readiness_and_oauth_test_command(dovecot, idp, certs, make_daemon,
                                                 tmp_path) -> None:
    refresh = _refresh_file(idp, tmp_path)
    accounts = [{
        "name": "mesa-oauth", "host": dovecot.host, "port": dovecot.port, "security": "none",
        "username": USER, "auth": "xoauth2", "queue_address": "soporte-a@mesa.example",
        "initial_sync": "all", "poll_interval": 0.5,
        "oauth": {"provider": "generic", "token_url": idp.token_url, "client_id": "mesa-imap",
                  "client_secret_file": str(_secret(tmp_path)),
                  "refresh_token_file": str(refresh), "ca_file": str(certs.ca_file)},
    }]
    daemon: Daemon = make_daemon(imap_accounts=json.dumps(accounts))
    out = daemon.cli("oauth", "test", "mesa-oauth").stdout.decode()
    assert "refresh_token grant" in out and f"logged in to {dovecot.host}:{dovecot.port}" in out
    daemon.start()
    dovecot.append(_mail(1))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        checks = json.loads(daemon.http_get("/readyz")[1])["checks"]
        if checks.get("oauth:imap:mesa-oauth", {}).get("renewals", 0) >= 3:
            break
        time.sleep(0.2)
    assert checks["oauth:imap:mesa-oauth"]["ok"] and checks["imap:mesa-oauth"]["connected"]
    assert checks["oauth:imap:mesa-oauth"]["rotations"] >= 3  # each written back
    assert daemon.query("SELECT count(*) FROM inbound")[0][0] == 1
    assert "oauth" in daemon.cli_json("status")
    assert daemon.stop() == 0


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "imap-client.secret"
    write_secret_file(path, "imap-secret")
    return path


def test_account_configuration(tmp_path) -> None:
    from pydantic import ValidationError

    base = {"name": "m365", "host": "outlook.office365.com", "username": USER,
            "queue_address": "soporte-a@mesa.example"}
    oauth = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "id",
             "client_secret": "very-secret-value"}
    account = ImapAccount(**base, auth="xoauth2", oauth=oauth)
    assert account.uses_oauth and account.oauth is not None
    assert account.oauth.effective_scope == "https://outlook.office365.com/.default"
    assert "very-secret-value" not in repr(account)
    for bad, message in [({"auth": "xoauth2", "password": "x"}, "needs an `oauth` block"),
                         ({"oauth": oauth, "password": "x"}, "exactly one of"),
                         ({"auth": "password", "oauth": oauth}, "auth: password, but oauth")]:
        with pytest.raises(ValidationError, match=message):
            ImapAccount(**base, **bad)
