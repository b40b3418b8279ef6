"""The sender: drains the outbox through the relay (or a local Maildir), with backoff."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.db import Database, UTCDateTime, utcnow
from mailbridge.oauth import TokenError, relay_token_source, xoauth2_string
from mailbridge.outbound.addresses import header_block_is_ascii
from mailbridge.outbound.outbox import STATE_FAILED, STATE_PENDING, STATE_SENT, OutboxMail
from mailbridge.settings import Settings, is_loopback_host
from mailbridge.tickets.models import Ticket, TicketEvent
from mailbridge.workers import BackgroundLoop

log = logging.getLogger(__name__)


class PermanentFailure(Exception):
    """This mail cannot be sent as it is (5xx, an address the relay cannot take, an
    encoding error): retrying will not help. Only its own row fails."""


class TransientFailure(Exception):
    """Try again later. `relay_down`: the relay itself is unreachable or closing
    (connection error, 421), so nothing else is tried either until it has rested;
    otherwise only this mail was deferred (4xx to its MAIL, RCPT or DATA)."""

    def __init__(self, message: str, *, relay_down: bool = False) -> None:
        super().__init__(message)
        self.relay_down = relay_down


# What the relay refused of a mail it otherwise took: {recipient: (code, text)}.
Refused = dict[str, tuple[int, bytes]]


def _maildir_name(message_id: str) -> str:
    """One file name per Message-ID: a mail delivered before a crash is not written twice."""
    digest = hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:32]
    return f"mb{digest}.{_HOST}"


_HOST = socket.gethostname().replace("/", "_").replace(":", "_") or "localhost"
# A half-written file left in tmp by a killed daemon is removed at start; one this old is
# removed whoever wrote it (the Maildir convention is 36 hours).
_STALE_TMP_SECONDS = 36 * 3600


class MaildirTransport:
    """The embedded default: each mail becomes a file in <data>/outbound/new."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.clean_tmp()

    def clean_tmp(self) -> int:
        """Remove what a killed writer left in tmp (its mail is still pending in the outbox,
        so it is written again); returns how many files went."""
        removed = 0
        now = time.time()
        for path in (self.root / "tmp").iterdir():
            stem, _, pid = path.name.rpartition(".")  # <mbDIGEST>.<host>.<pid>
            ours = stem.partition(".")[2] == _HOST and pid.isdigit()
            try:
                if (ours and not _pid_alive(int(pid))) \
                        or now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            log.warning("outbound maildir: removed half-written files", extra={"count": removed})
        return removed

    def open(self) -> None:  # nothing to connect
        return None

    def close(self) -> None:
        return None

    def release(self) -> None:
        return None

    def expire(self) -> float | None:
        return None

    def send(self, mail_from: str, rcpt_tos: list[str], raw: bytes, message_id: str) -> Refused:
        name = _maildir_name(message_id)
        final = self.root / "new" / name
        if final.exists() or any((self.root / "cur").glob(f"{name}:*")):
            return {}  # delivered before a crash that kept the outbox from recording it
        tmp = self.root / "tmp" / f"{name}.{os.getpid()}"
        envelope_to = ", ".join(_one_line(r) for r in rcpt_tos)
        try:
            with open(tmp, "wb") as handle:
                handle.write(f"Return-Path: <{_one_line(mail_from)}>\r\n".encode())
                handle.write(f"X-Envelope-To: {envelope_to}\r\n".encode())
                handle.write(raw)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, final)
            dir_fd = os.open(self.root / "new", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TransientFailure(f"maildir: {exc}", relay_down=True) from exc
        return {}


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A kept connection idle longer than this is asked (NOOP) whether it is still open
# before a mail goes on it; within a pass mails follow each other without asking.
_PROBE_AFTER = 1.0
# …and is not kept past this age (seconds), however busy: a credential revoked or
# rotated meanwhile (a new OAuth token, a password) is used again within this time.
_REUSE_LIMIT = 300.0


class RelayTransport:
    """SMTP to the configured relay; one connection reused across a batch, and kept
    `relay_keep_open` seconds for the next one (as Postfix caches its connections): a
    connection costs a TLS handshake and a login, often more than the mail.

    TLS is verified (certificate and host name; `relay_ca_file` for a private CA), either
    implicit (`relay_tls`, port 465) or by STARTTLS, which must then succeed. A password is
    never sent over a clear connection unless the relay is on loopback.
    """

    def __init__(self, settings: Settings) -> None:
        assert settings.relay_address is not None
        self.host, self.port = settings.relay_address
        self.settings = settings
        self.security = settings.relay_security
        self.client: smtplib.SMTP | None = None
        self._tls_context: ssl.SSLContext | None = None
        self.last_used = 0.0  # monotonic: the connection's last exchange
        self.opened_at = 0.0
        self.connections = 0  # opened so far (logged, and counted by the tests)

    def tls_context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            ca = self.settings.relay_ca_file
            self._tls_context = ssl.create_default_context(cafile=str(ca) if ca else None)
        return self._tls_context

    def open(self) -> None:
        if self.client is not None:
            if time.monotonic() - self.last_used < _PROBE_AFTER:
                return  # the same pass: it answered a moment ago
            if self._still_there():
                return
            self._drop()
        timeout = self.settings.relay_timeout
        client: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout,
                                          context=self.tls_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=timeout)
            client.ehlo()
            if self.security == "starttls":
                client.starttls(context=self.tls_context())
                client.ehlo()
            if self.settings.relay_auth == "xoauth2" and self.settings.relay_user:
                self._login_xoauth2(client)
            elif self.settings.relay_user and self.settings.relay_password:
                if self.security == "none" and not is_loopback_host(self.host):
                    raise smtplib.SMTPException("refusing to send the relay password over a "
                                                "connection that is not encrypted")
                client.login(
                    self.settings.relay_user, self.settings.relay_password.get_secret_value()
                )
        except TokenError as exc:
            if client is not None:
                client.close()
            raise TransientFailure(f"relay {self.host}:{self.port}: {exc}",
                                   relay_down=True) from exc
        except (OSError, smtplib.SMTPException) as exc:
            if client is not None:
                client.close()
            raise TransientFailure(f"relay {self.host}:{self.port}: {exc}",
                                   relay_down=True) from exc
        self.client = client
        self.connections += 1
        self.opened_at = self.last_used = time.monotonic()

    def _still_there(self) -> bool:
        """A kept connection the relay may have closed meanwhile (its idle timeout, a
        restart): NOOP tells, so that a stale one is replaced, not taken for a relay
        that is down."""
        assert self.client is not None
        try:
            code, _text = self.client.noop()
        except (OSError, smtplib.SMTPException):
            return False
        if code != 250:
            return False
        self.last_used = time.monotonic()
        return True

    def release(self) -> None:
        """The end of a sending pass: the connection is kept for the next one, unless
        `relay_keep_open` is 0 or the connection is older than `_REUSE_LIMIT`."""
        if self.settings.relay_keep_open <= 0 or \
                time.monotonic() - self.opened_at > _REUSE_LIMIT:
            self.close()

    def expire(self) -> float | None:
        """Close the connection once it has been idle `relay_keep_open` seconds; else the
        seconds it may still wait (None: no connection open)."""
        if self.client is None:
            return None
        left = self.last_used + self.settings.relay_keep_open - time.monotonic()
        if left <= 0:
            self.close()
            return None
        return left

    def _login_xoauth2(self, client: smtplib.SMTP) -> None:
        """AUTH XOAUTH2 with the relay's current access token (mailbridge/oauth.py)."""
        if self.security == "none" and not is_loopback_host(self.host):
            raise smtplib.SMTPException("refusing to send an OAuth token over a connection "
                                        "that is not encrypted")
        user = self.settings.relay_user or ""
        source = relay_token_source(self.settings)
        token = source.token()
        try:
            # On a refusal the server sends a 334 with its reason: the answer is empty.
            client.auth("XOAUTH2", lambda challenge=None: "" if challenge is not None
                        else xoauth2_string(user, token), initial_response_ok=True)
        except smtplib.SMTPAuthenticationError:
            source.invalidate()  # revoked or expired early: the next try gets a new one
            raise

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self.client = None

    def _drop(self) -> None:
        """After a failed exchange the session state is unknown: start the next one afresh."""
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None

    def _mail_options(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> list[str]:
        assert self.client is not None
        if mail_from.isascii() and all(r.isascii() for r in rcpt_tos) \
                and header_block_is_ascii(raw):
            return []
        if not self.client.has_extn("smtputf8"):
            international = [a for a in (mail_from, *rcpt_tos) if not a.isascii()]
            raise PermanentFailure(
                "the relay does not offer SMTPUTF8, which this internationalised address "
                f"needs: {', '.join(international) or 'UTF-8 headers'}"
            )
        return ["SMTPUTF8", "BODY=8BITMIME"] if self.client.has_extn("8bitmime") \
            else ["SMTPUTF8"]

    def send(self, mail_from: str, rcpt_tos: list[str], raw: bytes, message_id: str) -> Refused:
        self.open()
        assert self.client is not None
        try:
            options = self._mail_options(mail_from, rcpt_tos, raw)
            refused: Refused = self.client.sendmail(mail_from, rcpt_tos, raw,
                                                    mail_options=options)
        except PermanentFailure:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop()
            raise self._failure_for(exc.recipients) from exc
        except smtplib.SMTPResponseException as exc:
            self._drop()
            text = f"{exc.smtp_code} {exc.smtp_error!r}"
            if 500 <= exc.smtp_code < 600:
                raise PermanentFailure(text) from exc
            raise TransientFailure(text, relay_down=exc.smtp_code == 421) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise TransientFailure(str(exc), relay_down=True) from exc
        except (UnicodeError, ValueError) as exc:  # smtplib could not write this mail
            self._drop()
            raise PermanentFailure(f"cannot be written to the relay: {exc}") from exc
        self.last_used = time.monotonic()
        return refused

    @staticmethod
    def _failure_for(recipients: Refused) -> PermanentFailure | TransientFailure:
        codes = [code for code, _msg in recipients.values()]
        text = "; ".join(f"{r}: {c} {m!r}" for r, (c, m) in recipients.items())
        if all(500 <= c < 600 for c in codes):
            return PermanentFailure(text)
        return TransientFailure(text, relay_down=421 in codes)


class AcceptedMarker:
    """Message-IDs the relay accepted that the database does not yet record as sent.

    The SQLite sender sends a chunk, then records it in one commit. A crash, or a
    database error at that commit (locked, disk full), used to send the whole chunk
    again. Each ID is appended right after the relay's 250 (one write, no fsync: it is
    there for a killed process, not a power cut) and the list is cleared after the
    commit; before sending anything, a pass records the pending rows it names as sent.
    The file keeps a fixed size, so a full disk cannot refuse the write.
    """

    SIZE = 64 * 1024

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size != self.SIZE:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, bytes(self.SIZE), 0)
        self.used = len(os.pread(self.fd, self.SIZE, 0).rstrip(b"\0"))

    def get(self) -> list[str]:
        if not self.used:  # this process is the file's only writer: nothing to read
            return []
        data = os.pread(self.fd, self.used, 0).rstrip(b"\0").decode("utf-8", "replace")
        return [line for line in data.split("\n") if line]

    def add(self, message_id: str) -> None:
        data = message_id.encode("utf-8", "replace") + b"\n"
        if self.used + len(data) > self.SIZE:
            log.warning("outbox marker full", extra={"message_id": message_id})
            return
        if self._write(data, self.used):
            self.used += len(data)

    def clear(self) -> None:
        if self.used and self._write(bytes(self.used), 0):
            self.used = 0

    def _write(self, data: bytes, offset: int) -> bool:
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as exc:  # only the crash window reopens; the send itself stands
            log.warning("outbox marker not written", extra={"error": str(exc)})
            return False
        return True


