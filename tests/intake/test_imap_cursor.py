"""The IMAP cursor alone, against a real database: UIDs advance with the rows they stored."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbridge.db import Database
from mailbridge.intake.imap import (
    SERVER_OVERSIZE,
    SERVER_STALE,
    SERVER_STORED,
    FolderCursor,
    ImapCursor,
    ImapMessage,
    UidBatch,
)
from mailbridge.intake.imap.results import ReconnectError
from mailbridge.intake.imap_config import ImapAccount
from mailbridge.spool import InboundMail, new_inbound, store_inbound, store_inbound_with

ACCOUNT = ImapAccount(name="mesa-a", host="imap.mesa.example", username="mesa",
                      password="secreto", queue_address="soporte-a@mesa.example")


def mail(n: int) -> bytes:
    return (f"Return-Path: <cliente{n}@tenant.example>\r\nMessage-ID: <m{n}@tenant.example>\r\n"
            f"Subject: Caida {n}\r\n\r\nHola {n}\r\n").encode()


def cursor_row(db: Database) -> ImapCursor:
    with db.reader() as session:
        found = session.get(ImapCursor, ACCOUNT.name)
        assert found is not None
        return found


def uid_rows(db: Database) -> dict[tuple[int, int], tuple[int | None, str]]:
    with db.reader() as session:
        rows = session.scalars(select(ImapMessage).order_by(ImapMessage.uid))
        return {(r.uidvalidity, r.uid): (r.inbound_id, r.server_state) for r in rows}


def inbound_count(db: Database) -> int:
    with db.reader() as session:
        return int(session.scalar(select(func.count(InboundMail.id))) or 0)


def store(db: Database, uidvalidity: int, bodies: Sequence[tuple[int, bytes]]) -> UidBatch:
    batch = UidBatch(ACCOUNT, uidvalidity, bodies, advance_to=max(u for u, _ in bodies))
    store_inbound_with(db, batch)
    return batch


def test_first_sync_sets_the_baseline_and_the_same_uidvalidity_writes_nothing(
    db: Database,
) -> None:
    cursor = FolderCursor(ACCOUNT, db)
    started, changed = cursor.prepare(uidvalidity=7, uidnext=11)
    assert not changed
    assert (started.uidvalidity, started.last_uid) == (7, 0)
    assert (started.baseline_uid, started.baseline_mode) == (10, "initial")
    again, changed = cursor.prepare(uidvalidity=7, uidnext=40)
    assert not changed and again.baseline_uid == 10  # not moved by new mail

    cursor.finish_baseline(7, 10)
    row = cursor_row(db)
    assert (row.last_uid, row.baseline_uid, row.baseline_mode) == (10, None, None)


def test_a_batch_stores_mails_rows_and_cursor_together(db: Database) -> None:
    FolderCursor(ACCOUNT, db).prepare(uidvalidity=7, uidnext=1)
    batch = store(db, 7, [(1, mail(1)), (2, mail(2))])
    assert (batch.result.stored, batch.result.duplicates) == (2, 0)
    assert cursor_row(db).last_uid == 2
    ids = [t.inbound_id for t in batch.taken]
    assert uid_rows(db) == {(7, 1): (ids[0], SERVER_STORED), (7, 2): (ids[1], SERVER_STORED)}
    with db.reader() as session:
        stored = session.get(InboundMail, ids[0])
        assert stored is not None
        assert (stored.channel, stored.source) == ("imap", "mesa-a/7/1")
        assert stored.mail_from == "cliente1@tenant.example"
        assert stored.rcpt_tos == ["soporte-a@mesa.example"]

    again = store(db, 7, [(2, mail(2)), (3, mail(3))])  # UID 2 again: a retried fetch
    assert ([t.uid for t in again.taken], again.result.stored) == ([3], 1)
    assert inbound_count(db) == 3 and cursor_row(db).last_uid == 3


def test_the_same_bytes_are_stored_once_and_both_uids_point_at_them(db: Database) -> None:
    FolderCursor(ACCOUNT, db).prepare(uidvalidity=7, uidnext=1)
    (earlier,) = store_inbound(db, [new_inbound(mail(1), channel="smtp")])
    batch = store(db, 7, [(1, mail(1)), (2, mail(2)), (3, mail(2))])
    assert (batch.result.stored, batch.result.duplicates) == (1, 2)
    assert [t.duplicate for t in batch.taken] == [True, False, True]
    rows = uid_rows(db)
    assert rows[(7, 1)][0] == earlier
    assert rows[(7, 2)][0] == rows[(7, 3)][0] != earlier
    assert inbound_count(db) == 2


class RecordFails(UidBatch):
    def record(self, session: Session, stored: Sequence[InboundMail]) -> None:
        super().record(session, stored)
        raise RuntimeError("crash before the commit")


def test_a_batch_that_fails_before_commit_leaves_the_cursor_and_is_taken_whole_later(
    db: Database,
) -> None:
    FolderCursor(ACCOUNT, db).prepare(uidvalidity=7, uidnext=1)
    bodies = [(1, mail(1)), (2, mail(2))]
    with pytest.raises(RuntimeError):
        store_inbound_with(db, RecordFails(ACCOUNT, 7, bodies, advance_to=2))
    assert cursor_row(db).last_uid == 0 and inbound_count(db) == 0 and uid_rows(db) == {}

    assert store(db, 7, bodies).result.stored == 2  # neither skipped nor repeated
    assert inbound_count(db) == 2 and cursor_row(db).last_uid == 2


def test_a_batch_for_another_uidvalidity_is_refused(db: Database) -> None:
    FolderCursor(ACCOUNT, db).prepare(uidvalidity=7, uidnext=1)
    with pytest.raises(ReconnectError, match="cursor changed"):
        store(db, 8, [(1, mail(1))])
    assert inbound_count(db) == 0


def test_uidvalidity_change_restarts_the_cursor_and_stales_unsettled_rows(db: Database) -> None:
    cursor = FolderCursor(ACCOUNT, db)
    cursor.prepare(uidvalidity=7, uidnext=1)
    store(db, 7, [(1, mail(1)), (2, mail(2))])
    cursor.record_oversize(7, 3, size=10**9)

    restarted, changed = cursor.prepare(uidvalidity=9, uidnext=4)

    assert changed
    assert (restarted.uidvalidity, restarted.last_uid) == (9, 0)
    assert (restarted.baseline_uid, restarted.baseline_mode) == (3, "resync")
    states = {key: state for key, (_id, state) in uid_rows(db).items()}
    assert states == {(7, 1): SERVER_STALE, (7, 2): SERVER_STALE, (7, 3): SERVER_OVERSIZE}
    since, known = cursor.resync_hints()
    assert since is not None and known == {"<m1@tenant.example>", "<m2@tenant.example>"}


def test_advance_and_oversize_move_the_cursor_of_their_uidvalidity_only(db: Database) -> None:
    cursor = FolderCursor(ACCOUNT, db)
    cursor.prepare(uidvalidity=7, uidnext=1)
    cursor.advance(7, 5)
    cursor.advance(7, 3)  # never backwards
    cursor.advance(8, 50)  # a stale cycle: ignored
    assert cursor_row(db).last_uid == 5
    cursor.record_oversize(7, 6, size=99)
    cursor.record_oversize(7, 6, size=99)  # seen again: one row
    assert cursor_row(db).last_uid == 6
    assert uid_rows(db) == {(7, 6): (None, SERVER_OVERSIZE)}


def test_status_is_kept_on_the_cursor_once_there_is_one(db: Database) -> None:
    cursor = FolderCursor(ACCOUNT, db)
    cursor.save_status(ok_at=None, error="before any sync")  # no row yet: nothing
    cursor.prepare(uidvalidity=7, uidnext=1)
    cursor.save_status(ok_at=None, error="LoginError: no")
    assert cursor_row(db).last_error == "LoginError: no"
    started = cursor_row(db).watching_since
    cursor.save_status(ok_at=started, error=None)
    row = cursor_row(db)
    assert (row.last_ok_at, row.last_error) == (started, None)
