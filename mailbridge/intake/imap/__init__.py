"""IMAP intake: fetch new mail by UID into the spool, then move or flag it once processed.

poller.py runs one thread per account (connection.py opens it); sync.py reads
the folder into the spool, committing cursor.py's bookkeeping (tables.py) with
each batch; settle.py moves or flags a message once its case has committed.
"""

from mailbridge.intake.imap.cursor import FolderCursor, UidBatch
from mailbridge.intake.imap.envelope import envelope_from_headers
from mailbridge.intake.imap.poller import (
    BACKOFF_CAP,
    IDLE_TICK,
    ImapPoller,
    ImapPollers,
    ImapPollerState,
)
from mailbridge.intake.imap.results import PollResult
from mailbridge.intake.imap.settle import SETTLE_CHUNK, Settler
from mailbridge.intake.imap.sync import FETCH_BYTE_BUDGET, RESYNC_CLOCK_MARGIN, FolderSync
from mailbridge.intake.imap.tables import (
    SERVER_FLAGGED,
    SERVER_MOVED,
    SERVER_OVERSIZE,
    SERVER_STALE,
    SERVER_STORED,
    ImapCursor,
    ImapMessage,
)

__all__ = [
    "BACKOFF_CAP",
    "FETCH_BYTE_BUDGET",
    "IDLE_TICK",
    "RESYNC_CLOCK_MARGIN",
    "SERVER_FLAGGED",
    "SERVER_MOVED",
    "SERVER_OVERSIZE",
    "SERVER_STALE",
    "SERVER_STORED",
    "SETTLE_CHUNK",
    "FolderCursor",
    "FolderSync",
    "ImapCursor",
    "ImapMessage",
    "ImapPoller",
    "ImapPollerState",
    "ImapPollers",
    "PollResult",
    "Settler",
    "UidBatch",
    "envelope_from_headers",
]
