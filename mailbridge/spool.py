"""The durable store between intake and processing: store, claim, finish, quarantine.

Every channel (SMTP, IMAP, pipe) calls `store_inbound()` (IMAP through
`store_inbound_with()`, which commits its cursor with the mails); that commit is
the moment a message is safe, and only then does the channel acknowledge it.
The pipeline later claims rows in state `new` and finishes each one in the
same transaction that writes the ticket, so a crash can neither lose a mail
nor process it twice.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    ForeignKey,
    Index,
    LargeBinary,
    Select,
    String,
    Text,
    bindparam,
    func,
    insert,
    select,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.attributes import set_committed_value

from mailbridge.db import Base, Database, UTCDateTime, utcnow

log = logging.getLogger(__name__)

STATE_NEW = "new"
STATE_DONE = "done"
STATE_QUARANTINED = "quarantined"

# On SQLite a message from this size on is written through a blob handle: a bound
# value is copied by SQLite, copied again into the record, and the copy stays with
# the cached statement until its next use (75 MB around a 25 MB mail).
BLOB_STREAM_MIN = 1 << 20


class InboundRaw(Base):
    """The bytes of one inbound mail, written once at intake; kept here while its case
    is worked on, then moved compressed to `inbound_raw_archive` (`mailbridge archive`).

    Apart from `inbound` because SQLite rewrites a whole row, overflow pages
    included, on any update, and the pipeline updates that row for every mail:
    with the message in it, a 25 MB mail cost ~47 MB of memory and 50 MB of WAL.
    """

    __tablename__ = "inbound_raw"

    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound.id"), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


# How an archived message is stored: the codec's name is kept with each row, so a
# later codec can be added without rewriting the archive.
ARCHIVE_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": (functools.partial(zlib.compress, level=6), zlib.decompress),
}
ARCHIVE_CODEC = "zlib"


def archive_encode(raw: bytes, codec: str = ARCHIVE_CODEC) -> bytes:
    return ARCHIVE_CODECS[codec][0](raw)


def archive_decode(stored: bytes, codec: str) -> bytes:
    if codec not in ARCHIVE_CODECS:
        raise ValueError(f"inbound_raw_archive: unknown codec {codec!r}")
    return ARCHIVE_CODECS[codec][1](bytes(stored))


class InboundRawArchive(Base):
    """The compressed bytes of a mail moved out of `inbound_raw` (`mailbridge archive`).

    The cold copy of a closed case's mail: `inbound_raw` then holds only the mail
    still worked on, and a mail is in exactly one of the two tables.
    """

    __tablename__ = "inbound_raw_archive"

    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound.id"), primary_key=True)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    codec: Mapped[str] = mapped_column(String(16))
    raw: Mapped[bytes] = mapped_column(LargeBinary)

    def message(self) -> bytes:
        """The message as it was stored at intake."""
        return archive_decode(self.raw, self.codec)


class InboundMail(Base):
    """A mail as it arrived: its envelope and state; `raw` is its stored message."""

    __tablename__ = "inbound"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    channel: Mapped[str] = mapped_column(String(16))  # smtp | lmtp | imap | pipe
    source: Mapped[str | None] = mapped_column(String(255))  # peer, account/uid, file
    mail_from: Mapped[str] = mapped_column(String(998), default="")
    rcpt_tos: Mapped[list[Any]] = mapped_column(default=list)
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default=STATE_NEW)
    outcome: Mapped[str | None] = mapped_column(String(64))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    stage: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Loaded only when `raw` is read or written (never by claim or the listings).
    raw_row: Mapped[InboundRaw | None] = relationship(cascade="all, delete-orphan")
    # Loaded only when `raw` is read and the mail is no longer in `inbound_raw`.
    archived_row: Mapped[InboundRawArchive | None] = relationship(
        cascade="all, delete-orphan")

    @hybrid_property
    def raw(self) -> bytes | None:
        """The stored message, hot or archived (None only for a mail stored without one)."""
        row = self.raw_row
        if row is not None:
            return row.raw
        cold = self.archived_row
        return None if cold is None else cold.message()

    @raw.inplace.setter
    def _raw_setter(self, value: bytes) -> None:
        if self.raw_row is None:
            self.raw_row = InboundRaw(raw=value)
            if self.archived_row is not None:  # one copy only: the new one is hot
                self.archived_row = None
        else:
            self.raw_row.raw = value

    @raw.inplace.expression
    @classmethod
    def _raw_expression(cls) -> ColumnElement[bytes | None]:
        # SQL sees the hot table only: an archived message is compressed (read it
        # through the attribute or `archived_raw()`).
        return (
            select(InboundRaw.raw)
            .where(InboundRaw.inbound_id == cls.id)
            .scalar_subquery()
        )


Index("ix_inbound_state_id", InboundMail.state, InboundMail.id)


class StorageError(Exception):
    """The message could not be made durable; the sender must retry later."""


def new_inbound(
    raw: bytes | bytearray,
    *,
    channel: str,
    mail_from: str = "",
    rcpt_tos: Sequence[str] = (),
    source: str | None = None,
) -> InboundMail:
    return InboundMail(
        channel=channel,
        source=source,
        mail_from=mail_from,
        rcpt_tos=[r.lower() for r in rcpt_tos],
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        raw_row=InboundRaw(raw=raw),
        state=STATE_NEW,
    )


def store_inbound(db: Database, mails: Sequence[InboundMail]) -> list[int]:
    """Commit the mails in one transaction and return their ids.

    Raises StorageError if anything fails: then nothing of the batch is stored.
    """
    streamed: list[tuple[InboundRaw, bytes | bytearray]] = []
    assigned: list[InboundMail] = []
    try:
        with db.transaction() as session:
            _insert(session, mails, streamed, assigned, sqlite=db.is_sqlite)
            ids = [m.id for m in mails]
    except Exception as exc:
        _forget_ids(assigned)
        log.error("spool store failed", extra={"error": repr(exc), "count": len(mails)})
        raise StorageError(str(exc)) from exc
    finally:
        _settle_streamed(streamed)
    return ids


class ChannelBatch(Protocol):
    """A channel's own bookkeeping, committed in the transaction that stores its mails.

    IMAP's cursor is one: the UID it has read up to advances with the rows, so a
    crash can neither skip a message nor store it twice.
    """

    def choose(self, session: Session) -> Sequence[InboundMail]:
        """Before the insert: the mails to store (may lock, look up, skip)."""
        ...

    def record(self, session: Session, stored: Sequence[InboundMail]) -> None:
        """After the insert, ids known: the channel's rows for what it took."""
        ...


