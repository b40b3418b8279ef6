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

from sqlalchemy import Select, and_, delete, insert, or_, select
from sqlalchemy.orm import Session

from mailbridge.db import Database
from mailbridge.spool import (
    ARCHIVE_CODEC,
    STATE_DONE,
    InboundMail,
    InboundRaw,
    InboundRawArchive,
    archive_encode,
)
from mailbridge.tickets.models import STATUS_CLOSED, Ticket

DROPPED = "dropped"  # `quarantine drop` (cli.py): never replayed again
CHUNK_ROWS = 500
# A chunk also stops at this many bytes of messages: it is read into memory whole,
# and on SQLite the daemon's writers wait for its transaction.
CHUNK_BYTES = 64 * 1024 * 1024


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


def _archivable(cutoff: datetime, after_id: int, rows: int) -> Select[tuple[int, int]]:
    """(id, size) of hot mails that may move, by id after `after_id`."""
    # closed_at stays when a case is reopened: the status decides, not the date alone.
    closed_case = and_(Ticket.status == STATUS_CLOSED, Ticket.closed_at < cutoff)
    return (
        select(InboundRaw.inbound_id, InboundMail.size)
        .join(InboundMail, InboundMail.id == InboundRaw.inbound_id)
        .outerjoin(Ticket, Ticket.id == InboundMail.ticket_id)
        .where(InboundRaw.inbound_id > after_id,
               InboundMail.state.in_((STATE_DONE, DROPPED)),
               # the mail itself is that old too: a reply to a long-closed case waits
               InboundMail.received_at < cutoff,
               or_(InboundMail.ticket_id.is_(None), closed_case))
        .order_by(InboundRaw.inbound_id)
        .limit(rows)
    )


def _take(found: list[tuple[int, int]], max_bytes: int) -> list[int]:
    """The ids of a chunk: as many as fit in `max_bytes` (at least one)."""
    ids, total = [], 0
    for inbound_id, size in found:
        if ids and total + size > max_bytes:
            break
        ids.append(inbound_id)
        total += size
    return ids


def _move(session: Session, ids: list[int], now: datetime) -> tuple[int, int]:
    """Copy the chunk's messages compressed into the archive, delete them hot: (raw, stored)."""
    rows = session.execute(
        select(InboundRaw.inbound_id, InboundRaw.raw).where(InboundRaw.inbound_id.in_(ids))
    ).all()
    raw_bytes = stored_bytes = 0
    values = []
    for inbound_id, raw in rows:
        packed = archive_encode(bytes(raw))
        raw_bytes += len(raw)
        stored_bytes += len(packed)
        values.append({"inbound_id": inbound_id, "archived_at": now, "codec": ARCHIVE_CODEC,
                       "raw": packed})
    del rows
    if values:
        session.execute(insert(InboundRawArchive), values)
        session.execute(delete(InboundRaw).where(
            InboundRaw.inbound_id.in_([v["inbound_id"] for v in values])))
    return raw_bytes, stored_bytes


def archive_closed_mail(
    db: Database,
    *,
    now: datetime,
    older_than_days: float,
    limit: int | None = None,
    dry_run: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    chunk_bytes: int = CHUNK_BYTES,
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
        rows = chunk_rows if limit is None else min(chunk_rows, limit - report.moved)
        if dry_run:
            with db.reader() as session:
                found = [(i, s) for i, s in session.execute(_archivable(cutoff, after_id, rows))]
            if not found:
                break
            report.moved += len(found)
            report.bytes_raw += sum(size for _id, size in found)
            after_id = found[-1][0]
            continue
        with db.transaction() as session:
            stmt = _archivable(cutoff, after_id, rows)
            if not db.is_sqlite:  # two runs at once take different rows (SQLite: one writer)
                stmt = stmt.with_for_update(of=InboundRaw, skip_locked=True)
            found = [(i, s) for i, s in session.execute(stmt)]
            if not found:
                break
            ids = _take(found, chunk_bytes)
            raw_bytes, stored_bytes = _move(session, ids, now)
        after_id = ids[-1]
        report.moved += len(ids)
        report.chunks += 1
        report.bytes_raw += raw_bytes
        report.bytes_stored += stored_bytes
        if after_chunk is not None:
            after_chunk(report)
    if dry_run:  # the figure is the message sizes recorded at intake
        report.bytes_stored = 0
    report.seconds = round(time.monotonic() - started, 3)
    return report
