"""OAuth2 access tokens for the relay and the IMAP accounts (XOAUTH2), through authlib.

Each account has one `TokenSource`: the client-credentials grant (Microsoft 365 app-only
IMAP/SMTP) or the refresh-token grant (Google, delegated Microsoft), the access token
cached and renewed before it expires, a rotated refresh token written back atomically to
its file, and a failing renewal remembered: logged at once, counted, shown in /readyz and
`mailbridge status`, and retried with backoff while the other accounts go on. Sources live
in one registry per process (like the metrics): the daemon's renewer thread keeps every
token fresh, the sender and the IMAP pollers ask for the current one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from mailbridge.settings import Settings, is_loopback_host

log = logging.getLogger(__name__)

TOKEN_OK = Gauge("mailbridge_oauth_token_ok", "1 while the account has a valid access token, "
                 "0 after a failed renewal", ["account"])
RENEWALS = Counter("mailbridge_oauth_renewals_total", "Access tokens asked of the token "
                   "endpoint", ["account", "outcome"])
ROTATIONS = Counter("mailbridge_oauth_refresh_token_rotations_total",
                    "New refresh tokens written back to their file", ["account"])
EXPIRES_AT = Gauge("mailbridge_oauth_token_expires_at_seconds",
                   "When the cached access token expires (Unix time)", ["account"])

MICROSOFT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
# What the token is for, when the configuration names no scope.
DEFAULT_SCOPES = {
    ("microsoft", "client_credentials"): "https://outlook.office365.com/.default",
    ("microsoft", "refresh_token"): "https://outlook.office.com/IMAP.AccessAsUser.All "
                                    "https://outlook.office.com/SMTP.Send offline_access",
    ("google", "refresh_token"): "https://mail.google.com/",
}
HTTP_TIMEOUT = 30.0


class TokenError(Exception):
    """No access token could be had (the message names the account, never a secret)."""


class OAuthConfig(BaseModel):
    """How one account gets its tokens; secrets come from files or the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["microsoft", "google", "generic"] = "generic"
    tenant: str | None = Field(default=None, description="Microsoft: tenant ID or domain")
    token_url: str | None = Field(default=None, description="the token endpoint (https)")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = Field(default=None, repr=False)
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    refresh_token_file: Path | None = Field(
        default=None, description="refresh-token grant: the file; a rotated token is written back"
    )
    refresh_token_env: str | None = Field(
        default=None, description="refresh-token grant from the environment (cannot rotate)"
    )
    grant: Literal["client_credentials", "refresh_token"] | None = None
    scope: str | None = None
    ca_file: Path | None = Field(default=None, description="CA of the token endpoint (private)")
    auth_method: Literal["client_secret_post", "client_secret_basic", "none"] = (
        "client_secret_post"
    )

    @model_validator(mode="after")
    def _check(self) -> OAuthConfig:
        secrets = [n for n in ("client_secret", "client_secret_file", "client_secret_env")
                   if getattr(self, n) is not None]
        if len(secrets) > 1:
            raise ValueError(f"give one client secret, not {', '.join(secrets)}")
        refresh = [n for n in ("refresh_token_file", "refresh_token_env")
                   if getattr(self, n) is not None]
        if len(refresh) > 1:
            raise ValueError("give refresh_token_file or refresh_token_env, not both")
        if self.effective_grant == "refresh_token" and not refresh:
            raise ValueError("the refresh_token grant needs refresh_token_file or "
                             "refresh_token_env")
        if self.effective_grant == "client_credentials":
            if not secrets:
                raise ValueError("the client_credentials grant needs a client secret "
                                 "(client_secret_file or client_secret_env)")
            if self.provider == "google":
                raise ValueError("Google has no client_credentials grant for mail: use a "
                                 "refresh token (grant: refresh_token)")
        if self.provider == "microsoft" and not (self.tenant or self.token_url):
            raise ValueError("provider microsoft needs tenant (or token_url)")
        if self.provider == "generic" and not self.token_url:
            raise ValueError("provider generic needs token_url")
        url = urlsplit(self.endpoint)
        if url.scheme != "https" and not (url.scheme == "http"
                                          and is_loopback_host(url.hostname or "")):
            raise ValueError(f"token_url must be https (plain http only on loopback): "
                             f"{self.endpoint}")
        return self

    @property
    def effective_grant(self) -> str:
        if self.grant is not None:
            return self.grant
        if self.refresh_token_file is not None or self.refresh_token_env is not None:
            return "refresh_token"
        return "client_credentials"

    @property
    def endpoint(self) -> str:
        if self.token_url:
            return self.token_url
        if self.provider == "microsoft":
            return MICROSOFT_TOKEN_URL.format(tenant=self.tenant)
        return GOOGLE_TOKEN_URL

    @property
    def effective_scope(self) -> str | None:
        return self.scope or DEFAULT_SCOPES.get((self.provider, self.effective_grant))

    def read_client_secret(self, environ: Mapping[str, str] | None = None) -> str | None:
        environ = os.environ if environ is None else environ
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return _read_secret_file(self.client_secret_file, "client_secret_file")
        if self.client_secret_env is not None:
            value = environ.get(self.client_secret_env)
            if not value:
                raise TokenError(f"environment variable {self.client_secret_env} is not set")
            return value
        return None


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not value:
        raise TokenError(f"{what} {path} is empty")
    return value