def _take_dead_markers(run_dir: Path) -> list[str]:
    """The Message-IDs in the markers of this host's dead PostgreSQL workers; the files go."""
    found: list[str] = []
    for path in run_dir.glob(f"outbox-accepted.{_HOST}.*"):
        pid = path.name.rpartition(".")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            data = path.read_bytes().rstrip(b"\0").decode("utf-8", "replace")
            path.unlink()
        except OSError:
            continue
        found.extend(line for line in data.split("\n") if line)
    return found


@dataclass
class SendResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0  # taken by another worker, or already done


_Failure = PermanentFailure | TransientFailure


@dataclass(frozen=True)
class _Attempt:
    """What recording a failed try needs of its row (read while the row is ours)."""

    id: int
    attempts: int  # before this try
    kind: str
    ticket_id: int | None
    message_id: str


# The sender's statements, built once: Core on the tables, bound parameters only. The
# ORM's identity map and unit of work cost more than the mail's SMTP exchange did.
_OUTBOX = OutboxMail.__table__
_O = _OUTBOX.c
_TICKETS = Ticket.__table__
_NOW = bindparam("now", type_=UTCDateTime)
_IS_DUE = and_(_O.state == STATE_PENDING, _O.next_attempt_at <= _NOW)
# A pass walks forward by id, so it never tries one mail twice (a row deferred with no
# delay waits for the next pass).
_DUE_ROWS = (
    select(_O.id, _O.mail_from, _O.rcpt_tos, _O.raw, _O.message_id)
    .where(_IS_DUE, _O.id > bindparam("after")).order_by(_O.id).limit(bindparam("limit"))
)
_NEXT_DUE = select(func.min(_O.next_attempt_at)).where(_O.state == STATE_PENDING)
# PostgreSQL: a chunk of due rows stays locked for the whole send (another worker skips
# them and takes the next ones).
_LOCK_DUE = (
    select(_O.id, _O.mail_from, _O.rcpt_tos, _O.raw, _O.message_id, _O.attempts, _O.kind,
           _O.ticket_id)
    .where(_IS_DUE, _O.id > bindparam("after")).order_by(_O.id).limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_PENDING_ONE = select(_O.id, _O.attempts, _O.kind, _O.ticket_id, _O.message_id).where(
    _O.id == bindparam("id"), _O.state == STATE_PENDING
)
# The WHERE on the state is the guard: a row someone else recorded meanwhile is not
# counted again (it does not come back from RETURNING).
_SENT_RETURNING = (_O.id, _O.kind, _O.ticket_id, _O.message_id, _O.trigger_received_at)
_MARK_SENT = (
    update(_OUTBOX)
    .where(_O.id.in_(bindparam("ids", expanding=True)), _O.state == STATE_PENDING)
    .values(state=STATE_SENT, sent_at=_NOW, last_error=None, attempts=_O.attempts + 1)
    .returning(*_SENT_RETURNING)
)
_MARK_SENT_BY_MESSAGE_ID = (
    update(_OUTBOX)
    .where(_O.message_id.in_(bindparam("message_ids", expanding=True)),
           _O.state == STATE_PENDING)
    .values(state=STATE_SENT, sent_at=_NOW, last_error=None, attempts=_O.attempts + 1)
    .returning(*_SENT_RETURNING)
)
_MARK_FAILED = (
    update(_OUTBOX)
    .where(_O.id == bindparam("row_id"))
    .values(state=STATE_FAILED, last_error=bindparam("error"), attempts=bindparam("tries"))
)
_MARK_RETRY = (
    update(_OUTBOX)
    .where(_O.id == bindparam("row_id"))
    .values(next_attempt_at=bindparam("retry_at", type_=UTCDateTime),
            last_error=bindparam("error"), attempts=bindparam("tries"))
)
# The first ack sent is when the case was acknowledged; a later one does not move it.
_MARK_ACKED = (
    update(_TICKETS)
    .where(_TICKETS.c.id.in_(bindparam("ids", expanding=True)), _TICKETS.c.acked_at.is_(None))
    .values(acked_at=_NOW)
)
_ADD_EVENT = insert(TicketEvent.__table__)


class OutboxSender(BackgroundLoop):
    """Runs in its own thread; woken when the pipeline queues mail."""

    thread_name = "outbox-sender"

    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__()
        self.db = db
        self.settings = settings
        self.transport: MaildirTransport | RelayTransport
        if settings.relay:
            self.transport = RelayTransport(settings)
        else:
            self.transport = MaildirTransport(settings.outbound_maildir)
        # SQLite: one sender at a time per database file (`sqlite_sender_lock`), one marker
        # per data directory. On PostgreSQL several workers may
        # share a data directory: each has its own, and takes over those of dead workers
        # of this host (their mail is recorded, not sent again, once this one starts).
        if db.is_sqlite:
            self.accepted = AcceptedMarker(settings.run_dir / "outbox-accepted")
            self.inherited: list[str] = []
        else:
            self.accepted = AcceptedMarker(
                settings.run_dir / f"outbox-accepted.{_HOST}.{os.getpid()}")
            self.inherited = _take_dead_markers(settings.run_dir)
        # After the relay failed as a whole (unreachable, 421) nothing is tried before
        # this instant (monotonic), so a dead relay is not hammered once per queued row.
        # The pause doubles with each failure in a row and ends at the first mail taken.
        self.paused_until = 0.0
        self.relay_failures = 0

    def paused(self) -> bool:
        return time.monotonic() < self.paused_until

    def _run(self) -> None:
        failed_passes = 0
        while not self._stop.is_set():
            try:
                result = self.send_due()
                failed_passes = 0
            except Exception:
                # Not a mail's fault (each row fails on its own): the database, most likely.
                # Backed off, so a lasting fault costs a log line every minute, not a loop.
                failed_passes += 1
                log.exception("outbox pass failed", extra={"failed_passes": failed_passes})
                self.wakeup.wait(min(60.0, 0.5 * 2 ** min(failed_passes, 7)))
                self.wakeup.clear()
                continue
            if result.sent and not self.paused():
                continue  # more may be waiting: go again without sleeping
            wait = self._idle_wait()
            kept = self.transport.expire()  # a kept relay connection closes when idle
            self.wakeup.wait(wait if kept is None else min(wait, kept))
            self.wakeup.clear()
            self.transport.expire()
        self.transport.close()

    def _idle_wait(self) -> float:
        """Sleep until the next row is due, bounded by the poll interval."""
        try:
            with self.db.reader() as session:
                due = session.execute(_NEXT_DUE).scalar()
        except Exception as exc:  # the database is away: the thread must outlive it
            log.warning("outbox: next due time unknown", extra={"error": str(exc)[:300]})
            return self.settings.worker_poll_interval
        pause = self.paused_until - time.monotonic()
        if due is None:
            return self.settings.worker_poll_interval
        seconds = max((due - utcnow()).total_seconds(), pause)
        return max(0.05, min(seconds, self.settings.worker_poll_interval))

    def send_due(self, limit: int = 100) -> SendResult:
        """Send what is due now; returns the counts. Safe to call from tests."""
        result = SendResult()
        if self.paused():
            return result
        try:
            if self.db.is_sqlite:
                # Another daemon on this database file sending now: it takes these too.
                if not self.db.sqlite_sender_lock.try_acquire():
                    return result
                try:
                    self._send_batch_sqlite(result, limit)
                finally:
                    self.db.sqlite_sender_lock.release()
            else:
                self._send_batch_locked(result, limit)
        finally:
            self.transport.release()
        return result

    def _send_batch_sqlite(self, result: SendResult, limit: int, chunk: int = 25) -> None:
        """SQLite: read a chunk of due mail at once, send it, record it in one commit.

        The single write lock is never held across the network; what the relay
        accepted is remembered in the marker until the commit, so a crash or a failed
        commit in between does not send it again.
        """
        self._recover_accepted()
        after = 0
        while not (self._stop.is_set() and result.sent) and limit > 0:
            with self.db.reader() as session:
                rows = session.execute(
                    _DUE_ROWS, {"now": utcnow(), "limit": min(chunk, limit), "after": after}
                ).all()
            if not rows:
                return
            limit -= len(rows)
            after = rows[-1][0]
            handed = self._transmit_rows(rows)
            with self.db.transaction() as session:

                def pending(outbox_id: int) -> _Attempt | None:
                    # Read again in the write transaction: still pending, and its tries.
                    row = session.execute(_PENDING_ONE, {"id": outbox_id}).first()
                    return None if row is None else _Attempt(*row)

                self._record_chunk(session, result, *handed, pending)
            self.accepted.clear()
            if self.paused():
                return

    def _recover_accepted(self) -> None:
        """Mail the relay accepted before a crash or a failed commit: recorded, not resent."""
        accepted = [*self.accepted.get(), *self.inherited]
        if not accepted:
            return
        with self.db.transaction() as session:
            self._record_sent(session, _MARK_SENT_BY_MESSAGE_ID, {"message_ids": accepted},
                              recovered=True)
        self.accepted.clear()
        self.inherited = []

    def _send_batch_locked(self, result: SendResult, limit: int, chunk: int = 25) -> None:
        """PostgreSQL: lock a chunk of due mail (SKIP LOCKED), send it, record it in that
        same transaction, so two workers never send the same mail.

        One transaction, one lock statement and one UPDATE for the chunk: a transaction
        per mail cost ~2 ms of the daemon's CPU for each mail sent (bench/README.md).
        What the relay accepted is in the marker until the commit, as on SQLite.
        """
        self._recover_accepted()
        after = 0
        while not (self._stop.is_set() and result.sent) and limit > 0:
            with self.db.transaction() as session:
                rows = session.execute(
                    _LOCK_DUE, {"now": utcnow(), "limit": min(chunk, limit), "after": after}
                ).all()
                if not rows:
                    return
                limit -= len(rows)
                after = rows[-1][0]
                handed = self._transmit_rows([r[:5] for r in rows])
                locked = {r[0]: _Attempt(r[0], r[5], r[6], r[7], r[4]) for r in rows}
                self._record_chunk(session, result, *handed, locked.get)
            self.accepted.clear()
            if self.paused():
                return  # the relay is down: do not hammer it row by row

    def _record_chunk(
        self, session: Session, result: SendResult, accepted: list[int],
        partly: dict[int, Refused], refused: list[tuple[int, _Failure]],
        attempt_of: Callable[[int], _Attempt | None],
    ) -> None:
        """Record a chunk's outcome in `session`: the accepted mails sent (one UPDATE),
        each refused one failed or deferred (`attempt_of` its row, None: no longer ours)."""
        if accepted:
            sent = self._record_sent(session, _MARK_SENT, {"ids": accepted}, partly=partly)
            result.sent += sent
            result.skipped += len(accepted) - sent
        for outbox_id, error in refused:
            attempt = attempt_of(outbox_id)
            if attempt is None:
                result.skipped += 1
                continue
            outcome = self._record_failure(session, attempt, error)
            setattr(result, outcome, getattr(result, outcome) + 1)

    def _transmit_rows(
        self, rows: list[Any],
    ) -> tuple[list[int], dict[int, Refused], list[tuple[int, _Failure]]]:
        """Hand (id, MAIL FROM, RCPT TOs, message, Message-ID) rows to the relay in order:
        (ids accepted, recipients refused of those, (id, failure) of the rest tried). Each
        accepted mail goes into the marker at once; a relay that is down ends the chunk."""
        accepted: list[int] = []
        partly: dict[int, Refused] = {}
        refused: list[tuple[int, _Failure]] = []
        for outbox_id, mail_from, rcpt_tos, raw, message_id in rows:
            error, some_refused = self._transmit(mail_from, list(rcpt_tos), raw, message_id)
            if error is None:
                accepted.append(outbox_id)
                if some_refused:
                    partly[outbox_id] = some_refused
                self.accepted.add(message_id)
                continue
            refused.append((outbox_id, error))
            if isinstance(error, TransientFailure) and error.relay_down:
                break  # the relay is down: do not hammer it row by row
        return accepted, partly, refused

    def _transmit(
        self, mail_from: str, rcpt_tos: list[str], raw: bytes, message_id: str
    ) -> tuple[PermanentFailure | TransientFailure | None, Refused]:
        """One mail to the transport: (its failure or None, recipients refused of it)."""
        try:
            self.transport.open()
        except TransientFailure as exc:
            return exc, {}
        except Exception as exc:  # not this mail's fault: the relay rests, the mail waits
            log.exception("relay connection failed")
            return TransientFailure(f"relay connection: {exc!r}"[:500], relay_down=True), {}
        try:
            some_refused = self.transport.send(mail_from, rcpt_tos, raw, message_id)
        except (PermanentFailure, TransientFailure) as exc:
            return exc, {}
        except Exception as exc:  # a fault of this mail's data must not stop the others
            log.exception("outbound mail could not be handed over",
                          extra={"message_id": message_id})
            self.transport.close()
            return PermanentFailure(f"cannot be sent: {exc!r}"[:500]), {}
        self.relay_failures = 0  # the relay took a mail: it is up
        return None, some_refused or {}

    def _record_sent(
        self, session: Session, statement: Any, params: dict[str, Any], *, recovered: bool = False,
        partly: dict[int, Refused] | None = None,
    ) -> int:
        """Mark the pending rows the statement names as sent, in one UPDATE; their acks
        acknowledge their cases. Returns how many rows were still pending. `partly`: the
        recipients the relay refused of a mail it took, recorded on the case."""
        now = utcnow()
        done = session.execute(statement, {**params, "now": now}).all()
        done.sort(key=lambda r: r[0])
        acked = [ticket_id for _id, kind, ticket_id, _m, _t in done
                 if ticket_id and kind == "ack"]
        if acked:
            session.execute(_MARK_ACKED, {"ids": acked, "now": now})
        for row_id, kind, ticket_id, message_id, trigger_received_at in done:
            some_refused = (partly or {}).get(row_id)
            if some_refused:
                reasons = {r: f"{c} {m.decode('utf-8', 'replace')}"[:300]
                           for r, (c, m) in some_refused.items()}
                log.warning("relay refused some recipients",
                            extra={"message_id": message_id, "refused": reasons})
                if ticket_id:
                    session.execute(_ADD_EVENT, [{
                        "ticket_id": ticket_id, "kind": "outbound_partly_refused", "at": now,
                        "data": {"message_id": message_id, "refused": reasons},
                    }])
            if recovered:
                log.warning("the relay accepted this mail before; recorded, not sent again",
                            extra={"message_id": message_id})
            metrics.OUTBOUND.labels(kind=kind, outcome="sent").inc()
            if trigger_received_at is not None:
                latency = (now - trigger_received_at).total_seconds()
                metrics.ACK_LATENCY.labels(kind=kind).observe(latency)
            log.info("outbound sent",
                     extra={"message_id": message_id, "kind": kind, "ticket_id": ticket_id})
        return len(done)

    def _record_failure(
        self, session: Session, row: _Attempt, error: PermanentFailure | TransientFailure
    ) -> str:
        """A refused or deferred try on a row that is ours; returns the outcome's name."""
        tries = row.attempts + 1
        if isinstance(error, TransientFailure):
            delay = self._schedule_retry(session, row, tries, str(error))
            if error.relay_down:
                self._pause_relay(delay)
            return "deferred"
        session.execute(_MARK_FAILED, {"row_id": row.id, "error": str(error), "tries": tries})
        if row.ticket_id:
            session.execute(_ADD_EVENT, [{
                "ticket_id": row.ticket_id, "kind": "outbound_failed", "at": utcnow(),
                "data": {"message_id": row.message_id, "error": str(error)},
            }])
        metrics.OUTBOUND.labels(kind=row.kind, outcome="failed").inc()
        log.error("outbound refused", extra={"message_id": row.message_id, "error": str(error)})
        return "failed"

    def _schedule_retry(self, session: Session, row: _Attempt, tries: int, error: str) -> float:
        """Set the row's next attempt; returns the delay in seconds (0 when it gave up)."""
        if tries >= self.settings.outbox_max_attempts:
            session.execute(_MARK_FAILED, {"row_id": row.id, "error": error, "tries": tries})
            log.error("outbound gave up", extra={"message_id": row.message_id, "error": error})
            return 0.0
        delay = min(
            self.settings.outbox_retry_max,
            self.settings.outbox_retry_base * (2 ** min(tries - 1, 20)),
        )
        delay *= random.uniform(0.8, 1.2)
        session.execute(_MARK_RETRY, {"row_id": row.id, "error": error, "tries": tries,
                                      "retry_at": utcnow() + timedelta(seconds=delay)})
        log.warning(
            "outbound deferred",
            extra={"message_id": row.message_id, "error": error, "retry_in": round(delay, 1)},
        )
        return delay

    def _pause_relay(self, row_delay: float) -> None:
        """Nothing goes to a relay that failed as a whole until it has rested: as long as
        the row's own delay, and doubling with each failure in a row (base, 2×base, …)."""
        self.relay_failures += 1
        delay = min(self.settings.outbox_retry_max,
                    self.settings.outbox_retry_base * 2 ** min(self.relay_failures - 1, 20))
        self.paused_until = time.monotonic() + max(row_delay, delay * random.uniform(0.8, 1.2))
