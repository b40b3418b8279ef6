"""Settling on the server after the case committed: move what is done, flag what is quarantined.

Nothing here runs before the pipeline's transaction has finished the mail: the
query only picks rows whose inbound mail is `done` or `quarantined`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, IMAPClientAbortError, IMAPClientError
from sqlalchemy import and_, or_, select

from mailbridge.db import Database, utcnow
from mailbridge.intake.imap.results import IMAP_MESSAGES, PollResult, chunks
from mailbridge.intake.imap.tables import (
    SERVER_FLAGGED,
    SERVER_MOVED,
    SERVER_STORED,
    ImapCursor,
    ImapMessage,
)
from mailbridge.intake.imap_config import ImapAccount
from mailbridge.spool import STATE_DONE, STATE_QUARANTINED, InboundMail

log = logging.getLogger("mailbridge.intake.imap")  # the channel's one logger, as before

SETTLE_CHUNK = 200


def settle_query(account: str, uidvalidity: int) -> Any:
    """(row id, UID, server_state, inbound state) of the rows whose mail needs settling."""
    return (
        select(ImapMessage.id, ImapMessage.uid, ImapMessage.server_state, InboundMail.state)
        .join(InboundMail, InboundMail.id == ImapMessage.inbound_id)
        .where(
            ImapMessage.account == account,
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


class Settler:
    """Moves and flags one account's messages; a server's refusal goes to `refused`."""

    def __init__(
        self, account: ImapAccount, db: Database, *, refused: Callable[[str], None]
    ) -> None:
        self.account = account
        self.db = db
        self.refused = refused
        self.folder_ready = False  # processed_folder checked on this connection
        self._extra = {"account": account.name}

    def has_work(self) -> bool:
        """Whether some stored mail has finished and waits to be moved or flagged."""
        with self.db.reader() as session:
            cursor = session.get(ImapCursor, self.account.name)
            if cursor is None:
                return False
            query = settle_query(self.account.name, cursor.uidvalidity).limit(1)
            return session.execute(query).first() is not None

    def settle(self, client: IMAPClient, uidvalidity: int) -> PollResult:
        """Move processed mail away and flag quarantined mail, after their commit."""
        with self.db.reader() as session:
            rows = session.execute(settle_query(self.account.name, uidvalidity)).all()
        to_move = [(row_id, uid) for row_id, uid, _srv, state in rows if state == STATE_DONE]
        to_unflag = [
            uid for _id, uid, srv, state in rows if state == STATE_DONE and srv == SERVER_FLAGGED
        ]
        to_flag = [
            (row_id, uid) for row_id, uid, _srv, state in rows if state == STATE_QUARANTINED
        ]
        with self._server_refusal("remove the quarantine flag"):
            if to_unflag:
                client.remove_flags(to_unflag, [self.account.quarantine_flag], silent=True)
        result = PollResult(moved=self._move_done(client, to_move))
        result.flagged = self._flag_quarantined(client, to_flag)
        self._log_settled(rows, uidvalidity, result)
        return result

    def _move_done(self, client: IMAPClient, rows: list[tuple[int, int]]) -> int:
        moved = 0
        for chunk in chunks(rows, SETTLE_CHUNK):
            with self._server_refusal("move to " + self.account.processed_folder):
                self.move(client, [uid for _id, uid in chunk])
                self.mark([row_id for row_id, _uid in chunk], SERVER_MOVED)
                moved += len(chunk)
        return moved

    def _flag_quarantined(self, client: IMAPClient, rows: list[tuple[int, int]]) -> int:
        flagged = 0
        for chunk in chunks(rows, SETTLE_CHUNK):
            with self._server_refusal("add the quarantine flag"):
                client.add_flags(
                    [uid for _id, uid in chunk], [self.account.quarantine_flag], silent=True
                )
                self.mark([row_id for row_id, _uid in chunk], SERVER_FLAGGED)
                flagged += len(chunk)
        return flagged

    def _log_settled(self, rows: Sequence[Any], uidvalidity: int, result: PollResult) -> None:
        for _id, uid, _srv, state in rows:
            done = state == STATE_DONE
            log.info(
                "imap message moved" if done else "imap message flagged",
                extra={**self._extra, "uid": uid, "uidvalidity": uidvalidity,
                       "folder": self.account.processed_folder if done else None},
            )
        if result.moved:
            IMAP_MESSAGES.labels(self.account.name, "moved").inc(result.moved)
        if result.flagged:
            IMAP_MESSAGES.labels(self.account.name, "flagged").inc(result.flagged)

    @contextmanager
    def _server_refusal(self, what: str) -> Iterator[None]:
        """A NO/BAD while settling is reported and retried next cycle; it must not
        stop intake. A dead connection (abort) still propagates."""
        try:
            yield
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            self.refused(f"could not {what}: {exc}")

    def move(self, client: IMAPClient, uids: list[int], *, use_move: bool | None = None) -> None:
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

    def _ensure_processed_folder(self, client: IMAPClient) -> None:
        if self.folder_ready:
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
        self.folder_ready = True

    def mark(self, row_ids: list[int], server_state: str) -> None:
        """Record what was done on the server (after it was done)."""
        with self.db.transaction() as session:
            for row in session.scalars(select(ImapMessage).where(ImapMessage.id.in_(row_ids))):
                row.server_state = server_state
                row.settled_at = utcnow()
