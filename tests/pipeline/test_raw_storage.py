"""The stored message lives in `inbound_raw`, apart from the row the pipeline updates."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailbridge.db import Database
from mailbridge.spool import (
    BLOB_STREAM_MIN,
    STATE_DONE,
    InboundMail,
    InboundRaw,
    StorageError,
    claim,
    new_inbound,
    pending_raw,
    store_inbound,
)
from tests.pipeline.helpers import MESSAGES, deliver, fixture_rules
from tests.support.sql import statements

MESSAGE = b"From: ana@compensar.example\r\nSubject: x\r\n\r\nbody\r\n.\r\n"


def test_the_message_is_stored_apart_and_read_through_inbound_mail(db: Database) -> None:
    (inbound_id,) = store_inbound(db, [new_inbound(bytearray(MESSAGE), channel="pipe")])
    with db.engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("inbound")}
        stored = connection.execute(
            sa.text("SELECT raw FROM inbound_raw WHERE inbound_id = :i"), {"i": inbound_id}
        ).scalar_one()
    assert "raw" not in columns
    assert bytes(stored) == MESSAGE
    with db.reader() as session:
        mail = session.get(InboundMail, inbound_id)
        assert mail is not None and mail.raw == MESSAGE and mail.size == len(MESSAGE)
        assert session.scalar(sa.select(InboundMail.raw).where(InboundMail.id == inbound_id)) \
            == MESSAGE
        assert pending_raw(session, inbound_id) == MESSAGE
    with db.transaction() as session:
        mail = session.get(InboundMail, inbound_id)
        assert mail is not None
        mail.raw = b"redacted"
    with db.reader() as session:
        assert session.get(InboundRaw, inbound_id).raw == b"redacted"  # type: ignore[union-attr]


def test_claim_leaves_the_message_unloaded_and_done_mail_has_no_pending_raw(db: Database) -> None:
    (inbound_id,) = store_inbound(db, [new_inbound(MESSAGE, channel="pipe")])
    with db.transaction() as session:
        mail = claim(session, inbound_id)
        assert mail is not None
        assert "raw_row" not in sa.inspect(mail).dict
        mail.state = STATE_DONE
    with db.reader() as session:
        assert pending_raw(session, inbound_id) is None
        assert session.get(InboundMail, inbound_id).raw == MESSAGE  # type: ignore[union-attr]


def test_the_pipeline_reads_the_message_once_and_never_rewrites_it(db, settings) -> None:  # type: ignore[no-untyped-def]
    raw = (MESSAGES / "opening" / "gmail_multipart_alternative.eml").read_bytes()
    with statements(db) as seen:
        result = deliver(db, settings, fixture_rules(), raw)
    assert result.outcome == "ticket"
    touching = [s for s in seen if "inbound_raw" in s]
    assert len([s for s in touching if s.startswith("INSERT")]) == 1  # at intake
    # Read once: by a SELECT on PostgreSQL, through a blob handle (no SQL) on SQLite.
    reads = [] if db.is_sqlite else ["SELECT"]
    assert [s.split()[0] for s in touching if not s.startswith("INSERT")] == reads
    assert any(s.startswith("UPDATE inbound SET") for s in seen)
    with db.reader() as session:
        assert session.get(InboundMail, result.inbound_id).raw == raw  # type: ignore[union-attr]


def _big_message(size: int) -> bytes:
    head = b"From: ana@compensar.example\r\nSubject: big\r\n\r\n"
    line = b"0123456789" * 7 + b"abcdef\r\n"
    return head + line * ((size - len(head)) // len(line))


def test_a_big_message_is_stored_and_read_back_whole(db: Database) -> None:
    message = _big_message(3 * BLOB_STREAM_MIN)
    mail = new_inbound(bytearray(message), channel="smtp")
    with statements(db) as seen:
        (inbound_id,) = store_inbound(db, [mail])
        with db.reader() as session:
            read = pending_raw(session, inbound_id)
    assert read == message and isinstance(read, bytes)
    assert mail.raw == message  # the stored object still reads as the message
    with db.reader() as session:
        assert session.get(InboundMail, inbound_id).raw == message  # type: ignore[union-attr]
    if db.is_sqlite:
        # Written and read through blob handles: never bound nor selected whole.
        inserts = [s for s in seen if s.startswith("INSERT INTO inbound_raw")]
        assert inserts and all("zeroblob" in s for s in inserts)
        assert not [s for s in seen if s.startswith("SELECT inbound_raw.raw")]


def test_big_messages_of_a_failed_batch_can_be_stored_again(db: Database) -> None:
    message = _big_message(2 * BLOB_STREAM_MIN)
    (first,) = store_inbound(db, [new_inbound(MESSAGE, channel="pipe")])
    clash = new_inbound(MESSAGE, channel="pipe")
    clash.id = first  # the batch fails on its primary key
    big = new_inbound(message, channel="smtp")
    with pytest.raises(StorageError):
        store_inbound(db, [big, clash])
    assert big.raw == message
    (again,) = store_inbound(db, [big])  # as SpoolWriter retries: the same object
    with db.reader() as session:
        assert pending_raw(session, again) == message
        assert session.scalar(sa.select(sa.func.count()).select_from(InboundMail)) == 2


def test_pending_mail_gives_the_message_and_its_envelope_while_it_waits(db: Database) -> None:
    from mailbridge.spool import pending_mail

    (inbound_id,) = store_inbound(db, [new_inbound(
        MESSAGE, channel="imap", mail_from="ana@compensar.example",
        rcpt_tos=["soporte-a@mesa.example"])])
    with db.reader() as session:
        assert pending_mail(session, inbound_id) == (MESSAGE, "ana@compensar.example", "imap")
        assert pending_mail(session, inbound_id + 1) is None
    with db.transaction() as session:
        session.get(InboundMail, inbound_id).state = "done"  # type: ignore[union-attr]
    with db.reader() as session:
        assert pending_mail(session, inbound_id) is None
