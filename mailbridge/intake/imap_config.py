"""IMAP accounts to poll: validated settings, credentials, and where they are read from."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from mailbridge.oauth import REGISTRY, OAuthConfig, TokenError, TokenSource
from mailbridge.rules import ConfigProblem, yaml_line_index
from mailbridge.rules import nearest_line as _nearest_line

ENV_ACCOUNTS = "MAILBRIDGE_IMAP_ACCOUNTS"
ENV_ACCOUNTS_FILE = "MAILBRIDGE_IMAP_ACCOUNTS_FILE"
DEFAULT_PORTS = {"tls": 993, "starttls": 143, "none": 143}
TOKEN_COMMAND_TIMEOUT = 30.0

# An IMAP flag keyword is an atom: no spaces, parentheses, wildcards, quotes or backslash.
_KEYWORD = re.compile(r"^\$?[A-Za-z0-9_.\-]+$")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class CredentialError(Exception):
    """A password or OAuth token could not be obtained (the message holds no secret)."""


class ImapConfigError(Exception):
    """The IMAP account list is unreadable or invalid; `problems` says where."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ImapAccount(BaseModel):
    """One mailbox to poll; it stands for one support address (`queue_address`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="key in logs and the DB")
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, description="default by security")
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    xoauth2_token_command: str | list[str] | None = Field(
        default=None, repr=False, description="prints an OAuth2 access token on stdout"
    )
    auth: Literal["password", "xoauth2"] | None = Field(
        default=None, description="xoauth2 with `oauth` (built in) or xoauth2_token_command"
    )
    oauth: OAuthConfig | None = Field(
        default=None, description="built-in OAuth2: provider, token endpoint, client, secrets"
    )
    ca_file: Path | None = Field(
        default=None, description="extra CA certificates to trust (still verified)"
    )
    folder: str = "INBOX"
    processed_folder: str = "Procesados"
    quarantine_flag: str = "$MailbridgeQuarantine"
    queue_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    poll_interval: float = Field(default=60.0, gt=0)
    idle: bool = True
    idle_renew: float = Field(default=25 * 60.0, gt=0, le=29 * 60.0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    initial_sync: str = "unseen"
    max_message_size: int | None = Field(default=32 * 1024 * 1024, ge=1)
    timeout: float = Field(default=60.0, gt=0, description="socket timeout, seconds")

    @model_validator(mode="after")
    def _check(self) -> ImapAccount:
        sources = [
            name
            for name in ("password", "password_file", "password_env", "xoauth2_token_command",
                         "oauth")
            if getattr(self, name) not in (None, "", [])
        ]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of password, password_file, password_env, "
                f"xoauth2_token_command, oauth (got {', '.join(sources) or 'none'})"
            )
        if self.auth == "xoauth2" and sources[0] not in ("oauth", "xoauth2_token_command"):
            raise ValueError("auth: xoauth2 needs an `oauth` block (or xoauth2_token_command)")
        if self.auth == "password" and sources[0] in ("oauth", "xoauth2_token_command"):
            raise ValueError(f"auth: password, but {sources[0]} is given")
        if self.security == "none" and not is_loopback(self.host):
            raise ValueError(
                f"security 'none' is only allowed for a loopback host, not {self.host!r}: "
                "use 'tls' or 'starttls'"
            )
        if not _KEYWORD.match(self.quarantine_flag):
            raise ValueError(f"quarantine_flag {self.quarantine_flag!r} is not an IMAP keyword")
        if self.processed_folder == self.folder:
            raise ValueError("processed_folder must differ from folder")
        self.initial_sync_criteria()  # raises ValueError when malformed
        return self

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.security]

    @property
    def uses_oauth(self) -> bool:
        return self.xoauth2_token_command is not None or self.oauth is not None

    def token_source(self) -> TokenSource | None:
        """The built-in OAuth2 token source of this account (one per process)."""
        if self.oauth is None:
            return None
        return REGISTRY.source(f"imap:{self.name}", self.oauth)

    def initial_sync_criteria(self) -> list[Any]:
        """The UID SEARCH criteria for messages already there on the first sync."""
        mode = self.initial_sync.strip().lower()
        if mode == "all":
            return ["ALL"]
        if mode == "unseen":
            return ["UNSEEN"]
        if mode.startswith("since:"):
            try:
                return ["SINCE", date.fromisoformat(mode.removeprefix("since:").strip())]
            except ValueError:
                pass
        raise ValueError(
            f"initial_sync {self.initial_sync!r}: use 'all', 'unseen' or 'since:YYYY-MM-DD'"
        )

    def resolve_password(self, environ: Mapping[str, str] | None = None) -> str:
        """The password, read now (so a rotated file or variable is picked up)."""
        environ = os.environ if environ is None else environ
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise CredentialError(
                    f"account {self.name}: cannot read password_file {self.password_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        if self.password_env is not None:
            value = environ.get(self.password_env)
            if not value:
                raise CredentialError(
                    f"account {self.name}: environment variable {self.password_env} is not set"
                )
            return value
        raise CredentialError(f"account {self.name}: no password configured (OAuth account?)")

    def oauth_token_rejected(self) -> None:
        """The server refused the token: the built-in source asks for a new one next time."""
        source = self.token_source()
        if source is not None:
            source.invalidate()

    def fetch_oauth_token(self) -> str:
        """The XOAUTH2 access token: from the built-in source (`oauth`), else the token
        command's stdout (stripped)."""
        source = self.token_source()
        if source is not None:
            try:
                return source.token()
            except TokenError as exc:
                raise CredentialError(f"account {self.name}: {exc}") from None
        command = self.xoauth2_token_command
        if command is None:
            raise CredentialError(f"account {self.name}: no xoauth2_token_command")
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=TOKEN_COMMAND_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CredentialError(
                f"account {self.name}: token command {argv[0]!r} failed: {exc}"
            ) from None
        token = done.stdout.strip()
        if done.returncode != 0 or not token:
            # stderr may explain; stdout may hold a secret, so it is never shown
            why = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise CredentialError(
                f"account {self.name}: token command {argv[0]!r} exited {done.returncode}: "
                f"{why[0][:200]}"
            )
        return token