def write_secret_file(path: Path, value: str) -> None:
    """Replace `path` atomically (temporary file, fsync, rename, fsync of the directory),
    keeping its permissions: a crash leaves the old token or the new one, never half."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, value.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """Processes of one host that share a refresh token file renew one at a time."""
    if path is None:
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class TokenSource:
    """One account's access token: cached, renewed before it expires, failures kept.

    `clock` is injected (tests); `retry_base`/`retry_max` bound the backoff after a failed
    renewal, during which `token()` answers at once with the last error instead of asking
    the token endpoint again.
    """

    def __init__(self, name: str, config: OAuthConfig, *, retry_base: float = 5.0,
                 retry_max: float = 300.0, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.RLock()
        self._access_token: str | None = None
        self._expires_at = 0.0
        self._issued_at = 0.0
        self.renewals = 0
        self.failures = 0  # in a row
        self.rotations = 0
        self.last_error: str | None = None
        self.last_renewed_at: float | None = None
        self.failed_since: float | None = None
        self.next_attempt_at = 0.0

    # -- what consumers call ---------------------------------------------------------
    def token(self) -> str:
        """A valid access token: the cached one, or a new one from the token endpoint."""
        with self._lock:
            now = self.clock()
            if self._access_token is not None and now < self.renew_at:
                return self._access_token
            if self.failures and now < self.next_attempt_at:
                if self._access_token is not None and now < self._expires_at:
                    return self._access_token  # still valid while renewal waits
                raise TokenError(f"oauth {self.name}: {self.last_error} (next try in "
                                 f"{self.next_attempt_at - now:.0f} s)")
            return self._renew()

    def invalidate(self) -> None:
        """The server refused the token (revoked, or expired early): ask for a new one."""
        with self._lock:
            self._access_token = None
            self._expires_at = 0.0

    @property
    def renew_at(self) -> float:
        """When the cached token is renewed: a quarter of its life, at most 5 minutes, early."""
        lifetime = max(self._expires_at - self._issued_at, 0.0)
        return self._expires_at - min(300.0, lifetime / 4)

    @property
    def due_at(self) -> float:
        """When the renewer should act for this source next."""
        with self._lock:
            if self.failures:
                return self.next_attempt_at
            return self.renew_at if self._access_token is not None else 0.0

    def renew_if_due(self) -> bool:
        """For the renewer thread: renew now if it is time; False when that failed."""
        with self._lock:
            if self.clock() < self.due_at:
                return True
            try:
                self._renew()
            except TokenError:
                return False
            return True

    # -- renewal ---------------------------------------------------------------------
    def _renew(self) -> str:
        config = self.config
        started = self.clock()
        try:
            with _file_lock(config.refresh_token_file):
                token = self._request(config)
        except TokenError as exc:
            self._failed(str(exc), started)
            raise
        except Exception as exc:  # the HTTP client, authlib or the endpoint's answer
            self._failed(_describe(exc), started)
            raise TokenError(f"oauth {self.name}: {self.last_error}") from None
        access = str(token.get("access_token") or "")
        if not access:
            self._failed("the token endpoint answered without an access_token", started)
            raise TokenError(f"oauth {self.name}: {self.last_error}")
        expires_in = float(token.get("expires_in") or 3600)
        now = self.clock()
        self._access_token = access
        self._issued_at = now
        self._expires_at = now + expires_in
        was_failing = self.failures
        self.failures = 0
        self.failed_since = None
        self.last_error = None
        self.renewals += 1
        self.last_renewed_at = now
        RENEWALS.labels(self.name, "ok").inc()
        TOKEN_OK.labels(self.name).set(1)
        EXPIRES_AT.labels(self.name).set(self._expires_at)
        log.info("oauth token renewed" if not was_failing else "oauth token renewed again",
                 extra={"account": self.name, "expires_in": round(expires_in),
                        "grant": config.effective_grant})
        self._changed()
        return access

    def _request(self, config: OAuthConfig) -> Mapping[str, Any]:
        from authlib.integrations.requests_client import OAuth2Session

        secret = config.read_client_secret()
        refresh_token: str | None = None
        if config.effective_grant == "refresh_token":
            if config.refresh_token_file is not None:
                refresh_token = _read_secret_file(config.refresh_token_file, "refresh_token_file")
            else:
                refresh_token = os.environ.get(config.refresh_token_env or "")
                if not refresh_token:
                    raise TokenError(f"oauth {self.name}: environment variable "
                                     f"{config.refresh_token_env} is not set")
        session = OAuth2Session(
            client_id=config.client_id, client_secret=secret,
            token_endpoint_auth_method=config.auth_method if secret else "none",
            scope=config.effective_scope,
        )
        verify: str | bool = str(config.ca_file) if config.ca_file else True
        try:
            if refresh_token is not None:
                token = session.refresh_token(config.endpoint, refresh_token=refresh_token,
                                              timeout=HTTP_TIMEOUT, verify=verify)
            else:
                token = session.fetch_token(config.endpoint, grant_type="client_credentials",
                                            timeout=HTTP_TIMEOUT, verify=verify)
        finally:
            session.close()
        rotated = token.get("refresh_token")
        if refresh_token is not None and rotated and rotated != refresh_token:
            self._store_rotated(config, str(rotated))
        return token  # type: ignore[no-any-return]

    def _store_rotated(self, config: OAuthConfig, rotated: str) -> None:
        if config.refresh_token_file is None:
            log.warning("oauth refresh token rotated but it comes from the environment: the "
                        "new one cannot be kept; use refresh_token_file",
                        extra={"account": self.name})
            return
        write_secret_file(config.refresh_token_file, rotated)
        self.rotations += 1
        ROTATIONS.labels(self.name).inc()
        log.info("oauth refresh token rotated; written back",
                 extra={"account": self.name, "file": str(config.refresh_token_file)})

    def _failed(self, error: str, started: float) -> None:
        self.failures += 1
        self.last_error = error[:300]
        if self.failed_since is None:
            self.failed_since = started
        delay = min(self.retry_max, self.retry_base * 2 ** (self.failures - 1))
        self.next_attempt_at = self.clock() + delay * random.uniform(0.8, 1.2)
        RENEWALS.labels(self.name, "failed").inc()
        TOKEN_OK.labels(self.name).set(0)
        log.error("oauth token renewal failed", extra={
            "account": self.name, "error": self.last_error, "failures": self.failures,
            "retry_in": round(self.next_attempt_at - self.clock(), 1),
            "token_url": self.config.endpoint})
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change()

    # -- what operators see ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            valid = self._access_token is not None and now < self._expires_at
            return {
                "ok": not self.failures and (valid or self.renewals == 0),
                "provider": self.config.provider,
                "grant": self.config.effective_grant,
                "token_url": self.config.endpoint,
                "token_valid": valid,
                "expires_in": round(self._expires_at - now) if valid else None,
                "renewals": self.renewals,
                "rotations": self.rotations,
                "failures": self.failures,
                "last_error": self.last_error,
                "failing_since": _iso(self.failed_since),
                "next_attempt_in": round(self.next_attempt_at - now, 1)
                if self.failures else None,
                "last_renewed_at": _iso(self.last_renewed_at),
            }


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _describe(exc: BaseException) -> str:
    """What went wrong, from authlib's OAuthError or the HTTP client, without secrets."""
    error = getattr(exc, "error", None)
    if error:
        description = getattr(exc, "description", None)
        return f"{error}: {description}" if description else str(error)
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} from the token endpoint"
    return f"{type(exc).__name__}: {exc}"