def store_inbound_with(db: Database, batch: ChannelBatch) -> list[int]:
    """Store what `batch.choose()` picks and `batch.record()`s, in ONE transaction.

    An exception raised by the batch's own methods reaches the caller as it is;
    a failure to write or commit the mails raises StorageError. Either way
    nothing is stored, the mails nor the channel's rows.
    """
    streamed: list[tuple[InboundRaw, bytes | bytearray]] = []
    assigned: list[InboundMail] = []
    mails: Sequence[InboundMail] = ()
    spool_step = False  # whether a failure now is the spool's (then: StorageError)
    try:
        with db.transaction() as session:
            mails = batch.choose(session)
            spool_step = True
            _insert(session, mails, streamed, assigned, sqlite=db.is_sqlite)
            spool_step = False
            batch.record(session, mails)
            ids = [m.id for m in mails]
            spool_step = True  # the commit, on leaving the block
    except Exception as exc:
        _forget_ids(assigned)
        if not spool_step:
            raise
        log.error("spool store failed", extra={"error": repr(exc), "count": len(mails)})
        raise StorageError(str(exc)) from exc
    finally:
        _settle_streamed(streamed)
    return ids


def _insert(
    session: Session,
    mails: Sequence[InboundMail],
    streamed: list[tuple[InboundRaw, bytes | bytearray]],
    assigned: list[InboundMail],
    *,
    sqlite: bool,
) -> None:
    """Insert the mails; each object takes its id, and `assigned` the objects whose id
    this gave (to be forgotten if the transaction fails: a retry must not reuse it).
    `streamed` gets what goes through blobs.

    Core statements, one INSERT for the rows and one for their messages: the unit of
    work for objects nobody reads again cost more than the statements (bench/README.md;
    bench/icount: 2.75 -> 1.72 M instructions a store). The objects stay out of the
    session, their defaults and ids set as if loaded.
    """
    if not mails:
        return
    if sqlite:
        streamed.extend(_zeroblob_placeholders(mails))
    chosen: list[dict[str, Any]] = []  # an id given by the caller is kept
    numbered: list[dict[str, Any]] = []
    for mail in mails:
        state = mail.__dict__
        for key, default in _INBOUND_DEFAULTS:  # the model's, as the ORM would apply them
            if state.get(key) is None:
                set_committed_value(mail, key, default.arg(None) if default.is_callable
                                    else default.arg)
        row = {c.key: state.get(c.key) for c in _INBOUND_COLUMNS}
        if state.get("id") is not None:
            chosen.append({"id": state["id"], **row})
        else:
            numbered.append(row)
            assigned.append(mail)
    connection = session.connection()
    if chosen:
        connection.execute(insert(InboundMail.__table__), chosen)
    if numbered:
        ids = connection.execute(_INSERT_INBOUND, numbered).scalars().all()
        for mail, inbound_id in zip(assigned, ids, strict=True):
            set_committed_value(mail, "id", inbound_id)
    raws = []
    for mail in mails:
        raw_row = mail.raw_row
        if raw_row is None:
            continue
        set_committed_value(raw_row, "inbound_id", mail.id)
        if isinstance(raw_row.raw, ClauseElement):  # zeroblob(n): a statement of its own
            connection.execute(_INSERT_RAW.values(inbound_id=mail.id, raw=raw_row.raw))
        else:
            raws.append({"inbound_id": mail.id, "raw": raw_row.raw})
    if raws:
        connection.execute(_INSERT_RAW, raws)
    _write_blobs(session, streamed)


