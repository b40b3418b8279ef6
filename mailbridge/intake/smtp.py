"""The SMTP listener: an aiosmtpd handler that only checks, stores and answers.

Policy (which recipients, how big, how many, how long, how often) comes in from
the rules and the settings; the answer 250 is given only after the spool commit
returned.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax
from prometheus_client import Counter

from mailbridge import metrics
from mailbridge.db import Database, utcnow
from mailbridge.limits import OPEN, REFUSED, LogThrottle, smtp_connection_cap
from mailbridge.rules import Rules
from mailbridge.settings import Settings
from mailbridge.spool import InboundMail, StorageError, new_inbound, store_inbound

log = logging.getLogger(__name__)

TLS_SESSIONS = Counter(
    "mailbridge_smtp_tls_sessions_total", "STARTTLS handshakes on the SMTP listener", ["outcome"]
)


class SpoolWriter:
    """Group commit: concurrent SMTP sessions share one transaction and one fsync.

    Each `store()` waits until its own mail is committed; if a batch fails, its
    mails are retried one by one so a single bad mail cannot refuse the others.
    """

    def __init__(self, db: Database, *, max_batch: int = 64, on_stored: Callable[[], None]) -> None:
        self.db = db
        self.max_batch = max_batch
        self.on_stored = on_stored
        self._queue: asyncio.Queue[tuple[InboundMail, asyncio.Future[int]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="spool-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def store(self, mail: InboundMail) -> int:
        assert self._queue is not None, "SpoolWriter.start() first"
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((mail, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)
            # Not kept while waiting for the next mail: it may hold a 25 MB message.
            del batch

    async def _commit(self, batch: list[tuple[InboundMail, asyncio.Future[int]]]) -> None:
        try:
            ids = await asyncio.to_thread(store_inbound, self.db, [m for m, _ in batch])
        except StorageError as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            for item in batch:
                await self._commit([item])
            return
        for (_mail, future), inbound_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(inbound_id)
        self.on_stored()


class IntakeHandler:
    """aiosmtpd handler hooks: RCPT policy and DATA storage.

    `channel` is what the stored mail and the metrics say it came by: "smtp" or "lmtp"
    (the LMTP listener has its own handler with the same policy and the same store).
    """

    def __init__(
        self,
        rules: Callable[[], Rules],
        settings: Settings,
        store: Callable[[InboundMail], Any],
        *,
        channel: str = "smtp",
    ) -> None:
        self.rules = rules
        self.settings = settings
        self.store = store
        self.channel = channel
        self.in_flight = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # Nobody logs in to the intake: aiosmtpd would offer AUTH (always failing) after
        # STARTTLS, so that line goes. The rest is aiosmtpd's EHLO (or LHLO) as it is.
        session.host_name = hostname
        return [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.rules().accepts_recipient(address):
            metrics.RECEIVED.labels(channel=self.channel, outcome="rcpt_refused").inc()
            log.info(
                "recipient refused",
                extra={"rcpt": address[:320], "peer": _peer(session)},
            )
            return f"550 5.7.1 <{address[:320]}>: relay access denied; not a support address"
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # ListenerSMTP hands over one bytearray that already starts with our Received:
        # line; it is stored as it is, so a big mail is not copied again here.
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if not isinstance(server, ListenerSMTP):
            raw = received_line(session, envelope, server.hostname) + raw
        mail = new_inbound(
            raw,
            channel=self.channel,
            mail_from=envelope.mail_from or "",
            rcpt_tos=envelope.rcpt_tos,
            source=_peer(session),
        )
        # The stored copy holds the only reference from here on.
        envelope.content = envelope.original_content = None
        self.in_flight += 1
        try:
            inbound_id = await self.store(mail)
        except Exception as exc:
            # Whatever went wrong, nothing was acknowledged: a 4xx makes the sender's MTA
            # keep the mail and retry (a 5xx, aiosmtpd's default, would bounce it).
            metrics.RECEIVED.labels(channel=self.channel, outcome="tempfail").inc()
            log.error("could not store mail; answered 451",
                      extra={"error": repr(exc)[:300], "storage": isinstance(exc, StorageError)})
            return "451 4.3.0 Mail not stored: local storage problem, please retry later"
        finally:
            self.in_flight -= 1
        metrics.RECEIVED.labels(channel=self.channel, outcome="stored").inc()
        return f"250 2.0.0 OK queued as {inbound_id}"


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or "unix"  # a unix socket's client has no name


def received_line(session: Session, envelope: Envelope, hostname: str,
                  protocol: str = "ESMTP") -> bytes:
    """The `Received:` trace line this listener puts on top of every mail it accepts.

    `protocol` is the RFC 3848 "with" type: ESMTP, ESMTPS (after STARTTLS) or LMTP.
    """
    helo = "".join(ch for ch in (session.host_name or "unknown") if ch.isprintable())[:255]
    where = f"[{session.peer[0]}]" if isinstance(session.peer, tuple) else "unix socket"
    rcpt = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None
    line = f"Received: from {helo} ({where})\r\n\tby {hostname} (mailbridge) with {protocol}"
    if rcpt:
        line += f"\r\n\tfor <{rcpt}>"
    line += f"; {format_datetime(utcnow())}\r\n"
    return line.encode("ascii", "replace")


@dataclass(frozen=True)
class SessionLimits:
    """What one client may do: how long, how many connections, how many commands.

    `max_connections` is the listener's total, kept below the file-descriptor limit.
    """

    idle_timeout: float
    session_timeout: float
    max_connections_per_peer: int
    command_limit: int
    max_connections: int = 0  # 0 = no total limit

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        return cls(
            idle_timeout=settings.smtp_timeout,
            session_timeout=settings.smtp_session_timeout,
            max_connections_per_peer=settings.max_connections_per_peer,
            command_limit=settings.smtp_command_limit,
            max_connections=smtp_connection_cap(settings),
        )


class PeerConnections:
    """Live connections per client IP address, shared by one listener's sessions."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, ip: str) -> int:
        self.counts[ip] += 1
        return self.counts[ip]

    def remove(self, ip: str) -> None:
        self.counts[ip] -= 1
        if self.counts[ip] <= 0:
            del self.counts[ip]


