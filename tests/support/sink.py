"""A real SMTP server for tests: an aiosmtpd sink that keeps what it receives."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool = False  # came over TLS (STARTTLS or implicit)
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What a test wants the relay to answer: 550 to these recipients, 421 to every MAIL
    # until this monotonic instant, the MAIL commands it saw (with their options).
    refuse: set[str] = field(default_factory=set)
    busy_until: float = 0.0
    mail_commands: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        with self.lock:
            self.mail_commands.append((address, list(mail_options)))
        if time.monotonic() < self.busy_until:
            return "421 4.3.2 sink.example busy, come back later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.lower() in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    # AUTH XOAUTH2 (Google's and Microsoft's SASL mechanism, not in aiosmtpd): `xoauth2`
    # says whether (user, token) may log in; every try is kept in `xoauth2_logins`.
    xoauth2: Callable[[str, str], bool] | None = None
    xoauth2_logins: list[tuple[str, bool]] = field(default_factory=list)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            response = base64.b64decode(args[1])
        else:
            answer = await server.challenge_auth("", encode_to_b64=False)
            if answer is MISSING:
                return AuthResult(success=False, handled=True)
            response = answer
        fields = dict(part.split("=", 1) for part in response.decode("utf-8", "replace")
                      .split("\x01") if "=" in part)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        ok = self.xoauth2 is not None and bool(token) and self.xoauth2(user, token)
        with self.lock:
            self.xoauth2_logins.append((user, ok))
        if ok:
            return AuthResult(success=True, auth_data=user)
        # RFC 7628-style failure: a 334 with the reason, the client's empty answer, 535.
        reason = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer"}).encode())
        await server.challenge_auth(reason.decode(), encode_to_b64=False)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Authentication credentials invalid")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        with self.lock:
            self.received.append(Received(
                envelope.mail_from or "", list(envelope.rcpt_tos), raw,
                tls=session.ssl is not None or (server.transport is not None
                and server.transport.get_extra_info("sslcontext") is not None),
                mail_options=list(envelope.mail_options)))
        return "250 OK"


class SmtpSink:
    """Listens on 127.0.0.1 (port 0 = the OS picks) in its own thread.

    `smtputf8`: offers SMTPUTF8 (RFC 6531); `starttls`: an SSL context to offer STARTTLS
    with; `implicit_tls`: an SSL context for TLS from the first byte (port 465 style);
    `auth`: {user: password} it accepts (AUTH PLAIN/LOGIN, only over TLS); `xoauth2`:
    whether (user, access token) may log in with AUTH XOAUTH2 (only over TLS).
    """

    def __init__(self, port: int = 0, *, smtputf8: bool = False,
                 starttls: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None,
                 auth: dict[str, str] | None = None, host: str = "127.0.0.1",
                 xoauth2: Callable[[str, str], bool] | None = None,
                 idle_timeout: float | None = None) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self.handler = _Handler(xoauth2=xoauth2)
        self.smtputf8 = smtputf8
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.logins: list[tuple[str, bool]] = []  # (user, over TLS) of every AUTH tried
        self.connections = 0  # accepted so far
        self.idle_timeout = idle_timeout  # closes a connection idle this long (421)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def mail_commands(self) -> list[tuple[str, list[str]]]:
        with self.handler.lock:
            return list(self.handler.mail_commands)

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def start(self) -> SmtpSink:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                loop.create_server(
                    self._protocol,
                    host=self.host,
                    port=self.requested_port,
                    ssl=self.implicit_tls,
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="smtp-sink", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("SMTP sink did not start")
        return self

    def _protocol(self) -> SMTP:
        self.connections += 1
        options: dict[str, Any] = {"hostname": "sink.example",
                                   "enable_SMTPUTF8": self.smtputf8}
        if self.idle_timeout is not None:
            options["timeout"] = self.idle_timeout
        if self.starttls is not None:
            options["tls_context"] = self.starttls
        if self.auth is not None:
            options["authenticator"] = self._authenticate
            options["auth_require_tls"] = True
        # A test may put its own handler in (tests/outbound/test_sender.py's _Relay).
        xoauth2 = getattr(self.handler, "xoauth2", None)
        excluded = [] if xoauth2 is not None else ["XOAUTH2"]
        if xoauth2 is not None and self.auth is None:
            excluded += ["LOGIN", "PLAIN"]
        options["auth_exclude_mechanism"] = excluded
        return SMTP(self.handler, **options)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        user = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
        password = auth_data.password.decode() if isinstance(auth_data, LoginPassword) else ""
        self.logins.append((user, session.ssl is not None))
        ok = self.auth is not None and self.auth.get(user) == password
        return AuthResult(success=ok, handled=False)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Wait (bounded) until at least `count` mails arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"sink got {len(self.received)} mails, expected {count}")
