"""`mailbridge ingest FILE|-`: one message from a file or stdin (sysexits codes)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mailbridge.db import Database
from mailbridge.spool import StorageError, new_inbound, store_inbound

log = logging.getLogger(__name__)

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_TEMPFAIL = 75


def read_input(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    return Path(source).read_bytes()


def ingest_bytes(
    db: Database,
    raw: bytes,
    *,
    source: str,
    mail_from: str = "",
    rcpt_tos: list[str] | None = None,
    max_size: int,
) -> tuple[int, int | None, str]:
    """Store one message; returns (exit code, inbound id, explanation)."""
    if not raw.strip():
        return EX_DATAERR, None, "empty input: no message to store"
    if len(raw) > max_size:
        return EX_DATAERR, None, f"message of {len(raw)} bytes exceeds the limit of {max_size}"
    mail = new_inbound(
        raw, channel="pipe", mail_from=mail_from, rcpt_tos=rcpt_tos or [], source=source
    )
    try:
        (inbound_id,) = store_inbound(db, [mail])
    except StorageError as exc:
        return EX_TEMPFAIL, None, f"could not store the message: {exc}"
    return EX_OK, inbound_id, "stored"
