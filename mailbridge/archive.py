"""`mailbridge archive`: closed cases' raw mail out of the hot `inbound_raw`, compressed.

A mail is moved when nothing will work on it again: it was processed (`done`) or
dropped, it arrived before the cutoff, and its case is closed (`cerrado`) since before
the cutoff or it never had a case. Waiting and quarantined mail stays hot (the pipeline
and `quarantine replay` read it there). Each chunk is one transaction that inserts
the compressed copies and deletes the hot rows, so a crash leaves every mail in
exactly one of the two tables and a rerun goes on where it stopped. Reads do not
change: `InboundMail.raw` finds an archived message and decompresses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from mailbridge.db import Database
from mailbridge.spool import (
    ARCHIVE_CODEC,
    BLOB_STREAM_MIN,
    STATE_DONE,
    InboundMail,
    InboundRaw,
    InboundRawArchive,
    archive_encode,
    hot_raw,
)
from mailbridge.tickets.models import STATUS_CLOSED, Ticket

DROPPED = "dropped"  # `quarantine drop` (cli.py): never replayed again
CHUNK_ROWS = 500
# A chunk also stops at this many bytes of messages: it is read into memory whole,
# and on SQLite the daemon's writers wait for its transaction.
CHUNK_BYTES = 64 * 1024 * 1024
WINDOW_ROWS = 4 * CHUNK_ROWS  # hot mails looked at per query (the ones staying included)


@dataclass
class ArchiveReport:
    """What a run moved (or, dry, would move); `bytes_stored` is after compression."""

    cutoff: str
    dry_run: bool
    moved: int = 0
    chunks: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _window(session: Session, after_id: int, rows: int) -> list[int]:
    """The ids of the next `rows` hot mails after `after_id`, archivable or not."""
    return list(session.connection().scalars(
        select(InboundRaw.inbound_id).where(InboundRaw.inbound_id > after_id)
        .order_by(InboundRaw.inbound_id).limit(rows)))


def _archivable(session: Session, ids: list[int], cutoff: datetime) -> list[tuple[int, int]]:
    """(id, size), in id order, of the mails among `ids` that may move.

    Two lookups by primary key, judged here: so a run costs what the hot table holds,
    never the whole history. Joined with the conditions in SQL, the planners drove
    the query from `inbound` instead (SQLite through ix_inbound_state_id, sorting
    every done mail; PostgreSQL probing the id list once per done mail: 17 s for
    10,000 cases).
    """
    if not ids:
        return []
    connection = session.connection()  # Core: the ORM's row handling cost as much again
    mails = connection.execute(
        select(InboundMail.id, InboundMail.size, InboundMail.ticket_id, InboundMail.state,
               InboundMail.received_at).where(InboundMail.id.in_(ids))).all()
    finished = [(i, size, case) for i, size, case, state, received_at in mails
                # the mail itself is that old too: a reply to a long-closed case waits
                if state in (STATE_DONE, DROPPED) and received_at < cutoff]
    cases = {case for _i, _size, case in finished if case is not None}
    closed: set[int] = set()
    if cases:
        # closed_at stays when a case is reopened: the status decides, not the date alone.
        closed = set(connection.scalars(select(Ticket.id).where(
            Ticket.id.in_(cases), Ticket.status == STATUS_CLOSED, Ticket.closed_at < cutoff)))
    return sorted((i, size) for i, size, case in finished if case is None or case in closed)


def _chunks(found: list[tuple[int, int]], rows: int, max_bytes: int) -> list[list[int]]:
    """The ids in chunks of at most `rows` mails and `max_bytes` (at least one mail each)."""
    chunks: list[list[int]] = []
    total = 0
    for inbound_id, size in found:
        if not chunks or len(chunks[-1]) >= rows or total + size > max_bytes:
            chunks.append([])
            total = 0
        chunks[-1].append(inbound_id)
        total += size
    return chunks


def _move(session: Session, found: list[tuple[int, int]], now: datetime) -> tuple[int, int]:
    """Copy the mails' messages compressed into the archive, delete them hot: (raw, stored)."""
    small = [i for i, size in found if size < BLOB_STREAM_MIN]
    raws: list[tuple[int, bytes | None]] = [(i, raw) for i, raw in session.execute(
        select(InboundRaw.inbound_id, InboundRaw.raw).where(InboundRaw.inbound_id.in_(small))
    )] if small else []
    # a big message alone, as the pipeline reads it (a selected bytea costs ~4x on PostgreSQL)
    raws += [(i, hot_raw(session, i, size)) for i, size in found if size >= BLOB_STREAM_MIN]
    raw_bytes = stored_bytes = 0
    values = []
    for inbound_id, raw in raws:
        if raw is None:
            continue
        packed = archive_encode(bytes(raw))
        raw_bytes += len(raw)
        stored_bytes += len(packed)
        values.append({"inbound_id": inbound_id, "archived_at": now, "codec": ARCHIVE_CODEC,
                       "raw": packed})
    del raws
    if values:
        session.execute(insert(InboundRawArchive), values)
        session.execute(delete(InboundRaw).where(
            InboundRaw.inbound_id.in_([v["inbound_id"] for v in values])))
    return raw_bytes, stored_bytes


def _move_chunk(db: Database, ids: list[int], cutoff: datetime, now: datetime,
                report: ArchiveReport) -> None:
    """One transaction: the chunk's mails still hot and archivable move; `report` counts."""
    with db.transaction() as session:
        hot = select(InboundRaw.inbound_id).where(InboundRaw.inbound_id.in_(ids))
        if not db.is_sqlite:  # two runs at once take different rows (SQLite: one writer)
            hot = hot.with_for_update(skip_locked=True)
        still = _archivable(session, list(session.scalars(hot)), cutoff)
        if not still:
            return
        raw_bytes, stored_bytes = _move(session, still, now)
    report.moved += len(still)
    report.chunks += 1
    report.bytes_raw += raw_bytes
    report.bytes_stored += stored_bytes


def archive_closed_mail(
    db: Database,
    *,
    now: datetime,
    older_than_days: float,
    limit: int | None = None,
    dry_run: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    chunk_bytes: int = CHUNK_BYTES,
    window_rows: int = WINDOW_ROWS,
    after_chunk: Callable[[ArchiveReport], None] | None = None,
) -> ArchiveReport:
    """Move archivable mail older than the cutoff, a chunk per transaction, up to `limit`.

    Dry: count the mails and their bytes, change nothing. `after_chunk` is called
    after each committed chunk with the figures so far.
    """
    started = time.monotonic()
    cutoff = now - timedelta(days=older_than_days)
    report = ArchiveReport(cutoff=cutoff.isoformat(), dry_run=dry_run)
    after_id = 0
    while limit is None or report.moved < limit:
        # Found outside the write transactions (on SQLite the daemon's writers wait for
        # them), checked again inside each by key.
        with db.reader() as session:
            window = _window(session, after_id, window_rows)
            if not window:
                break
            found = _archivable(session, window, cutoff)
        after_id = window[-1]
        if limit is not None and len(found) > limit - report.moved:
            found = found[:limit - report.moved]
            after_id = found[-1][0]
        sizes = dict(found)
        for ids in _chunks(found, chunk_rows, chunk_bytes):
            if dry_run:
                report.moved += len(ids)
                report.bytes_raw += sum(sizes[i] for i in ids)
                continue
            _move_chunk(db, ids, cutoff, now, report)
            if after_chunk is not None:
                after_chunk(report)
    if dry_run:  # the figure is the message sizes recorded at intake
        report.bytes_stored = 0
    report.seconds = round(time.monotonic() - started, 3)
    return report
