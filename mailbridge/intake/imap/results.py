"""What an IMAP cycle did and counted (PollResult, Prometheus series), and what its parts share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

IMAP_CONNECTED = Gauge("mailbridge_imap_connected", "1 while the account is connected", ["account"])
IMAP_AUTH_FAILED = Gauge(
    "mailbridge_imap_auth_failed",
    "1 while the account cannot log in (password or OAuth token refresh failed)",
    ["account"],
)
IMAP_LAST_OK = Gauge(
    "mailbridge_imap_last_ok_timestamp_seconds", "End of the last complete sync", ["account"]
)
IMAP_MESSAGES = Counter(
    "mailbridge_imap_messages_total",
    "Messages seen by the IMAP poller",
    ["account", "outcome"],  # stored | duplicate | oversize | moved | flagged
)
IMAP_ERRORS = Counter("mailbridge_imap_errors_total", "Failed IMAP cycles", ["account", "kind"])


@dataclass
class PollResult:
    """What one sync-and-settle cycle did."""

    stored: int = 0
    duplicates: int = 0
    oversize: int = 0
    moved: int = 0
    flagged: int = 0
    uidvalidity_changed: bool = False

    def __add__(self, other: PollResult) -> PollResult:
        return PollResult(
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.oversize + other.oversize,
            self.moved + other.moved,
            self.flagged + other.flagged,
            self.uidvalidity_changed or other.uidvalidity_changed,
        )


class ReconnectError(Exception):
    """Raised inside a cycle to force a reconnect."""


def count_received(count: int) -> None:
    """The intake-wide counter of stored mail, for the IMAP channel."""
    try:
        from mailbridge.metrics import RECEIVED
    except ImportError:  # pragma: no cover
        return
    RECEIVED.labels("imap", "stored").inc(count)


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """`items` in consecutive lists of at most `size`."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