class TokenRegistry:
    """Every token source of this process, and the thread that renews them ahead of time."""

    def __init__(self) -> None:
        self._sources: dict[str, TokenSource] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.state_file: Path | None = None
        self.retry_base = 5.0
        self.retry_max = 300.0

    def source(self, name: str, config: OAuthConfig) -> TokenSource:
        """The source of `name`; a new one when its configuration changed."""
        with self._lock:
            found = self._sources.get(name)
            if found is None or found.config != config:
                found = TokenSource(name, config, retry_base=self.retry_base,
                                    retry_max=self.retry_max, on_change=self._changed)
                self._sources[name] = found
                self._wake.set()
            return found

    def sources(self) -> list[TokenSource]:
        with self._lock:
            return list(self._sources.values())

    def readiness(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.state() for s in self.sources()}

    def start(self, state_file: Path | None = None) -> None:
        self.state_file = state_file
        self._stop.clear()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="oauth-renewer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for source in self.sources():
                if self._stop.is_set():
                    return
                source.renew_if_due()
            sources = self.sources()
            now = time.time()
            wait = min((s.due_at - now for s in sources), default=60.0)
            self._wake.wait(min(max(wait, 0.2), 60.0))
            self._wake.clear()

    def _changed(self) -> None:
        if self.state_file is None:
            return
        # `mailbridge status` runs in another process: it reads what the daemon wrote.
        data = {"pid": os.getpid(), "written_at": _iso(time.time()),
                "accounts": self.readiness()}
        tmp = self.state_file.with_suffix(".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.state_file)
        except OSError as exc:
            log.warning("oauth state file not written", extra={"error": str(exc)})


REGISTRY = TokenRegistry()


def read_state_file(path: Path) -> dict[str, Any] | None:
    """What the running daemon last wrote about its tokens; None if it is not running."""
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data  # type: ignore[no-any-return]


def relay_oauth_config(settings: Settings) -> OAuthConfig:
    """The relay's OAuth2 settings (MAILBRIDGE_RELAY_OAUTH_*) as one validated config."""
    values: dict[str, Any] = {
        "provider": settings.relay_oauth_provider,
        "tenant": settings.relay_oauth_tenant,
        "token_url": settings.relay_oauth_token_url,
        "client_id": settings.relay_oauth_client_id or "",
        "client_secret": settings.relay_oauth_client_secret,
        "client_secret_file": settings.relay_oauth_client_secret_file,
        "refresh_token_file": settings.relay_oauth_refresh_token_file,
        "grant": settings.relay_oauth_grant,
        "scope": settings.relay_oauth_scope,
        "ca_file": settings.relay_oauth_ca_file,
    }
    return OAuthConfig(**{k: v for k, v in values.items() if v is not None})


def relay_token_source(settings: Settings) -> TokenSource:
    REGISTRY.retry_base, REGISTRY.retry_max = settings.oauth_retry_base, settings.oauth_retry_max
    return REGISTRY.source("relay", relay_oauth_config(settings))


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's format)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"
