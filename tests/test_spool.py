"""spool.store_inbound_with: a channel's own rows commit with the mails it stores, or nothing does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbridge.db import Database
from mailbridge.intake.imap import ImapMessage
from mailbridge.spool import (
    BLOB_STREAM_MIN,
    InboundMail,
    StorageError,
    new_inbound,
    pending_raw,
    store_inbound_with,
)

MESSAGE = b"From: ana@compensar.example\r\nSubject: x\r\n\r\nbody\r\n"


@dataclass
class LinkBatch:
    """A channel that stores its mails and one ImapMessage row per mail, by the new ids."""

    mails: list[InboundMail]
    fail_choose: Exception | None = None
    fail_record: Exception | None = None
    extra_row: Callable[[Session], None] | None = None
    recorded_ids: list[int] = field(default_factory=list)

    def choose(self, session: Session) -> Sequence[InboundMail]:
        if self.fail_choose is not None:
            raise self.fail_choose
        return self.mails

    def record(self, session: Session, stored: Sequence[InboundMail]) -> None:
        self.recorded_ids = [m.id for m in stored]
        for n, mail in enumerate(stored, 1):
            session.add(ImapMessage(account="a", uidvalidity=1, uid=n, inbound_id=mail.id))
        if self.extra_row is not None:
            self.extra_row(session)
        if self.fail_record is not None:
            raise self.fail_record


def counts(db: Database) -> tuple[int, int]:
    with db.reader() as session:
        mails = session.scalar(select(func.count(InboundMail.id))) or 0
        rows = session.scalar(select(func.count(ImapMessage.id))) or 0
    return int(mails), int(rows)


def test_the_channel_rows_see_the_ids_and_commit_with_the_mails(db: Database) -> None:
    batch = LinkBatch([new_inbound(MESSAGE, channel="imap"), new_inbound(b"x", channel="imap")])
    ids = store_inbound_with(db, batch)
    assert len(ids) == 2 and batch.recorded_ids == ids
    with db.reader() as session:
        links = session.scalars(select(ImapMessage.inbound_id).order_by(ImapMessage.uid)).all()
        assert list(links) == ids
        assert pending_raw(session, ids[0]) == MESSAGE


def test_an_exception_of_the_channel_reaches_the_caller_and_nothing_is_stored(
    db: Database,
) -> None:
    with pytest.raises(LookupError, match="record"):
        store_inbound_with(db, LinkBatch([new_inbound(MESSAGE, channel="imap")],
                                         fail_record=LookupError("record")))
    with pytest.raises(LookupError, match="choose"):
        store_inbound_with(db, LinkBatch([new_inbound(MESSAGE, channel="imap")],
                                         fail_choose=LookupError("choose")))
    assert counts(db) == (0, 0)


def test_a_mail_that_cannot_be_written_is_a_storage_error(db: Database) -> None:
    broken = new_inbound(MESSAGE, channel="imap")
    broken.sha256 = None  # type: ignore[assignment]  # NOT NULL: the insert fails
    batch = LinkBatch([new_inbound(b"fine", channel="imap"), broken])
    with pytest.raises(StorageError):
        store_inbound_with(db, batch)
    assert batch.recorded_ids == []  # record() never ran
    assert counts(db) == (0, 0)


def test_a_channel_row_refused_at_commit_is_a_storage_error(db: Database) -> None:
    def same_uid_again(session: Session) -> None:
        session.add(ImapMessage(account="a", uidvalidity=1, uid=1, inbound_id=None))

    with pytest.raises(StorageError):  # the unique (account, uidvalidity, uid), on flush
        store_inbound_with(db, LinkBatch([new_inbound(MESSAGE, channel="imap")],
                                         extra_row=same_uid_again))
    assert counts(db) == (0, 0)


def test_a_big_mail_is_stored_intact_and_its_object_still_reads(db: Database) -> None:
    big = MESSAGE + b"y" * BLOB_STREAM_MIN  # on SQLite written through a blob handle
    mail = new_inbound(big, channel="imap")
    (inbound_id,) = store_inbound_with(db, LinkBatch([mail]))
    assert mail.raw == big
    with db.reader() as session:
        assert pending_raw(session, inbound_id) == big
