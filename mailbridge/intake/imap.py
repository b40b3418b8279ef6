"""IMAP intake: fetch new mail by UID into the spool, then move or flag it once processed."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import (
    CapabilityError,
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
)
from prometheus_client import Counter, Gauge
from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    and_,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from mailbridge.db import Base, Database, UTCDateTime, utcnow
from mailbridge.intake.imap_config import CredentialError, ImapAccount
from mailbridge.leases import lease
from mailbridge.spool import STATE_DONE, STATE_QUARANTINED, InboundMail, new_inbound

log = logging.getLogger(__name__)

# ImapMessage.server_state: what we did to the message on the server.
SERVER_STORED = "stored"  # in the spool, still untouched in the folder
SERVER_MOVED = "moved"  # processed, moved to processed_folder
SERVER_FLAGGED = "flagged"  # quarantined, quarantine flag added, left in place
SERVER_STALE = "stale"  # UIDVALIDITY changed before we settled it; re-sync maps it anew
SERVER_OVERSIZE = "oversize"  # over max_message_size: not stored, flagged and left

BACKOFF_CAP = 300.0
FETCH_BYTE_BUDGET = 16 * 1024 * 1024  # bodies held in memory per fetch/commit
IDLE_TICK = 1.0  # how often an IDLE wait looks at stop/wake requests
SETTLE_CHUNK = 200
# INTERNALDATE comes from the server's clock with whole seconds: on a re-sync, mail
# dated shortly before we started watching is taken too (a duplicate is recognised,
# a loss would not be).
RESYNC_CLOCK_MARGIN = timedelta(hours=1)

IMAP_CONNECTED = Gauge("mailbridge_imap_connected", "1 while the account is connected", ["account"])
IMAP_AUTH_FAILED = Gauge(
    "mailbridge_imap_auth_failed",
    "1 while the account cannot log in (password or OAuth token refresh failed)",
    ["account"],
)
IMAP_LAST_OK = Gauge(
    "mailbridge_imap_last_ok_timestamp_seconds", "End of the last complete sync", ["account"]
)
IMAP_MESSAGES = Counter(
    "mailbridge_imap_messages_total",
    "Messages seen by the IMAP poller",
    ["account", "outcome"],  # stored | duplicate | oversize | moved | flagged
)
IMAP_ERRORS = Counter("mailbridge_imap_errors_total", "Failed IMAP cycles", ["account", "kind"])


# -- tables ------------------------------------------------------------------------------


class ImapMessage(Base):
    """One message seen in an account's folder, by (UIDVALIDITY, UID), and its fate."""

    __tablename__ = "imap_messages"
    __table_args__ = (UniqueConstraint("account", "uidvalidity", "uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    # UIDs and UIDVALIDITY are unsigned 32-bit: too big for a signed INTEGER.
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int | None] = mapped_column(BigInteger)
    server_state: Mapped[str] = mapped_column(String(16), default=SERVER_STORED)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("ix_imap_messages_account_state", ImapMessage.account, ImapMessage.server_state)


class ImapCursor(Base):
    """Where an account's folder has been read up to; advanced with the stored rows."""

    __tablename__ = "imap_cursors"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    # UIDs up to baseline_uid were in the folder before we (re)started reading it:
    # they are taken by initial_sync ("initial") or by re-sync rules ("resync").
    baseline_uid: Mapped[int | None] = mapped_column(BigInteger)
    baseline_mode: Mapped[str | None] = mapped_column(String(16))
    watching_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


# -- results and state -------------------------------------------------------------------


@dataclass
class PollResult:
    """What one sync-and-settle cycle did."""

    stored: int = 0
    duplicates: int = 0
    oversize: int = 0
    moved: int = 0
    flagged: int = 0
    uidvalidity_changed: bool = False

    def __add__(self, other: PollResult) -> PollResult:
        return PollResult(
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.oversize + other.oversize,
            self.moved + other.moved,
            self.flagged + other.flagged,
            self.uidvalidity_changed or other.uidvalidity_changed,
        )


@dataclass(frozen=True)
class ImapPollerState:
    """A snapshot for /readyz and `mailbridge status`."""

    account: str
    running: bool = False
    connected: bool = False
    idling: bool = False
    last_ok_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    auth_failed: bool = False
    stored_total: int = 0
    # Another worker holds this account's lease: this one waits to take over.
    standby: bool = False

    @property
    def ready(self) -> bool:
        return (self.connected or self.standby) and not self.auth_failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ready,
            "connected": self.connected,
            "idling": self.idling,
            "last_ok_at": self.last_ok_at.isoformat() if self.last_ok_at else None,
            "last_error": self.last_error,
            "auth_failed": self.auth_failed,
            "standby": self.standby,
        }