def _forget_ids(assigned: list[InboundMail]) -> None:
    """After a failed transaction: the ids it gave are free again, the objects new."""
    for mail in assigned:
        set_committed_value(mail, "id", None)
        if mail.raw_row is not None:
            set_committed_value(mail.raw_row, "inbound_id", None)


_INBOUND_COLUMNS = [c for c in InboundMail.__table__.columns if not c.primary_key]
_INBOUND_DEFAULTS = [(c.key, c.default) for c in _INBOUND_COLUMNS if c.default is not None]
_INSERT_INBOUND = insert(InboundMail.__table__).returning(
    InboundMail.__table__.c.id, sort_by_parameter_order=True)
_INSERT_RAW = insert(InboundRaw.__table__)


def _settle_streamed(streamed: list[tuple[InboundRaw, bytes | bytearray]]) -> None:
    """The objects read as stored (or retry as they came)."""
    for row, data in streamed:
        set_committed_value(row, "raw", data)


def _zeroblob_placeholders(mails: Sequence[InboundMail]) -> list[tuple[InboundRaw, Any]]:
    """Big messages are inserted as zeroblob(size), to be written by _write_blobs()."""
    streamed = []
    for mail in mails:
        row = mail.raw_row
        if row is not None and row.raw is not None and len(row.raw) >= BLOB_STREAM_MIN:
            streamed.append((row, row.raw))
            row.raw = func.zeroblob(len(row.raw))  # type: ignore[assignment]
    return streamed


def _write_blobs(session: Session, streamed: list[tuple[InboundRaw, Any]]) -> None:
    if not streamed:
        return
    connection = session.connection().connection.driver_connection
    for row, data in streamed:
        with connection.blobopen("inbound_raw", "raw", row.inbound_id) as blob:
            blob.write(data)


def next_pending(
    session: Session, limit: int = 50, shard: tuple[int, int] | None = None
) -> list[tuple[int, int]]:
    """(id, size) of the oldest waiting mails; with `shard` (k, n), those whose id is k mod n."""
    stmt = select(InboundMail.id, InboundMail.size).where(InboundMail.state == STATE_NEW)
    if shard is not None and shard[1] > 1:
        stmt = stmt.where(InboundMail.id % shard[1] == shard[0])
    return [(i, size) for i, size in session.execute(stmt.order_by(InboundMail.id).limit(limit))]


def pending_raw(session: Session, inbound_id: int) -> bytes | None:
    """The stored message of a mail still waiting (state `new`), else None.

    Read alone, so no row object keeps a second reference to a big message; on
    SQLite through a blob handle, straight into the bytes returned (a selected
    value is first assembled in SQLite's own buffer: one more copy of the mail).
    """
    found = pending_mail(session, inbound_id)
    return found[0] if found is not None else None


# Built once, on the tables, run on the session's connection: every mail reads them
# (building the ORM select and running it through the session cost more than the read).
_ENVELOPE = select(
    InboundMail.__table__.c.mail_from, InboundMail.__table__.c.channel,
    InboundMail.__table__.c.size,
).where(InboundMail.__table__.c.id == bindparam("inbound_id"),
        InboundMail.__table__.c.state == STATE_NEW)
_HOT_RAW = select(InboundRaw.__table__.c.raw).where(
    InboundRaw.__table__.c.inbound_id == bindparam("inbound_id"))