IDLE_GOODBYE = b"421 4.4.2 Idle for too long; closing connection\r\n"
SESSION_GOODBYE = b"421 4.4.2 Connection lasted too long; closing it\r\n"
BUSY_GOODBYE = "421 4.7.0 Too many connections from your address; try again later"
FULL_GOODBYE = "421 4.3.2 Too many connections; try again later"
# A flood refuses thousands of connections a second: one line a second says so.
_refusals = LogThrottle(1.0)


class ListenerSMTP(SMTP):
    """aiosmtpd's SMTP with the listener's limits, tracking live connections for shutdown.

    Limits: connections in all and per peer IP (421 before the greeting), an idle timeout and a
    total session time (both 421 and hang-up, but never while this session's mail
    is being committed: its client must hear the answer), and each command at most
    `command_limit` times per connection (aiosmtpd's call limit, 421).
    """

    live: set[ListenerSMTP]
    peers: PeerConnections
    limits: SessionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._decode_data:
            raise ValueError("ListenerSMTP stores bytes: decode_data must stay False")
        # aiosmtpd keeps these on the class, so every EHLO of every session would
        # raise the MAIL line limit for all of them: one dict per session instead.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._peer_ip: str | None = None
        self._over_peer_limit = False
        self._over_limit = False
        self._storing = False
        self._session_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).live.add(self)
        if self._peer_ip is not None:  # again after STARTTLS: the handshake is done
            TLS_SESSIONS.labels(outcome="ok").inc()
        else:
            peer = transport.get_extra_info("peername")
            self._peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
            count = self.peers.add(self._peer_ip)
            # A unix socket's clients have no address: they are the local MTA, one "peer".
            self._over_peer_limit = bool(self._peer_ip) and \
                count > self.limits.max_connections_per_peer
            cap = self.limits.max_connections
            self._over_limit = bool(cap) and len(type(self).live) > cap
            self._session_timer = asyncio.get_running_loop().call_later(
                self.limits.session_timeout, self._session_expired
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        type(self).live.discard(self)
        if self._peer_ip is not None and self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
            self.peers.remove(self._peer_ip)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._over_limit:
            self._refuse("limit", FULL_GOODBYE, "too many SMTP connections; refused",
                         self.limits.max_connections)
            return
        if self._over_peer_limit:
            self._refuse("per_peer", BUSY_GOODBYE, "too many connections from one peer; refused",
                         self.limits.max_connections_per_peer)
            return
        await super()._handle_client()

    def _refuse(self, reason: str, answer: str, message: str, limit: int) -> None:
        """421 instead of the greeting, then hang up: nothing is read from this client."""
        REFUSED.labels(listener="smtp", reason=reason).inc()
        allowed, suppressed = _refusals.allow(reason)
        if allowed:
            log.warning(message, extra={"peer": self._peer_ip, "limit": limit,
                                        "open": len(type(self).live),
                                        "suppressed": suppressed})
        self._goodbye(answer.encode("ascii") + b"\r\n")

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS, with failed handshakes counted."""
        try:
            await super().smtp_STARTTLS(arg)
        except Exception:
            TLS_SESSIONS.labels(outcome="failed").inc()
            raise

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the message collected in one bytearray, trace line first.

        aiosmtpd keeps a bytearray per line and joins them (three copies of a big
        mail at once); here each line is dot-unstuffed (RFC 5321 4.5.2) straight
        into one buffer that starts with our `Received:` line, and the handler
        stores that buffer. Same checks, limits and replies as aiosmtpd 1.4:
        a line over `line_length_limit` answers 500, more than `data_size_limit`
        bytes 552, both only after the final dot, and nothing is kept meanwhile.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        recipients = list(self.envelope.rcpt_tos)
        buffer = bytearray(received_line(self.session, self.envelope, self.hostname,
                                         self.trace_protocol))
        trace_length = len(buffer)
        limit = self.data_size_limit
        received = 0
        too_long = too_much = False
        in_long_line = False  # inside a line the reader could not return whole
        ended = False
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA", extra={"peer": self._peer_ip})
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                too_long = too_long or not too_much
                del buffer[trace_length:]
                line = await self._reader.read(exc.consumed)
            if not in_long_line and line == b".\r\n":
                ended = True
                break
            received += len(line)
            if not (too_long or too_much) and limit and received > limit:
                too_much = True
                del buffer[trace_length:]
            complete = line.endswith(b"\r\n")
            if complete and not (in_long_line or too_long or too_much):
                if len(line) > self.line_length_limit:
                    too_long = True
                    del buffer[trace_length:]
                elif line.startswith(b"."):
                    buffer += memoryview(line)[1:]
                else:
                    buffer += line
            in_long_line = not complete
        if not ended:  # the connection went away: a mail without its final dot is not stored
            return
        if too_long:
            await self.push_final("500 Line too long (see RFC5321 4.5.3.1.6)", recipients)
        elif too_much:
            await self.push_final("552 Error: Too much mail data", recipients)
        if too_long or too_much:
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = buffer
        del buffer
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else None
        self._set_post_data_state()
        await self.push_final(status if isinstance(status, str) else "250 OK", recipients)

    @property
    def trace_protocol(self) -> str:
        """The `with` word of our Received: line (RFC 3848)."""
        return "ESMTPS" if self._tls_protocol is not None else "ESMTP"

    async def push_final(self, status: str, recipients: list[str]) -> None:
        """The answer after the final dot: one line for SMTP (see ListenerLMTP)."""
        await self.push(status)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self._storing = True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self._storing = False

    def _timeout_cb(self) -> None:
        """Idle timeout (aiosmtpd's timer): say 421 before hanging up."""
        if self._storing:
            self._reset_timeout(1.0)
            return
        log.info("SMTP client idle too long; closed", extra={"peer": self._peer_ip})
        self._goodbye(IDLE_GOODBYE)

    def _session_expired(self) -> None:
        if self.transport is None:
            return
        if self._storing:
            self._session_timer = asyncio.get_running_loop().call_later(
                1.0, self._session_expired
            )
            return
        log.warning("SMTP session too long; closed",
                    extra={"peer": self._peer_ip, "limit": self.limits.session_timeout})
        self._goodbye(SESSION_GOODBYE)

    def _goodbye(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line)  # type: ignore[attr-defined]
            self.transport.close()

    def close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()


_STATUS = re.compile(r"^(\d{3})(?: (\d\.\d{1,3}\.\d{1,3}))?(?: (.*))?$", re.S)


class ListenerLMTP(ListenerSMTP, LMTP):
    """LMTP (RFC 2033) on the same limits and the same store: aiosmtpd's LHLO (HELO and
    EHLO are refused), and after the final dot one reply per accepted recipient.

    The mail is stored once for all its recipients, so every recipient hears the same
    outcome: 250 each once it is committed, 451 each when the store failed.
    """

    @property
    def trace_protocol(self) -> str:
        return "LMTP"

    async def push_final(self, status: str, recipients: list[str]) -> None:
        match = _STATUS.match(status)
        code, enhanced, text = match.groups() if match else (status[:3], None, status[4:])
        prefix = f"{code} {enhanced} " if enhanced else f"{code} "
        for rcpt in recipients:
            await self.push(f"{prefix}<{rcpt[:320]}> {text or ''}".rstrip())


class ServerTls:
    """The certificate the SMTP listener offers with STARTTLS, loaded again on SIGHUP.

    A connection takes the context current when it opens; a reload that fails (missing
    file, key not matching) is logged and leaves the old certificate in use.
    """

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = self._load()

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def reload(self) -> bool:
        try:
            self.context = self._load()
        except (OSError, ssl.SSLError) as exc:
            log.error("SMTP TLS certificate not reloaded; the previous one stays in use",
                      extra={"cert": str(self.cert_file), "error": str(exc)[:300]})
            return False
        log.info("SMTP TLS certificate reloaded", extra={"cert": str(self.cert_file)})
        return True

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        if settings.smtp_tls_cert is None or settings.smtp_tls_key is None:
            return None
        return cls(settings.smtp_tls_cert, settings.smtp_tls_key)


def smtp_factory(handler: IntakeHandler, settings: Settings, *,
                 tls: ServerTls | None = None, lmtp: bool = False) -> Callable[[], ListenerSMTP]:
    """Protocol factory of one listener: SMTP (STARTTLS when `tls`), or LMTP."""
    hostname = settings.hostname or "mailbridge.localdomain"
    limits = SessionLimits.from_settings(settings)
    listener = "lmtp" if lmtp else "smtp"
    base: type[ListenerSMTP] = ListenerLMTP if lmtp else ListenerSMTP

    class _Bound(base):  # type: ignore[valid-type,misc]
        live: set[ListenerSMTP] = set()
        peers = PeerConnections()

    _Bound.limits = limits
    OPEN.labels(listener=listener).set_function(lambda: len(_Bound.live))

    def make() -> ListenerSMTP:
        options: dict[str, Any] = {}
        if tls is not None:
            options = {"tls_context": tls.context, "require_starttls": settings.smtp_require_tls}
        return _Bound(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="mailbridge LMTP" if lmtp else "mailbridge ESMTP",
            timeout=limits.idle_timeout,
            command_call_limit=limits.command_limit,
            **options,
        )

    make.live = _Bound.live  # type: ignore[attr-defined]
    return make