class _Fatal(Exception):
    """Raised inside the loop to force a reconnect."""


# -- helpers -----------------------------------------------------------------------------

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def _header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[: end + 2]


def envelope_from_headers(raw: bytes, queue_address: str) -> tuple[str, list[str], str | None]:
    """(mail_from, rcpt_tos, message_id) as the delivering MTA left them in the headers.

    The recipients are the Delivered-To/X-Original-To the MTA wrote (the envelope),
    else the support address the account stands for.
    """
    headers = _HEADER_PARSER.parsebytes(_header_block(raw))
    rcpts: list[str] = []
    for name in ("Delivered-To", "X-Original-To"):
        for value in headers.get_all(name) or []:
            address = _bare_address(str(value))
            if address and address.lower() not in rcpts:
                rcpts.append(address.lower())
    return_path = headers.get("Return-Path")
    mail_from = _bare_address(str(return_path)) if return_path is not None else ""
    message_id = headers.get("Message-ID")
    mid = " ".join(str(message_id).split())[:998] if message_id is not None else None
    return mail_from, rcpts or [queue_address.lower()], mid or None


def _bare_address(value: str) -> str:
    value = " ".join(value.split())
    if "<" in value and ">" in value:
        value = value[value.index("<") + 1 : value.rindex(">")]
    return value.strip()


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _message_id_variants(mid: str | None) -> list[str]:
    if not mid:
        return []
    bare = mid.strip().strip("<>")
    return list({mid, bare, f"<{bare}>"})


def _client_matches(criteria: list[Any], flags: Iterable[bytes], internaldate: Any) -> bool:
    """Evaluate an initial_sync criterion client-side (for re-sync)."""
    kind = criteria[0]
    if kind == "ALL":
        return True
    if kind == "UNSEEN":
        return b"\\Seen" not in set(flags)
    if kind == "SINCE" and isinstance(internaldate, datetime):
        return internaldate.date() >= criteria[1]
    return True


# -- the poller --------------------------------------------------------------------------


