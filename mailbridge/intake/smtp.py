"""The SMTP listener: an aiosmtpd handler that only checks, stores and answers.

Policy (which recipients, how big, how many) comes in from the rules and the
settings; the answer 250 is given only after the spool commit returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbridge import metrics
from mailbridge.db import Database, utcnow
from mailbridge.rules import Rules
from mailbridge.settings import Settings
from mailbridge.spool import InboundMail, StorageError, new_inbound, store_inbound

log = logging.getLogger(__name__)


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
    """aiosmtpd handler hooks: RCPT policy and DATA storage."""

    def __init__(
        self,
        rules: Callable[[], Rules],
        settings: Settings,
        store: Callable[[InboundMail], Any],
        *,
        lmtp: bool = False,
    ) -> None:
        self.rules = rules
        self.settings = settings
        self.store = store
        self.lmtp = lmtp
        self.in_flight = 0

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.rules().accepts_recipient(address):
            metrics.RECEIVED.labels(channel="smtp", outcome="rcpt_refused").inc()
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
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        trace = _received_header(session, envelope, server.hostname)
        mail = new_inbound(
            trace + raw,
            channel="smtp",
            mail_from=envelope.mail_from or "",
            rcpt_tos=envelope.rcpt_tos,
            source=_peer(session),
        )
        self.in_flight += 1
        try:
            inbound_id = await self.store(mail)
        except StorageError as exc:
            metrics.RECEIVED.labels(channel="smtp", outcome="tempfail").inc()
            log.error("could not store mail; answered 451", extra={"error": str(exc)[:300]})
            return "451 4.3.0 Mail not stored: local storage problem, please retry later"
        finally:
            self.in_flight -= 1
        metrics.RECEIVED.labels(channel="smtp", outcome="stored").inc()
        if self.lmtp:
            # LMTP answers once per recipient.
            return "\r\n".join(f"250 2.0.0 OK queued as {inbound_id}" for _ in envelope.rcpt_tos)
        return f"250 2.0.0 OK queued as {inbound_id}"


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _received_header(session: Session, envelope: Envelope, hostname: str) -> bytes:
    helo = "".join(ch for ch in (session.host_name or "unknown") if ch.isprintable())[:255]
    ip = session.peer[0] if isinstance(session.peer, tuple) else "unknown"
    rcpt = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None
    line = f"Received: from {helo} ([{ip}])\r\n\tby {hostname} (mailbridge) with ESMTP"
    if rcpt:
        line += f"\r\n\tfor <{rcpt}>"
    line += f"; {format_datetime(utcnow())}\r\n"
    return line.encode("ascii", "replace")


class ListenerSMTP(SMTP):
    """aiosmtpd's SMTP, tracking live connections so shutdown can close them."""

    live: set[ListenerSMTP]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        type(self).live.discard(self)
        super().connection_lost(error)

    def close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()


def smtp_factory(handler: IntakeHandler, settings: Settings) -> Callable[[], ListenerSMTP]:
    hostname = settings.hostname or "mailbridge.localdomain"

    class _Bound(ListenerSMTP):
        live: set[ListenerSMTP] = set()

    def make() -> ListenerSMTP:
        return _Bound(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="mailbridge ESMTP",
            timeout=settings.smtp_timeout,
        )

    make.live = _Bound.live  # type: ignore[attr-defined]
    return make
