"""The token manager (mailbridge/oauth.py) against a real OAuth2 server (authlib's server
parts over HTTPS on loopback, tests/support/oauth_server.py). Only the clock is injected."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY as METRICS
from pydantic import ValidationError

from mailbridge.oauth import OAuthConfig, TokenError, TokenRegistry, TokenSource, write_secret_file
from tests.support.oauth_server import OAuthServer
from tests.support.tls import Certificates, make_certificates

MAILBOX = "soporte@mesa.example"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(certs: Certificates) -> Iterator[OAuthServer]:
    oauth = OAuthServer(certs).start()
    oauth.add_client("app", "s3cret-app", "client_credentials", mailbox=MAILBOX)
    oauth.add_client("desk", "s3cret-desk", "refresh_token")
    oauth.add_resource("relay", "s3cret-relay")
    yield oauth
    oauth.stop()


def _secret(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    write_secret_file(path, value)
    return path


def _app_config(server: OAuthServer, certs: Certificates, tmp_path: Path,
                **changes: Any) -> OAuthConfig:
    values: dict[str, Any] = {
        "provider": "generic", "token_url": server.token_url, "client_id": "app",
        "client_secret_file": _secret(tmp_path, "app.secret", "s3cret-app"),
        "ca_file": certs.ca_file, "scope": "mail"}
    return OAuthConfig(**{**values, **changes})


def _desk_config(server: OAuthServer, certs: Certificates, refresh_file: Path) -> OAuthConfig:
    return OAuthConfig(provider="generic", token_url=server.token_url, client_id="desk",
                       client_secret="s3cret-desk", refresh_token_file=refresh_file,
                       ca_file=certs.ca_file, auth_method="client_secret_basic")


def _metric(name: str, **labels: str) -> float | None:
    return METRICS.get_sample_value(name, labels)


def test_client_credentials_cached_then_renewed_before_expiry(server, certs, tmp_path) -> None:
    clock = Clock()
    source = TokenSource("t-app", _app_config(server, certs, tmp_path), clock=clock)
    first = source.token()
    assert server.introspect(first)["username"] == MAILBOX  # a token the server issued
    assert source.token() == first and server.counts.issued == {"client_credentials": 1}
    clock.now += 3600 - 301  # still more than 5 minutes left: the cached one
    assert source.token() == first
    clock.now += 2  # inside the last 5 minutes: renewed before it expires
    second = source.token()
    assert second != first and server.counts.issued == {"client_credentials": 2}
    state = source.state()
    assert state["ok"] and state["renewals"] == 2 and state["grant"] == "client_credentials"
    assert _metric("mailbridge_oauth_token_ok", account="t-app") == 1.0
    assert _metric("mailbridge_oauth_renewals_total", account="t-app", outcome="ok") == 2.0


def test_refresh_token_rotation_is_written_back_and_the_old_one_is_dead(
        server, certs, tmp_path) -> None:
    server.rotate = True
    first_refresh = server.issue_refresh_token("desk", "desk@mesa.example")
    refresh_file = _secret(tmp_path, "desk.refresh", first_refresh)
    refresh_file.chmod(0o600)
    clock = Clock()
    source = TokenSource("t-desk", _desk_config(server, certs, refresh_file), clock=clock)
    source.token()
    rotated = refresh_file.read_text().strip()
    assert rotated != first_refresh and source.rotations == 1
    assert stat.S_IMODE(refresh_file.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".desk.refresh.*.tmp"))  # nothing half-written left
    assert _metric("mailbridge_oauth_refresh_token_rotations_total", account="t-desk") == 1.0
    # The old refresh token is refused by the server; the file's new one works.
    stale = TokenSource("t-stale", _desk_config(server, certs, _secret(tmp_path, "old", first_refresh)))
    with pytest.raises(TokenError, match="invalid_grant"):
        stale.token()
    clock.now += 3600
    source.token()
    assert source.rotations == 2 and refresh_file.read_text().strip() not in (first_refresh, rotated)


def test_a_failing_renewal_is_reported_backs_off_and_recovers(server, certs, tmp_path) -> None:
    clock = Clock()
    source = TokenSource("t-down", _app_config(server, certs, tmp_path), clock=clock,
                         retry_base=10, retry_max=40)
    server.unavailable = True
    with pytest.raises(TokenError, match="503"):
        source.token()
    state = source.state()
    assert not state["ok"] and state["failures"] == 1 and "503" in state["last_error"]
    assert _metric("mailbridge_oauth_token_ok", account="t-down") == 0.0
    refused = server.counts.refused
    with pytest.raises(TokenError, match="next try in"):  # within the backoff: not asked again
        source.token()
    assert source.failures == 1
    delays = []
    for _ in range(4):  # doubling from 10 s to at most 40 s (±20 %)
        delays.append(source.next_attempt_at - clock.now)
        clock.now = source.next_attempt_at + 0.01
        with pytest.raises(TokenError):
            source.token()
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24 and all(d <= 48 for d in delays)
    assert source.failures == 5 and server.counts.refused == refused  # 503s are not "refused"
    server.unavailable = False
    clock.now = source.next_attempt_at + 0.01
    assert source.token()
    assert source.state()["ok"] and source.failures == 0
    assert _metric("mailbridge_oauth_token_ok", account="t-down") == 1.0


def test_a_wrong_secret_says_so_without_the_secret(server, certs, tmp_path) -> None:
    config = _app_config(server, certs, tmp_path,
                         client_secret_file=_secret(tmp_path, "bad", "not-the-secret"))
    source = TokenSource("t-bad", config)
    with pytest.raises(TokenError) as failure:
        source.token()
    assert "invalid_client" in str(failure.value) and "not-the-secret" not in str(failure.value)
    assert "not-the-secret" not in repr(config) and "not-the-secret" not in str(source.state())


def test_a_server_whose_certificate_is_not_trusted_gives_no_token(server, tmp_path, certs) -> None:
    source = TokenSource("t-untrusted", _app_config(server, certs, tmp_path, ca_file=None))
    with pytest.raises(TokenError, match=r"SSL|certificate"):
        source.token()


def test_the_renewer_keeps_tokens_fresh_and_an_invalidated_one_is_replaced(
        server, certs, tmp_path) -> None:
    server.expires_in = 2  # a 2-second token: renewed half a second before it ends
    registry = TokenRegistry()
    source = registry.source("t-renewer", _app_config(server, certs, tmp_path))
    registry.start(tmp_path / "run" / "oauth.json")
    try:
        deadline = time.monotonic() + 20
        while source.renewals < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert source.renewals >= 4  # nobody asked: the renewer did it
        token = source.token()
        assert server.introspect(token)["active"] is True
        source.invalidate()
        assert source.token() != token
    finally:
        registry.stop()
    state = (tmp_path / "run" / "oauth.json").read_text()
    assert '"t-renewer"' in state and "s3cret" not in state


def test_configuration_is_checked(tmp_path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    microsoft = OAuthConfig(provider="microsoft", tenant="contoso.onmicrosoft.com",
                            client_id="id", client_secret_file=secret)
    assert microsoft.endpoint == \
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert microsoft.effective_grant == "client_credentials"
    assert microsoft.effective_scope == "https://outlook.office365.com/.default"
    google = OAuthConfig(provider="google", client_id="id", client_secret_file=secret,
                         refresh_token_file=secret)
    assert google.endpoint == "https://oauth2.googleapis.com/token"
    assert google.effective_scope == "https://mail.google.com/"
    for bad, message in [
        ({"provider": "generic", "token_url": "http://idp.example/token"}, "must be https"),
        ({"provider": "microsoft"}, "needs tenant"),
        ({"provider": "google", "grant": "client_credentials"}, "no client_credentials"),
        ({"provider": "generic", "token_url": "https://idp.example/t", "grant": "refresh_token"},
         "needs refresh_token_file"),
    ]:
        with pytest.raises(ValidationError, match=message):
            OAuthConfig(client_id="id", client_secret_file=secret, **bad)
    # Plain http only to a token endpoint on this machine.
    assert OAuthConfig(token_url="http://127.0.0.1:9/token", client_id="id",
                       client_secret_file=secret).endpoint.startswith("http://127.0.0.1")
