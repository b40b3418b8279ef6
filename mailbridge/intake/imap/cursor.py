"""How far an account's folder has been read: the cursor, the UIDs taken, and their commit.

The cursor (UIDVALIDITY, last UID) advances in the transaction that stores the
mails it passes (`UidBatch`, through `spool.store_inbound_with`), so a crash
can neither skip a message nor store it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.db import Database, utcnow
from mailbridge.intake.imap.envelope import envelope_from_headers, message_id_variants
from mailbridge.intake.imap.results import PollResult, ReconnectError
from mailbridge.intake.imap.tables import (
    SERVER_OVERSIZE,
    SERVER_STALE,
    SERVER_STORED,
    ImapCursor,
    ImapMessage,
)
from mailbridge.intake.imap_config import ImapAccount
from mailbridge.spool import InboundMail, new_inbound

log = logging.getLogger("mailbridge.intake.imap")  # the channel's one logger, as before


class FolderCursor:
    """The cursor rows of one account: read, start, re-sync, advance, and its status."""

    def __init__(self, account: ImapAccount, db: Database) -> None:
        self.account = account
        self.db = db
        self._extra = {"account": account.name}

    def prepare(self, uidvalidity: int, uidnext: int) -> tuple[ImapCursor, bool]:
        """Load or create the cursor; on a UIDVALIDITY change, start a re-sync.

        Returns the cursor (detached) and whether UIDVALIDITY changed.
        """
        with self.db.reader() as session:
            cursor = session.get(ImapCursor, self.account.name)
            if cursor is not None and cursor.uidvalidity == uidvalidity:
                return cursor, False  # the common case needs no write
        changed = False
        with self.db.transaction() as session:
            cursor = session.get(ImapCursor, self.account.name, with_for_update=True)
            if cursor is None:
                cursor = self._start(session, uidvalidity, uidnext)
            elif cursor.uidvalidity != uidvalidity:
                changed = True
                self._restart(session, cursor, uidvalidity, uidnext)
            session.flush()
            session.expunge(cursor)
        return cursor, changed

    def _start(self, session: Session, uidvalidity: int, uidnext: int) -> ImapCursor:
        """The first sync: what is in the folder now is taken by initial_sync."""
        cursor = ImapCursor(
            account=self.account.name,
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
        return cursor

    def _restart(
        self, session: Session, cursor: ImapCursor, uidvalidity: int, uidnext: int
    ) -> None:
        """UIDVALIDITY changed: unsettled rows go stale, the folder is read again."""
        log.warning(
            "imap UIDVALIDITY changed: re-sync",
            extra={**self._extra, "old_uidvalidity": cursor.uidvalidity,
                   "uidvalidity": uidvalidity},
        )
        stale = session.scalars(
            select(ImapMessage).where(
                ImapMessage.account == self.account.name,
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

    def finish_baseline(self, uidvalidity: int, baseline: int) -> None:
        """Everything up to the baseline has been looked at: read only new UIDs from now."""
        with self.db.transaction() as session:
            cursor = self._locked(session, uidvalidity)
            if cursor is None:
                return
            cursor.last_uid = max(cursor.last_uid, baseline)
            cursor.baseline_uid = None
            cursor.baseline_mode = None

    def advance(self, uidvalidity: int, uid: int) -> None:
        """Pass UIDs that were not stored (vanished meanwhile, or oversize)."""
        with self.db.transaction() as session:
            cursor = self._locked(session, uidvalidity)
            if cursor is not None:
                cursor.last_uid = max(cursor.last_uid, uid)

    def record_oversize(self, uidvalidity: int, uid: int, size: int) -> None:
        """Remember a message too big to take (flagged on the server) and pass it."""
        with self.db.transaction() as session:
            if not is_seen(session, self.account.name, uidvalidity, uid):
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
            cursor = self._locked(session, uidvalidity)
            if cursor is not None:
                cursor.last_uid = max(cursor.last_uid, uid)

    def resync_hints(self) -> tuple[datetime | None, set[str]]:
        """(when we started watching, every Message-ID seen): what a re-sync takes again."""
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
        return since, {str(mid) for mid in known}

    def save_status(self, *, ok_at: datetime | None, error: str | None) -> None:
        """Keep the last good sync and the last error on the cursor row, if there is one."""
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

    def _locked(self, session: Session, uidvalidity: int) -> ImapCursor | None:
        cursor = session.get(ImapCursor, self.account.name, with_for_update=True)
        return cursor if cursor is not None and cursor.uidvalidity == uidvalidity else None


def is_seen(session: Session, account: str, uidvalidity: int, uid: int) -> bool:
    """Whether this (UIDVALIDITY, UID) of the account already has its row."""
    found = session.scalar(
        select(ImapMessage.id).where(
            ImapMessage.account == account,
            ImapMessage.uidvalidity == uidvalidity,
            ImapMessage.uid == uid,
        )
    )
    return found is not None


def duplicate_of(session: Session, digest: str, message_id: str | None) -> int | None:
    """An inbound row with the same bytes (sha256 covers the Message-ID header)."""
    rows = session.execute(
        select(InboundMail.id, InboundMail.message_id)
        .where(InboundMail.sha256 == digest)
        .order_by(InboundMail.id)
    ).all()
    variants = message_id_variants(message_id)
    for inbound_id, stored_mid in rows:
        if stored_mid is None or not variants or stored_mid in variants:
            return int(inbound_id)
    return None


@dataclass
class TakenUid:
    """One UID of the batch and the inbound row it maps to (new, or one it duplicates)."""

    uid: int
    size: int
    message_id: str | None
    mail: InboundMail | None = None  # stored by this batch
    existing_id: int | None = None  # an inbound row stored before
    duplicate: bool = False  # the bytes were already stored (before or in this batch)

    @property
    def inbound_id(self) -> int | None:
        return self.mail.id if self.mail is not None else self.existing_id


@dataclass
class UidBatch:
    """Fetched bodies to store, with their ImapMessage rows and the cursor, in ONE commit.

    The `spool.ChannelBatch` of the IMAP intake: `choose()` locks the cursor and
    skips what is known, `record()` links the UIDs to the stored rows.
    """

    account: ImapAccount
    uidvalidity: int
    bodies: Sequence[tuple[int, bytes]]
    advance_to: int
    taken: list[TakenUid] = field(default_factory=list)
    result: PollResult = field(default_factory=PollResult)

    def choose(self, session: Session) -> list[InboundMail]:
        """Lock the cursor; the new mails among the bodies (known UIDs and bytes skipped)."""
        cursor = session.get(ImapCursor, self.account.name, with_for_update=True)
        if cursor is None or cursor.uidvalidity != self.uidvalidity:
            raise ReconnectError("cursor changed under us (another poller on this account?)")
        self.taken, self.result = [], PollResult()
        new: dict[str, InboundMail] = {}  # by sha256: the same bytes twice in one batch
        for uid, raw in self.bodies:
            if not is_seen(session, self.account.name, self.uidvalidity, uid):
                self.taken.append(self._take(session, uid, raw, new))
        return list(new.values())

    def _take(
        self, session: Session, uid: int, raw: bytes, new: dict[str, InboundMail]
    ) -> TakenUid:
        mail_from, rcpts, message_id = envelope_from_headers(raw, self.account.queue_address)
        mail = new_inbound(
            raw,
            channel="imap",
            mail_from=mail_from,
            rcpt_tos=rcpts,
            source=f"{self.account.name}/{self.uidvalidity}/{uid}",
        )
        taken = TakenUid(uid=uid, size=len(raw), message_id=message_id)
        existing = duplicate_of(session, mail.sha256, message_id)
        if existing is not None:
            taken.existing_id, taken.duplicate = existing, True
            self.result.duplicates += 1
        elif mail.sha256 in new:  # earlier in this batch (its Message-ID is not known yet)
            taken.mail, taken.duplicate = new[mail.sha256], True
            self.result.duplicates += 1
        else:
            taken.mail = new[mail.sha256] = mail
            self.result.stored += 1
        return taken

    def record(self, session: Session, stored: Sequence[InboundMail]) -> None:
        """The UIDs' rows, pointing at the stored mails, and the cursor past the batch."""
        for taken in self.taken:
            session.add(
                ImapMessage(
                    account=self.account.name,
                    uidvalidity=self.uidvalidity,
                    uid=taken.uid,
                    inbound_id=taken.inbound_id,
                    message_id=taken.message_id,
                    size=taken.size,
                    server_state=SERVER_STORED,
                )
            )
        cursor = session.get(ImapCursor, self.account.name)
        assert cursor is not None  # locked by choose() in this transaction
        cursor.last_uid = max(cursor.last_uid, self.advance_to)
