"""Reading an account's folder: which UIDs to take, fetched in bounded groups into the spool."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailbridge.db import Database
from mailbridge.intake.imap.cursor import FolderCursor, UidBatch
from mailbridge.intake.imap.envelope import message_id_in
from mailbridge.intake.imap.results import IMAP_MESSAGES, PollResult, chunks, count_received
from mailbridge.intake.imap.tables import ImapCursor
from mailbridge.intake.imap_config import ImapAccount
from mailbridge.spool import store_inbound_with

log = logging.getLogger("mailbridge.intake.imap")  # the channel's one logger, as before

FETCH_BYTE_BUDGET = 16 * 1024 * 1024  # bodies held in memory per fetch/commit
# INTERNALDATE comes from the server's clock with whole seconds: on a re-sync, mail
# dated shortly before we started watching is taken too (a duplicate is recognised,
# a loss would not be).
RESYNC_CLOCK_MARGIN = timedelta(hours=1)
_MESSAGE_ID_HEADER = "BODY[HEADER.FIELDS (MESSAGE-ID)]"


def select_folder(client: IMAPClient, folder: str) -> tuple[int, int]:
    """SELECT the folder: (UIDVALIDITY, UIDNEXT)."""
    info = client.select_folder(folder)
    uidvalidity = int(info[b"UIDVALIDITY"])
    uidnext = info.get(b"UIDNEXT")
    if uidnext is None:
        status = client.folder_status(folder, [b"UIDNEXT"])
        uidnext = status[b"UIDNEXT"]
    return uidvalidity, int(uidnext)


def client_matches(criteria: list[Any], flags: Iterable[bytes], internaldate: Any) -> bool:
    """Evaluate an initial_sync criterion client-side (for re-sync)."""
    kind = criteria[0]
    if kind == "ALL":
        return True
    if kind == "UNSEEN":
        return b"\\Seen" not in set(flags)
    if kind == "SINCE" and isinstance(internaldate, datetime):
        return internaldate.date() >= criteria[1]
    return True


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def plan_groups(
    batch: list[int], sizes: dict[int, int], limit: int | None
) -> list[tuple[list[int], bool]]:
    """Split a batch into fetch groups of at most FETCH_BYTE_BUDGET (one may be a single
    bigger mail); (uids, oversize). UIDs without a size vanished meanwhile."""
    groups: list[tuple[list[int], bool]] = []
    group: list[int] = []
    group_bytes = 0
    for uid in batch:
        size = sizes.get(uid)
        if size is None:  # expunged meanwhile: nothing to take
            continue
        if limit is not None and size > limit:
            groups.append(([uid], True))
            continue
        if group and group_bytes + size > FETCH_BYTE_BUDGET:
            groups.append((group, False))
            group, group_bytes = [], 0
        group.append(uid)
        group_bytes += size
    if group:
        groups.append((group, False))
    return groups


class FolderSync:
    """Takes an account's new mail into the spool, each commit advancing its cursor."""

    def __init__(
        self,
        account: ImapAccount,
        db: Database,
        cursor: FolderCursor,
        *,
        committed: Callable[[PollResult], None],
    ) -> None:
        self.account = account
        self.db = db
        self.cursor = cursor
        self.committed = committed  # after each commit (the poller counts and wakes)
        self._extra = {"account": account.name}

    def sync(self, client: IMAPClient, uidvalidity: int, uidnext: int) -> PollResult:
        """Store every UID of the selected folder the cursor has not passed."""
        cursor, changed = self.cursor.prepare(uidvalidity, uidnext)
        result = PollResult(uidvalidity_changed=changed)
        for batch in chunks(self._uids_to_take(client, cursor), self.account.batch_size):
            result += self._store_batch(client, uidvalidity, batch)
        if cursor.baseline_uid is not None:
            self.cursor.finish_baseline(uidvalidity, cursor.baseline_uid)
        return result

    def _uids_to_take(self, client: IMAPClient, cursor: ImapCursor) -> list[int]:
        last_uid, baseline = cursor.last_uid, cursor.baseline_uid
        # "n:*" always matches the highest UID, so filter on the client side.
        if baseline is None or last_uid >= baseline:
            return sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
        mode = cursor.baseline_mode or "initial"
        before = self._baseline_candidates(client, last_uid, baseline, mode)
        after = [u for u in client.search(["UID", f"{baseline + 1}:*"]) if u > baseline]
        return sorted(set(before)) + sorted(after)

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
        since, known = self.cursor.resync_hints()
        wanted: list[int] = []
        fields = ["FLAGS", "INTERNALDATE", "BODY.PEEK" + _MESSAGE_ID_HEADER[4:]]
        for chunk in chunks(everything, 500):
            for uid, data in client.fetch(chunk, fields).items():
                if self._resync_wants(data, criteria, since, known):
                    wanted.append(uid)
        return wanted

    @staticmethod
    def _resync_wants(
        data: dict[bytes, Any], criteria: list[Any], since: datetime | None, known: set[str]
    ) -> bool:
        mid = message_id_in(bytes(data.get(_MESSAGE_ID_HEADER.encode(), b"")))
        internal = data.get(b"INTERNALDATE")
        recent = (
            since is not None
            and isinstance(internal, datetime)
            and _aware(internal) >= since - RESYNC_CLOCK_MARGIN
        )
        return (
            (mid is not None and mid in known)
            or recent
            or client_matches(criteria, data.get(b"FLAGS", ()), internal)
        )

    def _store_batch(self, client: IMAPClient, uidvalidity: int, batch: list[int]) -> PollResult:
        """Fetch a batch by UID and store it, in commits bounded by FETCH_BYTE_BUDGET."""
        result = PollResult()
        sizes = {
            uid: int(data.get(b"RFC822.SIZE", 0))
            for uid, data in client.fetch(batch, ["RFC822.SIZE"]).items()
        }
        for uids, oversize in plan_groups(batch, sizes, self.account.max_message_size):
            if oversize:
                result += self._oversize(client, uidvalidity, uids[0], sizes[uids[0]])
                continue
            fetched = client.fetch(uids, ["BODY.PEEK[]"])
            bodies = [(uid, bytes(fetched[uid][b"BODY[]"])) for uid in uids if uid in fetched]
            del fetched
            result += self._commit(UidBatch(self.account, uidvalidity, bodies, max(uids)))
            del bodies
        # The cursor passes UIDs that vanished or were oversize, too.
        if batch:
            self.cursor.advance(uidvalidity, max(batch))
        return result

    def _commit(self, batch: UidBatch) -> PollResult:
        """Store the bodies with their rows and the cursor, through the spool, in ONE commit."""
        store_inbound_with(self.db, batch)
        for taken in batch.taken:
            log.info(
                "imap message already stored" if taken.duplicate else "imap message stored",
                extra={**self._extra, "uid": taken.uid, "uidvalidity": batch.uidvalidity,
                       "inbound_id": taken.inbound_id},
            )
        result = batch.result
        if result.stored:
            IMAP_MESSAGES.labels(self.account.name, "stored").inc(result.stored)
            count_received(result.stored)
        if result.duplicates:
            IMAP_MESSAGES.labels(self.account.name, "duplicate").inc(result.duplicates)
        self.committed(result)
        return result

    def _oversize(self, client: IMAPClient, uidvalidity: int, uid: int, size: int) -> PollResult:
        """Too big to take: flag it on the server and remember it, never drop it silently."""
        log.error(
            "imap message over max_message_size left on the server, flagged",
            extra={**self._extra, "uid": uid, "size": size,
                   "max_message_size": self.account.max_message_size},
        )
        with suppress(IMAPClientError):
            client.add_flags([uid], [self.account.quarantine_flag], silent=True)
        self.cursor.record_oversize(uidvalidity, uid, size)
        IMAP_MESSAGES.labels(self.account.name, "oversize").inc()
        return PollResult(oversize=1)