def pending_mail(session: Session, inbound_id: int) -> tuple[bytes, str, str] | None:
    """(message, MAIL FROM, channel) of a mail still waiting (state `new`), else None.

    The message is read as `pending_raw` says; the envelope is what the pipeline
    needs before its transaction.
    """
    envelope = session.connection().execute(_ENVELOPE, {"inbound_id": inbound_id}).first()
    if envelope is None:
        return None
    raw = hot_raw(session, inbound_id, envelope[2])
    if raw is None:  # never expected (the archive leaves waiting mail hot): read, not lose it
        raw = archived_raw(session, inbound_id)
    if raw is None:
        return None
    return raw, envelope[0], envelope[1]


def hot_raw(session: Session, inbound_id: int, size: int) -> bytes | None:
    """The message in `inbound_raw` (`size` as stored at intake), else None: read as
    `pending_raw` says, without the copies a selected value costs."""
    if session.get_bind().dialect.name == "sqlite":
        connection = session.connection().connection.driver_connection
        try:
            with connection.blobopen("inbound_raw", "raw", inbound_id, readonly=True) as blob:
                data: bytes = blob.read()
                return data
        except sqlite3.OperationalError:  # no such row: not hot (archived, or none)
            return None
    if size >= BLOB_STREAM_MIN:
        return _read_binary(session, inbound_id, size)
    value = session.connection().scalar(_HOT_RAW, {"inbound_id": inbound_id})
    return bytes(value) if value is not None and not isinstance(value, bytes) else value


def archived_raw(session: Session, inbound_id: int) -> bytes | None:
    """The message of a mail moved to `inbound_raw_archive`, decompressed, else None."""
    found = session.execute(
        select(InboundRawArchive.codec, InboundRawArchive.raw)
        .where(InboundRawArchive.inbound_id == inbound_id)
    ).first()
    return None if found is None else archive_decode(found[1], found[0])


_PIECE = 1024 * 1024


def _read_binary(session: Session, inbound_id: int, size: int) -> bytes | None:
    """A big message read from PostgreSQL a piece at a time, in binary.

    Selected whole, a bytea comes as hex text that libpq buffers and psycopg decodes:
    ~4x the message at once (a 20 MB mail took the daemon up by 150 MB). Here libpq
    holds one piece at a time and the pieces are joined once.
    """
    connection = session.connection().connection.driver_connection
    pieces: list[bytes] = []
    with connection.cursor(binary=True) as cursor:
        for offset in range(0, size, _PIECE):  # `size` is len(raw), set when it was stored
            cursor.execute("SELECT substring(raw FROM %s FOR %s) FROM inbound_raw "
                           "WHERE inbound_id = %s", (offset + 1, _PIECE, inbound_id))
            row = cursor.fetchone()
            if row is None or row[0] is None:
                return None
            pieces.append(row[0])
    return b"".join(pieces)


@functools.cache
def _claim_statement(skip_locked: bool) -> Select[tuple[InboundMail]]:
    # Built once: constructing the statement cost more than running it (py-spy, bench/).
    stmt = select(InboundMail).where(
        InboundMail.id == bindparam("inbound_id"), InboundMail.state == STATE_NEW
    )
    return stmt.with_for_update(skip_locked=True) if skip_locked else stmt


def claim(session: Session, inbound_id: int) -> InboundMail | None:
    """Lock one new row for this transaction (SKIP LOCKED where the backend has it)."""
    skip_locked = session.get_bind().dialect.name == "postgresql"
    return session.scalars(
        _claim_statement(skip_locked), {"inbound_id": inbound_id}
    ).first()


def quarantine(db: Database, inbound_id: int, *, stage: str, error: str,
               then: Callable[[Session, InboundMail], None] | None = None) -> None:
    """Keep a mail whose processing raised, with the stage and traceback; `then` runs in
    the same transaction (the webhook event of outbound/webhooks.py)."""
    with db.transaction() as session:
        mail = session.get(InboundMail, inbound_id)
        if mail is None:
            return
        mail.state = STATE_QUARANTINED
        mail.stage = stage
        mail.error = error
        mail.attempts += 1
        mail.processed_at = utcnow()
        if then is not None:
            then(session, mail)


def release_for_replay(db: Database, inbound_id: int) -> bool:
    """Put a quarantined mail back in the queue."""
    with db.transaction() as session:
        mail = session.get(InboundMail, inbound_id)
        if mail is None or mail.state != STATE_QUARANTINED:
            return False
        mail.state = STATE_NEW
        return True