class ImapPoller:
    """Polls one account in its own thread; one account's failure never touches another."""

    def __init__(
        self,
        account: ImapAccount,
        db: Database,
        *,
        on_stored: Callable[[], None] | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.account = account
        self.db = db
        self.on_stored = on_stored
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = ImapPollerState(account=account.name)
        self._folder_ready = False
        self._selected: tuple[int, int] = (0, 0)  # (UIDVALIDITY, UIDNEXT) at the last sync
        self._secrets: list[str] = []  # what the last login used, scrubbed from messages
        self._cycle_problem: str | None = None
        self._extra = {"account": account.name}

    # -- public ------------------------------------------------------------------------
    @property
    def state(self) -> ImapPollerState:
        with self._lock:
            return self._state

    def start(self) -> None:
        """Run the poll loop in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"imap-{self.account.name}", daemon=True
        )
        self._set_state(running=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to finish without waiting (see stop())."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the loop to finish (it logs out); True when the thread has ended."""
        self.request_stop()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self._thread = None
            self._set_state(running=False, connected=False, idling=False)
        return not alive

    def wake(self) -> None:
        """Sync and settle now (e.g. after the pipeline finished some mail)."""
        self._wake.set()

    def poll_once(self) -> PollResult:
        """Connect, sync, settle and log out, in the calling thread (tests, `mailbridge`)."""
        with self._session() as client:
            return self._cycle(client)

    # -- loop --------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                with lease(self.db, f"imap:{self.account.name}") as held:
                    if not held:
                        # One worker polls an account; the others stand by to take over.
                        self._set_state(standby=True)
                        self._stop.wait(self.account.poll_interval)
                        continue
                    self._set_state(standby=False)
                    with self._session() as client:
                        while not self._stop.is_set():
                            self._wake.clear()
                            self._cycle(client)
                            attempt = 0
                            if not self._arrived_meanwhile(client):
                                self._wait_for_news(client)
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._record_error(exc)
                delay = min(self.backoff_cap, self.backoff_base * 2**attempt)
                delay *= random.uniform(0.5, 1.0)  # jitter: accounts do not reconnect in step
                attempt = min(attempt + 1, 30)
                log.warning(
                    "imap reconnect scheduled",
                    extra={**self._extra, "delay": round(delay, 2), "attempt": attempt},
                )
                self._stop.wait(delay)
        self._set_state(connected=False, idling=False)
        IMAP_CONNECTED.labels(self.account.name).set(0)

    def _arrived_meanwhile(self, client: IMAPClient) -> bool:
        """Whether mail arrived during the cycle.

        The server announces new mail (EXISTS) at the end of whatever command is
        running, and IDLE does not repeat it; a fresh SELECT resets what the server
        thinks we know, so anything later is announced during the IDLE.
        """
        uidvalidity, uidnext = self._select(client)
        return (uidvalidity, uidnext) != self._selected

    def _wait_for_news(self, client: IMAPClient) -> None:
        if self.account.idle and client.has_capability("IDLE"):
            self._idle(client)
        else:
            self._wake.wait(self.account.poll_interval)

    def _idle(self, client: IMAPClient) -> None:
        """IDLE until new mail, a wake/stop request, settle work, or idle_renew."""
        client.idle()
        self._set_state(idling=True)
        started = last_check = time.monotonic()
        try:
            while not self._stop.is_set() and not self._wake.is_set():
                now = time.monotonic()
                remaining = self.account.idle_renew - (now - started)
                if remaining <= 0:
                    break
                tick = min(IDLE_TICK, remaining)
                responses = client.idle_check(timeout=tick)
                if any(r[1] in (b"EXISTS", b"RECENT") for r in responses if len(r) > 1):
                    break
                if any(r[0] == b"BYE" for r in responses):
                    raise _Fatal("server said BYE during IDLE")
                if not responses and time.monotonic() - now < tick / 2:
                    # idle_check returns early and empty at EOF: DONE below will tell.
                    break
                if time.monotonic() - last_check >= self.account.poll_interval:
                    last_check = time.monotonic()
                    if self._has_settle_work():
                        break
        finally:
            self._set_state(idling=False)
            client.idle_done()  # raises on a dead connection: the loop reconnects

    # -- connection --------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[IMAPClient]:
        client = self._connect()
        self._folder_ready = False
        self._set_state(connected=True)
        IMAP_CONNECTED.labels(self.account.name).set(1)
        try:
            yield client
        finally:
            self._set_state(connected=False, idling=False)
            IMAP_CONNECTED.labels(self.account.name).set(0)
            with suppress(Exception):
                client.logout()
            with suppress(Exception):
                client.shutdown()

    def ssl_context(self) -> ssl.SSLContext:
        """Verified TLS: system CAs plus the account's ca_file, hostname checked."""
        context = ssl.create_default_context()
        if self.account.ca_file is not None:
            context.load_verify_locations(cafile=str(self.account.ca_file))
        return context

    def _connect(self) -> IMAPClient:
        account = self.account
        security = account.security
        client = IMAPClient(
            account.host,
            port=account.effective_port,
            ssl=security == "tls",
            ssl_context=self.ssl_context() if security == "tls" else None,
            timeout=account.timeout,
        )
        client.normalise_times = False  # aware INTERNALDATEs, in the server's offset
        # imapclient turns imaplib's protocol trace on (debug=5): every response is
        # repr()-formatted before the logger decides to drop it, which triples the
        # memory a big FETCH takes and would put mail bodies in DEBUG logs.
        client._imap.debug = 0
        try:
            if security == "starttls":
                # Raises CapabilityError when the server has no STARTTLS: never
                # fall back to plaintext.
                client.starttls(self.ssl_context())
            self._login(client)
        except BaseException:
            with suppress(Exception):
                client.shutdown()
            raise
        log.info("imap connected", extra={**self._extra, "host": account.host})
        return client

    def _login(self, client: IMAPClient) -> None:
        account = self.account
        try:
            if account.uses_oauth:
                token = account.fetch_oauth_token()
                self._secrets = [token]
                client.oauth2_login(account.username, token)
            else:
                password = account.resolve_password()
                self._secrets = [password]
                client.login(account.username, password)
        except (CredentialError, LoginError) as exc:
            if isinstance(exc, LoginError) and account.uses_oauth:
                account.oauth_token_rejected()  # revoked or expired: a new one next time
            self._set_state(auth_failed=True)
            IMAP_AUTH_FAILED.labels(account.name).set(1)
            error = self._scrub(str(exc))
            if account.uses_oauth:
                log.error("imap oauth token refresh failed", extra={**self._extra, "error": error})
            else:
                log.error("imap login failed", extra={**self._extra, "error": error})
            raise
        self._set_state(auth_failed=False)
        IMAP_AUTH_FAILED.labels(account.name).set(0)

    # -- one cycle ---------------------------------------------------------------------
    def _cycle(self, client: IMAPClient) -> PollResult:
        self._cycle_problem: str | None = None
        uidvalidity, result = self._sync(client)
        result += self._settle(client, uidvalidity)
        now = utcnow()
        # Intake worked; a settle refusal stays visible until a clean cycle.
        self._set_state(last_ok_at=now, last_error=self._cycle_problem)
        IMAP_LAST_OK.labels(self.account.name).set(now.timestamp())
        self._save_cursor_status(ok_at=now, error=self._cycle_problem)
        return result

    def _select(self, client: IMAPClient) -> tuple[int, int]:
        info = client.select_folder(self.account.folder)
        uidvalidity = int(info[b"UIDVALIDITY"])
        uidnext = info.get(b"UIDNEXT")
        if uidnext is None:
            status = client.folder_status(self.account.folder, [b"UIDNEXT"])
            uidnext = status[b"UIDNEXT"]
        return uidvalidity, int(uidnext)

    def _sync(self, client: IMAPClient) -> tuple[int, PollResult]:
        uidvalidity, uidnext = self._select(client)
        self._selected = (uidvalidity, uidnext)
        cursor, changed = self._prepare_cursor(uidvalidity, uidnext)
        result = PollResult(uidvalidity_changed=changed)
        last_uid = cursor.last_uid
        baseline = cursor.baseline_uid
        mode = cursor.baseline_mode
        if baseline is not None and last_uid < baseline:
            before = self._baseline_candidates(client, last_uid, baseline, mode or "initial")
            # "n:*" always matches the highest UID, so filter on the client side.
            after = [u for u in client.search(["UID", f"{baseline + 1}:*"]) if u > baseline]
            uids = sorted(set(before)) + sorted(after)
        else:
            uids = sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
        for batch in _chunks(uids, self.account.batch_size):
            result += self._store_batch(client, uidvalidity, batch)
        if baseline is not None:
            self._finish_baseline(uidvalidity, baseline)
        return uidvalidity, result

    def _prepare_cursor(self, uidvalidity: int, uidnext: int) -> tuple[ImapCursor, bool]:
        """Load or create the cursor; on a UIDVALIDITY change, start a re-sync."""
        name = self.account.name
        changed = False
        with self.db.reader() as session:
            cursor = session.get(ImapCursor, name)
            if cursor is not None and cursor.uidvalidity == uidvalidity:
                return cursor, False  # the common case needs no write
        with self.db.transaction() as session:
            cursor = session.get(ImapCursor, name, with_for_update=True)
            if cursor is None:
                cursor = ImapCursor(
                    account=name,
                    uidvalidity=uidvalidity,
                    last_uid=0,
                    baseline_uid=uidnext - 1,
                    baseline_mode="initial",
                    watching_since=utcnow(),
                )
                session.add(cursor)
                log.info(
                    "imap first sync",
                    extra={**self._extra, "uidvalidity": uidvalidity,
                           "initial_sync": self.account.initial_sync},
                )
            elif cursor.uidvalidity != uidvalidity:
                changed = True
                log.warning(
                    "imap UIDVALIDITY changed: re-sync",
                    extra={**self._extra, "old_uidvalidity": cursor.uidvalidity,
                           "uidvalidity": uidvalidity},
                )
                stale = session.scalars(
                    select(ImapMessage).where(
                        ImapMessage.account == name,
                        ImapMessage.uidvalidity != uidvalidity,
                        ImapMessage.server_state == SERVER_STORED,
                    )
                )
                for row in stale:
                    row.server_state = SERVER_STALE
                cursor.uidvalidity = uidvalidity
                cursor.last_uid = 0
                cursor.baseline_uid = uidnext - 1
                cursor.baseline_mode = "resync"
            session.flush()
            session.expunge(cursor)
        return cursor, changed

    def _finish_baseline(self, uidvalidity: int, baseline: int) -> None:
        with self.db.transaction() as session:
            cursor = session.get(ImapCursor, self.account.name, with_for_update=True)
            if cursor is None or cursor.uidvalidity != uidvalidity:
                return
            cursor.last_uid = max(cursor.last_uid, baseline)
            cursor.baseline_uid = None
            cursor.baseline_mode = None

    def _baseline_candidates(
        self, client: IMAPClient, last_uid: int, baseline: int, mode: str
    ) -> list[int]:
        """UIDs at or below the baseline that we must take."""
        criteria = self.account.initial_sync_criteria()
        span = ["UID", f"{last_uid + 1}:{baseline}"]
        if mode == "initial":
            return [u for u in client.search([*span, *criteria]) if last_uid < u <= baseline]
        # Re-sync after a UIDVALIDITY change: every message is renumbered. Take what
        # matches initial_sync, what arrived since we started watching, and what we
        # already know by Message-ID (to map it again); duplicates are recognised
        # when stored, by sha256 of the bytes.
        everything = [u for u in client.search(span) if last_uid < u <= baseline]
        with self.db.reader() as session:
            since = session.scalar(
                select(ImapCursor.watching_since).where(ImapCursor.account == self.account.name)
            )
            known = set(
                session.scalars(
                    select(ImapMessage.message_id).where(
                        ImapMessage.account == self.account.name,
                        ImapMessage.message_id.is_not(None),
                    )
                )
            )
        wanted: list[int] = []
        header = "BODY[HEADER.FIELDS (MESSAGE-ID)]"
        for chunk in _chunks(everything, 500):
            meta = client.fetch(chunk, ["FLAGS", "INTERNALDATE", f"BODY.PEEK{header[4:]}"])
            for uid, data in meta.items():
                mid = _HEADER_PARSER.parsebytes(bytes(data.get(header.encode(), b""))).get(
                    "Message-ID"
                )
                mid = " ".join(str(mid).split()) if mid is not None else None
                internal = data.get(b"INTERNALDATE")
                recent = (
                    since is not None
                    and isinstance(internal, datetime)
                    and _aware(internal) >= since - RESYNC_CLOCK_MARGIN
                )
                if (
                    (mid is not None and mid in known)
                    or recent
                    or _client_matches(criteria, data.get(b"FLAGS", ()), internal)
                ):
                    wanted.append(uid)
        return wanted

    def _store_batch(self, client: IMAPClient, uidvalidity: int, batch: list[int]) -> PollResult:
        """Fetch a batch by UID and store it, in commits bounded by FETCH_BYTE_BUDGET."""
        result = PollResult()
        sizes = {
            uid: int(data.get(b"RFC822.SIZE", 0))
            for uid, data in client.fetch(batch, ["RFC822.SIZE"]).items()
        }
        limit = self.account.max_message_size
        group: list[int] = []
        group_bytes = 0
        pending: list[tuple[list[int], int]] = []
        for uid in batch:
            size = sizes.get(uid)
            if size is None:  # expunged meanwhile: nothing to take
                continue
            if limit is not None and size > limit:
                pending.append(([uid], -1))
                continue
            if group and group_bytes + size > FETCH_BYTE_BUDGET:
                pending.append((group, group_bytes))
                group, group_bytes = [], 0
            group.append(uid)
            group_bytes += size
        if group:
            pending.append((group, group_bytes))
        for uids, budget in pending:
            if budget < 0:
                result += self._record_oversize(client, uidvalidity, uids[0], sizes[uids[0]])
                continue
            fetched = client.fetch(uids, ["BODY.PEEK[]"])
            bodies = [(uid, bytes(fetched[uid][b"BODY[]"])) for uid in uids if uid in fetched]
            del fetched
            result += self._commit(uidvalidity, bodies, advance_to=max(uids))
            del bodies
        # The cursor passes UIDs that vanished or were oversize, too.
        if batch:
            self._advance(uidvalidity, max(batch))
        return result

    def _commit(
        self, uidvalidity: int, bodies: list[tuple[int, bytes]], *, advance_to: int
    ) -> PollResult:
        """Store messages, their ImapMessage rows and the cursor in ONE transaction."""
        name = self.account.name
        result = PollResult()
        logged: list[tuple[int, int | None, bool]] = []
        with self.db.transaction() as session:
            cursor = session.get(ImapCursor, name, with_for_update=True)
            if cursor is None or cursor.uidvalidity != uidvalidity:
                raise _Fatal("cursor changed under us (another poller on this account?)")
            for uid, raw in bodies:
                if self._seen(session, uidvalidity, uid):
                    continue
                mail_from, rcpts, message_id = envelope_from_headers(
                    raw, self.account.queue_address
                )
                digest = hashlib.sha256(raw).hexdigest()
                existing = self._duplicate_of(session, digest, message_id)
                if existing is None:
                    mail = new_inbound(
                        raw,
                        channel="imap",
                        mail_from=mail_from,
                        rcpt_tos=rcpts,
                        source=f"{name}/{uidvalidity}/{uid}",
                    )
                    session.add(mail)
                    session.flush()
                    inbound_id, duplicate = mail.id, False
                    result.stored += 1
                else:
                    inbound_id, duplicate = existing, True
                    result.duplicates += 1
                session.add(
                    ImapMessage(
                        account=name,
                        uidvalidity=uidvalidity,
                        uid=uid,
                        inbound_id=inbound_id,
                        message_id=message_id,
                        size=len(raw),
                        server_state=SERVER_STORED,
                    )
                )
                logged.append((uid, inbound_id, duplicate))
            cursor.last_uid = max(cursor.last_uid, advance_to)
        for uid, inbound_id, duplicate in logged:
            log.info(
                "imap message already stored" if duplicate else "imap message stored",
                extra={**self._extra, "uid": uid, "uidvalidity": uidvalidity,
                       "inbound_id": inbound_id},
            )
        if result.stored:
            IMAP_MESSAGES.labels(name, "stored").inc(result.stored)
            _count_received(result.stored)
            with self._lock:
                self._state = replace(
                    self._state, stored_total=self._state.stored_total + result.stored
                )
            self._notify()
        if result.duplicates:
            IMAP_MESSAGES.labels(name, "duplicate").inc(result.duplicates)
        return result

    def _seen(self, session: Session, uidvalidity: int, uid: int) -> bool:
        return (
            session.scalar(
                select(ImapMessage.id).where(
                    ImapMessage.account == self.account.name,
                    ImapMessage.uidvalidity == uidvalidity,
                    ImapMessage.uid == uid,
                )
            )
            is not None
        )

    @staticmethod
    def _duplicate_of(session: Session, digest: str, message_id: str | None) -> int | None:
        """An inbound row with the same bytes (sha256 covers the Message-ID header)."""
        rows = session.execute(
            select(InboundMail.id, InboundMail.message_id)
            .where(InboundMail.sha256 == digest)
            .order_by(InboundMail.id)
        ).all()
        variants = _message_id_variants(message_id)
        for inbound_id, stored_mid in rows:
            if stored_mid is None or not variants or stored_mid in variants:
                return int(inbound_id)
        return None

    def _advance(self, uidvalidity: int, uid: int) -> None:
        with self.db.transaction() as session:
            cursor = session.get(ImapCursor, self.account.name, with_for_update=True)
            if cursor is not None and cursor.uidvalidity == uidvalidity:
                cursor.last_uid = max(cursor.last_uid, uid)

    def _record_oversize(
        self, client: IMAPClient, uidvalidity: int, uid: int, size: int
    ) -> PollResult:
        """Too big to take: flag it on the server and remember it, never drop it silently."""
        log.error(
            "imap message over max_message_size left on the server, flagged",
            extra={**self._extra, "uid": uid, "size": size,
                   "max_message_size": self.account.max_message_size},
        )
        with suppress(IMAPClientError):
            client.add_flags([uid], [self.account.quarantine_flag], silent=True)
        with self.db.transaction() as session:
            if not self._seen(session, uidvalidity, uid):
                session.add(
                    ImapMessage(
                        account=self.account.name,
                        uidvalidity=uidvalidity,
                        uid=uid,
                        inbound_id=None,
                        size=size,
                        server_state=SERVER_OVERSIZE,
                        settled_at=utcnow(),
                    )
                )
            cursor = session.get(ImapCursor, self.account.name, with_for_update=True)
            if cursor is not None and cursor.uidvalidity == uidvalidity:
                cursor.last_uid = max(cursor.last_uid, uid)
        IMAP_MESSAGES.labels(self.account.name, "oversize").inc()
        return PollResult(oversize=1)

    # -- settle ------------------------------------------------------------------------
    def _settle_query(self, uidvalidity: int) -> Any:
        return (
            select(ImapMessage.id, ImapMessage.uid, ImapMessage.server_state, InboundMail.state)
            .join(InboundMail, InboundMail.id == ImapMessage.inbound_id)
            .where(
                ImapMessage.account == self.account.name,
                ImapMessage.uidvalidity == uidvalidity,
                or_(
                    and_(
                        ImapMessage.server_state == SERVER_STORED,
                        InboundMail.state.in_((STATE_DONE, STATE_QUARANTINED)),
                    ),
                    # quarantined, then replayed and finished: now it can move
                    and_(
                        ImapMessage.server_state == SERVER_FLAGGED,
                        InboundMail.state == STATE_DONE,
                    ),
                ),
            )
            .order_by(ImapMessage.uid)
        )

    def _has_settle_work(self) -> bool:
        with self.db.reader() as session:
            cursor = session.get(ImapCursor, self.account.name)
            if cursor is None:
                return False
            query = self._settle_query(cursor.uidvalidity).limit(1)
            return session.execute(query).first() is not None

    def _settle(self, client: IMAPClient, uidvalidity: int) -> PollResult:
        """Move processed mail away and flag quarantined mail, after their commit."""
        result = PollResult()
        with self.db.reader() as session:
            rows = session.execute(self._settle_query(uidvalidity)).all()
        to_move = [(row_id, uid) for row_id, uid, _srv, state in rows if state == STATE_DONE]
        to_unflag = [
            uid for _id, uid, srv, state in rows if state == STATE_DONE and srv == SERVER_FLAGGED
        ]
        to_flag = [
            (row_id, uid) for row_id, uid, _srv, state in rows if state == STATE_QUARANTINED
        ]
        flag = self.account.quarantine_flag
        with self._server_refusal("remove the quarantine flag"):
            if to_unflag:
                client.remove_flags(to_unflag, [flag], silent=True)
        for chunk in _chunks(to_move, SETTLE_CHUNK):
            with self._server_refusal("move to " + self.account.processed_folder):
                self._move(client, [uid for _id, uid in chunk])
                self._mark([row_id for row_id, _uid in chunk], SERVER_MOVED)
                result.moved += len(chunk)
        for chunk in _chunks(to_flag, SETTLE_CHUNK):
            with self._server_refusal("add the quarantine flag"):
                client.add_flags([uid for _id, uid in chunk], [flag], silent=True)
                self._mark([row_id for row_id, _uid in chunk], SERVER_FLAGGED)
                result.flagged += len(chunk)
        for _id, uid, _srv, state in rows:
            log.info(
                "imap message moved" if state == STATE_DONE else "imap message flagged",
                extra={**self._extra, "uid": uid, "uidvalidity": uidvalidity,
                       "folder": self.account.processed_folder if state == STATE_DONE else None},
            )
        if result.moved:
            IMAP_MESSAGES.labels(self.account.name, "moved").inc(result.moved)
        if result.flagged:
            IMAP_MESSAGES.labels(self.account.name, "flagged").inc(result.flagged)
        return result

    @contextmanager
    def _server_refusal(self, what: str) -> Iterator[None]:
        """A NO/BAD while settling is logged and retried next cycle; it must not
        stop intake. A dead connection (abort) still propagates."""
        try:
            yield
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            message = self._scrub(f"could not {what}: {exc}")
            self._cycle_problem = message
            self._set_state(last_error=message, last_error_at=utcnow())
            IMAP_ERRORS.labels(self.account.name, "settle").inc()
            log.error("imap settle refused", extra={**self._extra, "error": message})

    def _ensure_processed_folder(self, client: IMAPClient) -> None:
        if self._folder_ready:
            return
        folder = self.account.processed_folder
        if not client.folder_exists(folder):
            try:
                client.create_folder(folder)
                log.info("imap folder created", extra={**self._extra, "folder": folder})
            except IMAPClientError:
                if not client.folder_exists(folder):  # lost a race: fine
                    raise
            with suppress(IMAPClientError):
                client.subscribe_folder(folder)
        self._folder_ready = True

    def _move(self, client: IMAPClient, uids: list[int], *, use_move: bool | None = None) -> None:
        """MOVE where the server has it, else COPY + \\Deleted + UID EXPUNGE.

        UIDs that are already gone (a crash after the move, before we marked it) are
        simply not there to move: the server answers OK, and we mark them moved.
        """
        self._ensure_processed_folder(client)
        folder = self.account.processed_folder
        if use_move is None:
            use_move = client.has_capability("MOVE")
        if use_move:
            client.move(uids, folder)
            return
        client.copy(uids, folder)
        client.add_flags(uids, [b"\\Deleted"], silent=True)
        try:
            client.uid_expunge(uids)
        except CapabilityError:
            # Without UIDPLUS, EXPUNGE removes every \Deleted message of the folder:
            # what any client would do with them anyway.
            client.expunge()

    def _mark(self, row_ids: list[int], server_state: str) -> None:
        with self.db.transaction() as session:
            for row in session.scalars(select(ImapMessage).where(ImapMessage.id.in_(row_ids))):
                row.server_state = server_state
                row.settled_at = utcnow()

    # -- bookkeeping -------------------------------------------------------------------
    def _notify(self) -> None:
        if self.on_stored is None:
            return
        try:
            self.on_stored()
        except Exception:
            log.exception("imap on_stored callback failed", extra=self._extra)

    def _set_state(self, **changes: Any) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "**********")
        return text[:500]

    def _record_error(self, exc: BaseException) -> None:
        message = self._scrub(f"{type(exc).__name__}: {exc}")
        now = utcnow()
        self._set_state(last_error=message, last_error_at=now, connected=False, idling=False)
        kind = (
            "auth" if isinstance(exc, (LoginError, CredentialError))
            else "tls" if isinstance(exc, ssl.SSLError)
            else "imap" if isinstance(exc, IMAPClientError)
            else "other"
        )
        IMAP_ERRORS.labels(self.account.name, kind).inc()
        log.error("imap cycle failed", extra={**self._extra, "error": message, "kind": kind})
        self._save_cursor_status(ok_at=None, error=message)

    def _save_cursor_status(self, *, ok_at: datetime | None, error: str | None) -> None:
        try:
            with self.db.transaction() as session:
                cursor = session.get(ImapCursor, self.account.name)
                if cursor is None:
                    return
                if ok_at is not None:
                    cursor.last_ok_at = ok_at
                cursor.last_error = error
        except Exception as exc:  # the DB may be what is failing; the state still says
            log.warning("imap status not saved", extra={**self._extra, "error": repr(exc)})


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _count_received(count: int) -> None:
    try:
        from mailbridge.metrics import RECEIVED
    except ImportError:  # pragma: no cover
        return
    RECEIVED.labels("imap", "stored").inc(count)


class ImapPollers:
    """All configured accounts: start and stop together, each in its own thread."""

    def __init__(
        self,
        accounts: Sequence[ImapAccount],
        db: Database,
        *,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.pollers = [ImapPoller(a, db, on_stored=on_stored) for a in accounts]

    def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    def stop(self, timeout: float = 10.0) -> bool:
        for poller in self.pollers:
            poller.request_stop()
        deadline = time.monotonic() + timeout
        ok = True
        for poller in self.pollers:
            ok = poller.stop(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def wake(self) -> None:
        for poller in self.pollers:
            poller.wake()

    def readiness(self) -> dict[str, Any]:
        return {p.account.name: p.state.as_dict() for p in self.pollers}


__all__ = [
    "ImapCursor",
    "ImapMessage",
    "ImapPoller",
    "ImapPollerState",
    "ImapPollers",
    "PollResult",
    "envelope_from_headers",
]
