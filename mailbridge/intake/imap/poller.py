"""The IMAP pollers: one thread per account, its connection, IDLE or polling, backoff, state."""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from mailbridge.db import Database, utcnow
from mailbridge.intake.imap import connection
from mailbridge.intake.imap.cursor import FolderCursor
from mailbridge.intake.imap.results import (
    IMAP_AUTH_FAILED,
    IMAP_CONNECTED,
    IMAP_ERRORS,
    IMAP_LAST_OK,
    PollResult,
    ReconnectError,
)
from mailbridge.intake.imap.settle import Settler
from mailbridge.intake.imap.sync import FolderSync, select_folder
from mailbridge.intake.imap_config import CredentialError, ImapAccount
from mailbridge.leases import lease

log = logging.getLogger("mailbridge.intake.imap")  # the channel's one logger, as before

BACKOFF_CAP = 300.0
IDLE_TICK = 1.0  # how often an IDLE wait looks at stop/wake requests


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
        self._selected: tuple[int, int] = (0, 0)  # (UIDVALIDITY, UIDNEXT) at the last sync
        self._secrets: list[str] = []  # what the last login used, scrubbed from messages
        self._cycle_problem: str | None = None
        self._attempt = 0  # failed connections since the last good cycle (backoff)
        self._extra = {"account": account.name}
        self._cursor = FolderCursor(account, db)
        self._sync = FolderSync(account, db, self._cursor, committed=self._committed)
        self._settler = Settler(account, db, refused=self._settle_refused)

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

    def ssl_context(self) -> ssl.SSLContext:
        """Verified TLS: system CAs plus the account's ca_file, hostname checked."""
        return connection.ssl_context(self.account)

    # -- loop --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_while_leased()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._record_error(exc)
                self._back_off()
        self._set_state(connected=False, idling=False)
        IMAP_CONNECTED.labels(self.account.name).set(0)

    def _serve_while_leased(self) -> None:
        """Cycle on one connection until stopped; stand by while another worker polls."""
        with lease(self.db, f"imap:{self.account.name}") as held:
            if not held:
                # One worker polls an account; the others stand by to take over.
                self._set_state(standby=True)
                self._stop.wait(self.account.poll_interval)
                return
            self._set_state(standby=False)
            with self._session() as client:
                while not self._stop.is_set():
                    self._wake.clear()
                    self._cycle(client)
                    self._attempt = 0
                    if not self._arrived_meanwhile(client):
                        self._wait_for_news(client)

    def _back_off(self) -> None:
        """Wait before reconnecting: exponential in the failures, capped, with jitter."""
        delay = min(self.backoff_cap, self.backoff_base * 2**self._attempt)
        delay *= random.uniform(0.5, 1.0)  # jitter: accounts do not reconnect in step
        self._attempt = min(self._attempt + 1, 30)
        log.warning(
            "imap reconnect scheduled",
            extra={**self._extra, "delay": round(delay, 2), "attempt": self._attempt},
        )
        self._stop.wait(delay)

    def _arrived_meanwhile(self, client: IMAPClient) -> bool:
        """Whether mail arrived during the cycle.

        The server announces new mail (EXISTS) at the end of whatever command is
        running, and IDLE does not repeat it; a fresh SELECT resets what the server
        thinks we know, so anything later is announced during the IDLE.
        """
        return select_folder(client, self.account.folder) != self._selected

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
                if remaining <= 0 or self._idle_news(client, min(IDLE_TICK, remaining), now):
                    break
                if time.monotonic() - last_check >= self.account.poll_interval:
                    last_check = time.monotonic()
                    if self._settler.has_work():
                        break
        finally:
            self._set_state(idling=False)
            client.idle_done()  # raises on a dead connection: the loop reconnects

    @staticmethod
    def _idle_news(client: IMAPClient, tick: float, now: float) -> bool:
        """Wait one tick in IDLE: True when the IDLE should end (new mail, EOF)."""
        responses = client.idle_check(timeout=tick)
        if any(r[1] in (b"EXISTS", b"RECENT") for r in responses if len(r) > 1):
            return True
        if any(r[0] == b"BYE" for r in responses):
            raise ReconnectError("server said BYE during IDLE")
        # idle_check returns early and empty at EOF: DONE (in _idle) will tell.
        return not responses and time.monotonic() - now < tick / 2

    # -- connection --------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[IMAPClient]:
        client = self._connect()
        self._settler.folder_ready = False
        self._set_state(connected=True)
        IMAP_CONNECTED.labels(self.account.name).set(1)
        try:
            yield client
        finally:
            self._set_state(connected=False, idling=False)
            IMAP_CONNECTED.labels(self.account.name).set(0)
            with suppress(Exception):
                client.logout()
            connection.shutdown(client)

    def _connect(self) -> IMAPClient:
        client = connection.open_client(self.account)
        try:
            self._login(client)
        except BaseException:
            connection.shutdown(client)
            raise
        log.info("imap connected", extra={**self._extra, "host": self.account.host})
        return client

    def _login(self, client: IMAPClient) -> None:
        account = self.account
        try:
            secret = connection.secret_of(account)
            self._secrets = [secret]
            connection.log_in(client, account, secret)
        except (CredentialError, LoginError) as exc:
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
        self._cycle_problem = None
        self._selected = uidvalidity, uidnext = select_folder(client, self.account.folder)
        result = self._sync.sync(client, uidvalidity, uidnext)
        result += self._settler.settle(client, uidvalidity)
        now = utcnow()
        # Intake worked; a settle refusal stays visible until a clean cycle.
        self._set_state(last_ok_at=now, last_error=self._cycle_problem)
        IMAP_LAST_OK.labels(self.account.name).set(now.timestamp())
        self._cursor.save_status(ok_at=now, error=self._cycle_problem)
        return result

    def _move(self, client: IMAPClient, uids: list[int], *, use_move: bool | None = None) -> None:
        """Move UIDs of the selected folder to processed_folder (see Settler.move)."""
        self._settler.move(client, uids, use_move=use_move)

    # -- bookkeeping -------------------------------------------------------------------
    def _committed(self, result: PollResult) -> None:
        """After each commit of new mail: count it and wake whoever processes it."""
        if not result.stored:
            return
        with self._lock:
            self._state = replace(
                self._state, stored_total=self._state.stored_total + result.stored
            )
        self._notify()

    def _settle_refused(self, what: str) -> None:
        """A NO/BAD while settling: logged and shown, retried next cycle."""
        message = self._scrub(what)
        self._cycle_problem = message
        self._set_state(last_error=message, last_error_at=utcnow())
        IMAP_ERRORS.labels(self.account.name, "settle").inc()
        log.error("imap settle refused", extra={**self._extra, "error": message})

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
        self._cursor.save_status(ok_at=None, error=message)


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
