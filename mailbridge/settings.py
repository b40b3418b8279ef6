"""Infrastructure settings: MAILBRIDGE_* from the environment or a `.env` file."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def parse_hostport(value: str, *, default_port: int) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) into its parts."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    return host or "127.0.0.1", int(port) if port else default_port


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address stays on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting has a safe default: the embedded setup needs none of them."""

    model_config = SettingsConfigDict(
        env_prefix="MAILBRIDGE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default a SQLite file under the data dir"
    )
    rules: Path = Field(default=Path("rules.yaml"), description="business rules file")
    data_dir: Path = Field(default=Path("var"), description="spool, evidence, outbound Maildir")
    smtp_listen: str = Field(default="127.0.0.1:2525", description="SMTP listener host:port")
    relay: str | None = Field(default=None, description="outbound relay host:port; unset = Maildir")
    relay_user: str | None = None
    relay_password: SecretStr | None = None
    relay_starttls: bool = Field(default=False, description="STARTTLS on the relay connection")
    relay_tls: bool = Field(
        default=False, description="implicit TLS from the first byte (port 465; the default there)"
    )
    relay_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that signs the relay's certificate (private CA)"
    )
    relay_timeout: float = 30.0
    relay_keep_open: float = Field(
        default=5.0, ge=0,
        description="seconds an idle relay connection is kept for the next mail "
                    "(0: closed after each sending pass)",
    )
    http_listen: str = Field(default="127.0.0.1:8025", description="health and metrics")
    imap_accounts: str | None = Field(
        default=None, description="JSON list of IMAP accounts (see README: IMAP intake)"
    )
    imap_accounts_file: Path | None = Field(default=None, description="YAML/JSON accounts file")

    max_message_size: int = Field(default=32 * 1024 * 1024, description="bytes; larger gets 552")
    max_recipients: int = Field(default=20, description="RCPT TO per message; more gets 452")
    smtp_timeout: float = Field(default=300.0, description="idle seconds before the SMTP hangup")
    smtp_session_timeout: float = Field(
        default=900.0, gt=0, description="seconds one SMTP connection may last in all; then 421"
    )
    max_connections_per_peer: int = Field(
        default=20, ge=1, description="concurrent SMTP connections from one IP; more get 421"
    )
    smtp_command_limit: int = Field(
        default=200, ge=1, description="times one SMTP command may come per connection; then 421"
    )
    hostname: str | None = Field(default=None, description="name in the SMTP greeting")
    sender_auth: str = Field(
        default="off", pattern=r"^(off|authres|dkim)$",
        description="a contact's mail must pass DMARC/DKIM (authres: the trusted upstream's "
        "Authentication-Results; dkim: verified here) or it counts as an unknown sender",
    )
    trusted_authserv_id: str | None = Field(
        default=None, description="authserv-id of the upstream whose Authentication-Results count"
    )

    max_attachment_size: int = Field(
        default=10 * 1024 * 1024, description="bytes; larger evidence is listed, not kept apart"
    )

    outbox_retry_base: float = Field(default=30.0, description="first retry delay, seconds")
    outbox_retry_max: float = Field(default=3600.0, description="longest retry delay, seconds")
    outbox_max_attempts: int = Field(default=200, description="then the row is marked failed")
    worker_poll_interval: float = Field(default=2.0, description="seconds between queue scans")
    pipeline_batch: int = Field(
        default=16, ge=1, le=256,
        description="SQLite: waiting mails processed in one write transaction (savepoint each)",
    )
    pipeline_processes: int = Field(
        default=0, ge=0, le=64,
        description="0 = the pipeline runs as a thread of the daemon; N = in N child processes",
    )
    drain_timeout: float = Field(default=30.0, description="seconds SIGTERM waits for work")
    ack_deadline: float = Field(default=900.0, description="acknowledgement promise, seconds")
    sla_sweep_interval: float = Field(
        default=60.0, ge=0, description="seconds between SLA/escalation sweeps; 0 = off here"
    )
    log_level: str = "INFO"
    log_format: str = Field(default="json", description="json or text")

    # Listener limits under floods (docs/reliability.md, "Connection limits").
    max_connections: int = Field(
        default=0, ge=0,
        description="concurrent SMTP connections in all; more get 421. 0 = derived from the "
        "file-descriptor limit (RLIMIT_NOFILE) less what the database and HTTP need",
    )
    http_max_connections: int = Field(
        default=64, ge=1,
        description="HTTP connections served at once; past it requests get 503, and past "
        "twice as many a connection is answered 503 and closed at once",
    )
    http_timeout: float = Field(
        default=10.0, gt=0,
        description="seconds an HTTP request may take to arrive in full; then the connection "
        "is closed",
    )
    http_keepalive_timeout: int = Field(
        default=5, ge=1, description="seconds an idle HTTP keep-alive connection stays open"
    )

    # Mail connectivity (issue 19): LMTP, inbound TLS, OAuth2 for the relay.
    lmtp_listen: str | None = Field(
        default=None,
        description="LMTP listener: host:port, or the path of a unix socket (contains a /)",
    )
    lmtp_socket_mode: str = Field(
        default="0660", pattern=r"^0?[0-7]{3}$",
        description="permissions of the LMTP unix socket (the MTA's user must reach it)",
    )
    smtp_tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) offered with STARTTLS on SMTP"
    )
    smtp_tls_key: Path | None = Field(default=None, description="its PEM private key")
    smtp_require_tls: bool = Field(
        default=False, description="refuse MAIL (and AUTH) before STARTTLS on the SMTP listener"
    )
    relay_auth: str = Field(
        default="password", pattern=r"^(password|xoauth2)$",
        description="relay authentication: password (MAILBRIDGE_RELAY_PASSWORD) or xoauth2",
    )
    relay_oauth_provider: str = Field(
        default="generic", pattern=r"^(microsoft|google|generic)$",
        description="whose token endpoint and default scope (see README: OAuth2)",
    )
    relay_oauth_tenant: str | None = Field(
        default=None, description="Microsoft: the tenant (ID or domain) of the token endpoint"
    )
    relay_oauth_token_url: str | None = Field(default=None, description="token endpoint URL")
    relay_oauth_client_id: str | None = None
    relay_oauth_client_secret: SecretStr | None = None
    relay_oauth_client_secret_file: Path | None = None
    relay_oauth_refresh_token_file: Path | None = Field(
        default=None, description="refresh-token grant: the token's file (rotations written back)"
    )
    relay_oauth_grant: str | None = Field(
        default=None, pattern=r"^(client_credentials|refresh_token)$",
        description="default: refresh_token when a refresh token file is given",
    )
    relay_oauth_scope: str | None = Field(default=None, description="default by provider")
    relay_oauth_ca_file: Path | None = Field(
        default=None, description="PEM CA that signs the token endpoint's certificate"
    )
    oauth_retry_base: float = Field(
        default=5.0, gt=0, description="seconds before retrying a failed token renewal (doubling)"
    )
    oauth_retry_max: float = Field(default=300.0, gt=0, description="longest such wait")
    # The desk's tools (README "API, webhooks and the board"): signed webhooks and the board.
    webhooks: str | None = Field(
        default=None, description="JSON list of webhook targets (README: Webhooks)"
    )
    webhooks_file: Path | None = Field(default=None, description="YAML/JSON webhooks file")
    webhook_timeout: float = Field(default=10.0, gt=0, description="seconds one POST may take")
    webhook_retry_base: float = Field(default=10.0, gt=0, description="first retry delay, s")
    webhook_retry_max: float = Field(default=600.0, gt=0, description="longest retry delay, s")
    webhook_retry_for: float = Field(
        default=86400.0, gt=0,
        description="seconds an event is retried for a target; then it is marked failed",
    )
    webhook_retention: float = Field(
        default=7 * 86400.0, gt=0, description="seconds finished webhook events are kept"
    )
    board_session_hours: float = Field(
        default=12.0, gt=0, description="hours a board login lasts"
    )
    archive_after_days: float = Field(
        default=90.0, ge=0,
        description="`mailbridge archive`: days after a case closed (or a caseless mail "
                    "arrived) before its raw message moves to the compressed archive",
    )

    @field_validator("relay", mode="before")
    @classmethod
    def _empty_relay_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @model_validator(mode="after")
    def _relay_auth_needs_tls(self) -> Settings:
        if self.relay_starttls and self.relay_tls:
            raise ValueError("MAILBRIDGE_RELAY_STARTTLS and MAILBRIDGE_RELAY_TLS exclude each "
                             "other: STARTTLS upgrades a clear connection, TLS starts encrypted")
        if self.relay and self.relay_user and self.relay_security == "none" \
                and not is_loopback_host(self.relay_address[0]):  # type: ignore[index]
            raise ValueError(
                "MAILBRIDGE_RELAY_USER is set but the relay connection would not be encrypted: "
                "set MAILBRIDGE_RELAY_STARTTLS=true or MAILBRIDGE_RELAY_TLS=true (a password is "
                "sent in clear only to a relay on loopback)"
            )
        return self

    @model_validator(mode="after")
    def _listener_tls(self) -> Settings:
        if (self.smtp_tls_cert is None) != (self.smtp_tls_key is None):
            raise ValueError("MAILBRIDGE_SMTP_TLS_CERT and MAILBRIDGE_SMTP_TLS_KEY go together")
        if self.smtp_require_tls and self.smtp_tls_cert is None:
            raise ValueError("MAILBRIDGE_SMTP_REQUIRE_TLS needs MAILBRIDGE_SMTP_TLS_CERT and "
                             "MAILBRIDGE_SMTP_TLS_KEY (there is no TLS to require)")
        if self.relay_auth == "xoauth2" and self.relay and not self.relay_user:
            raise ValueError("MAILBRIDGE_RELAY_AUTH=xoauth2 needs MAILBRIDGE_RELAY_USER "
                             "(the mailbox the token is for)")
        return self

    @property
    def lmtp_address(self) -> tuple[str, int] | str | None:
        """Where LMTP listens: (host, port), a unix socket path, or None (off)."""
        if not self.lmtp_listen:
            return None
        if "/" in self.lmtp_listen:
            return self.lmtp_listen
        return parse_hostport(self.lmtp_listen, default_port=24)

    @property
    def relay_security(self) -> str:
        """How the relay connection is encrypted: "tls" (implicit), "starttls" or "none"."""
        if self.relay_tls:
            return "tls"
        if self.relay_starttls:
            return "starttls"
        address = self.relay_address
        return "tls" if address is not None and address[1] == 465 else "none"

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mailbridge.db').resolve()}"

    @property
    def smtp_address(self) -> tuple[str, int]:
        return parse_hostport(self.smtp_listen, default_port=2525)

    @property
    def http_address(self) -> tuple[str, int]:
        return parse_hostport(self.http_listen, default_port=8025)

    @property
    def relay_address(self) -> tuple[str, int] | None:
        return parse_hostport(self.relay, default_port=25) if self.relay else None

    @property
    def outbound_maildir(self) -> Path:
        return self.data_dir / "outbound"

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir / "evidence"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"


def load_settings() -> Settings:
    return Settings()
