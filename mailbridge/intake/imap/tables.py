"""The IMAP intake's tables: each message seen by (UIDVALIDITY, UID), and each folder's cursor."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailbridge.db import Base, UTCDateTime, utcnow

# ImapMessage.server_state: what we did to the message on the server.
SERVER_STORED = "stored"  # in the spool, still untouched in the folder
SERVER_MOVED = "moved"  # processed, moved to processed_folder
SERVER_FLAGGED = "flagged"  # quarantined, quarantine flag added, left in place
SERVER_STALE = "stale"  # UIDVALIDITY changed before we settled it; re-sync maps it anew
SERVER_OVERSIZE = "oversize"  # over max_message_size: not stored, flagged and left


class ImapMessage(Base):
    """One message seen in an account's folder, by (UIDVALIDITY, UID), and its fate."""

    __tablename__ = "imap_messages"
    __table_args__ = (UniqueConstraint("account", "uidvalidity", "uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    # UIDs and UIDVALIDITY are unsigned 32-bit: too big for a signed INTEGER.
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(String(998))
    size: Mapped[int | None] = mapped_column(BigInteger)
    server_state: Mapped[str] = mapped_column(String(16), default=SERVER_STORED)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("ix_imap_messages_account_state", ImapMessage.account, ImapMessage.server_state)


class ImapCursor(Base):
    """Where an account's folder has been read up to; advanced with the stored rows."""

    __tablename__ = "imap_cursors"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    # UIDs up to baseline_uid were in the folder before we (re)started reading it:
    # they are taken by initial_sync ("initial") or by re-sync rules ("resync").
    baseline_uid: Mapped[int | None] = mapped_column(BigInteger)
    baseline_mode: Mapped[str | None] = mapped_column(String(16))
    watching_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