# -- loading ----------------------------------------------------------------------------


def _parse(text: str, source: str, *, yaml_ok: bool) -> list[ImapAccount]:
    lines: dict[tuple[Any, ...], int] = {}
    try:
        if yaml_ok:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if node is not None:
                yaml_line_index(node, (), lines)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} (column {exc.colno})"
        raise ImapConfigError([ConfigProblem(source, exc.lineno, "(syntax)", problem)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ImapConfigError([ConfigProblem(source, line, "(syntax)", problem)]) from None
    prefix: tuple[Any, ...] = ()
    if isinstance(data, dict) and "accounts" in data:
        data, prefix = data["accounts"], ("accounts",)
    if data is None:
        return []
    if not isinstance(data, list):
        problem = "expected a list of accounts (or {accounts: [...]})"
        raise ImapConfigError([ConfigProblem(source, 1, "(top)", problem)])
    accounts: list[ImapAccount] = []
    problems: list[ConfigProblem] = []
    for index, item in enumerate(data):
        try:
            accounts.append(ImapAccount.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                loc = (*prefix, index, *err["loc"])
                key = ".".join(str(p) for p in loc)
                message = err["msg"].removeprefix("Value error, ")
                problems.append(ConfigProblem(source, _nearest_line(lines, loc), key, message))
    seen: set[str] = set()
    for index, account in enumerate(accounts):
        if account.name in seen:
            loc = (*prefix, index, "name")
            problems.append(
                ConfigProblem(source, _nearest_line(lines, loc), ".".join(map(str, loc)),
                              f"duplicate account name {account.name!r}")
            )
        seen.add(account.name)
    if problems:
        raise ImapConfigError(problems)
    return accounts


def load_imap_accounts(
    value: str | None = None,
    *,
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[ImapAccount]:
    """The configured accounts; [] when none.

    `value` is the JSON list of MAILBRIDGE_IMAP_ACCOUNTS and `path` the YAML/JSON file of
    MAILBRIDGE_IMAP_ACCOUNTS_FILE; when both are None they are read from `environ`
    (default os.environ). Giving both is an error. Raises ImapConfigError naming the
    place (variable or file:line) and key of every problem.
    """
    if value is None and path is None:
        environ = os.environ if environ is None else environ
        value = environ.get(ENV_ACCOUNTS) or None
        path = environ.get(ENV_ACCOUNTS_FILE) or None
    if value is not None and path is not None:
        raise ImapConfigError(
            [ConfigProblem(ENV_ACCOUNTS, None, "(source)",
                           f"set either {ENV_ACCOUNTS} or {ENV_ACCOUNTS_FILE}, not both")]
        )
    if value is not None:
        return _parse(value, ENV_ACCOUNTS, yaml_ok=False)
    if path is None:
        return []
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImapConfigError(
            [ConfigProblem(str(file), None, "(file)", exc.strerror or str(exc))]
        ) from None
    # YAML is a superset of JSON, so one parser serves both file kinds.
    return _parse(text, str(file), yaml_ok=True)
