"""Pieces of the IMAP intake alone: fetch grouping, re-sync matching, what is due to settle."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import update

from mailbridge.db import Database
from mailbridge.intake.imap import (
    FETCH_BYTE_BUDGET,
    SERVER_FLAGGED,
    SERVER_MOVED,
    FolderCursor,
    ImapMessage,
    Settler,
    UidBatch,
)
from mailbridge.intake.imap.envelope import message_id_in, message_id_variants
from mailbridge.intake.imap.settle import settle_query
from mailbridge.intake.imap.sync import client_matches, plan_groups
from mailbridge.intake.imap_config import ImapAccount
from mailbridge.spool import (
    STATE_DONE,
    STATE_NEW,
    STATE_QUARANTINED,
    InboundMail,
    store_inbound_with,
)

ACCOUNT = ImapAccount(name="mesa-a", host="imap.mesa.example", username="mesa",
                      password="secreto", queue_address="soporte-a@mesa.example")
MB = 1024 * 1024


def test_fetch_groups_stay_within_the_byte_budget_and_oversize_goes_alone() -> None:
    half = FETCH_BYTE_BUDGET // 2
    sizes = {1: half, 2: half, 3: half, 4: 40 * MB, 5: 10, 7: FETCH_BYTE_BUDGET + 1}
    groups = plan_groups([1, 2, 3, 4, 5, 6, 7], sizes, limit=32 * MB)
    # 6 vanished (no size); 4 is over the limit; 7 is over the budget but allowed: alone
    assert groups == [([1, 2], False), ([4], True), ([3, 5], False), ([7], False)]
    assert plan_groups([4], sizes, limit=None) == [([4], False)]
    assert plan_groups([], sizes, limit=None) == []


def test_resync_matches_initial_sync_on_the_client_side() -> None:
    seen, unseen = (b"\\Seen",), ()
    assert client_matches(["ALL"], seen, None)
    assert client_matches(["UNSEEN"], unseen, None)
    assert not client_matches(["UNSEEN"], seen, None)
    since = ["SINCE", date(2026, 3, 1)]
    assert client_matches(since, seen, datetime(2026, 3, 1, 0, 5))
    assert not client_matches(since, unseen, datetime(2026, 2, 28, 23, 59))


def test_message_id_spellings() -> None:
    assert message_id_in(b"Message-ID:\r\n <a@b.example>\r\n\r\n") == "<a@b.example>"
    assert message_id_in(b"Subject: x\r\n\r\n") is None
    assert sorted(message_id_variants("<a@b.example>")) == ["<a@b.example>", "a@b.example"]
    assert message_id_variants(None) == []


def _stored_uids(db: Database, count: int) -> list[int]:
    FolderCursor(ACCOUNT, db).prepare(uidvalidity=7, uidnext=1)
    bodies = [(uid, f"Message-ID: <s{uid}@t.example>\r\n\r\n{uid}\r\n".encode())
              for uid in range(1, count + 1)]
    batch = UidBatch(ACCOUNT, 7, bodies, advance_to=count)
    store_inbound_with(db, batch)
    return [t.inbound_id for t in batch.taken if t.inbound_id is not None]


def _set(db: Database, inbound_id: int, state: str, server_state: str | None = None) -> None:
    with db.transaction() as session:
        session.execute(update(InboundMail).where(InboundMail.id == inbound_id)
                        .values(state=state))
        if server_state is not None:
            session.execute(update(ImapMessage).where(ImapMessage.inbound_id == inbound_id)
                            .values(server_state=server_state))


def test_only_mail_whose_case_committed_is_due_to_settle(db: Database) -> None:
    waiting, done, quarantined, replayed, moved = _stored_uids(db, 5)
    settler = Settler(ACCOUNT, db, refused=lambda what: None)
    assert not settler.has_work()  # everything still `new`: nothing touches the server

    _set(db, waiting, STATE_NEW)
    _set(db, done, STATE_DONE)
    _set(db, quarantined, STATE_QUARANTINED)
    _set(db, replayed, STATE_DONE, SERVER_FLAGGED)  # flagged, replayed, finished
    _set(db, moved, STATE_DONE, SERVER_MOVED)  # already settled

    assert settler.has_work()
    with db.reader() as session:
        due = {uid: (srv, state) for _id, uid, srv, state in
               session.execute(settle_query(ACCOUNT.name, 7))}
        assert session.execute(settle_query(ACCOUNT.name, 8)).first() is None
        assert session.execute(settle_query("otra", 7)).first() is None
    assert due == {2: ("stored", STATE_DONE), 3: ("stored", STATE_QUARANTINED),
                   4: (SERVER_FLAGGED, STATE_DONE)}
