"""Who may use the HTTP API and the board: API tokens and board sessions, stored hashed.

A token is shown once, when `mailbridge api-token create NAME` makes it; the database
keeps only its SHA-256 (a token is 32 random bytes: a slow hash adds nothing against
guessing, and a stolen table gives no token). A board session is the same: a random
cookie value, kept hashed, tied to the token that logged in, so revoking the token ends
its sessions. A read-only token reads; only a full token writes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from mailbridge.db import Base, UTCDateTime, utcnow

TOKEN_PREFIX = "mbt_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class ApiToken(Base):
    """One token: its name (recorded on every write it makes), its hash, what it may do."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BoardSession(Base):
    """A browser logged in to the board with a token; the cookie's value is kept hashed."""

    __tablename__ = "board_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the token's name and whether it may write."""

    token_id: int
    name: str
    read_only: bool


class TokenError(ValueError):
    """A token cannot be made or found as asked (the message says why)."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def create_token(session: Session, name: str, *, read_only: bool = False,
                 now: datetime | None = None) -> str:
    """Make a token and return it: the only time it is seen in clear."""
    if not NAME_RE.match(name):
        raise TokenError(f"token name {name!r}: letters, digits, '.', '_' or '-', at most 64")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists (revoke it first)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=_digest(token), read_only=read_only,
                         created_at=now or utcnow()))
    session.flush()
    return token


def list_tokens(session: Session) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "read_only": t.read_only, "created_at": t.created_at.isoformat(),
         "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None}
        for t in session.scalars(select(ApiToken).order_by(ApiToken.name))
    ]


def revoke_token(session: Session, name: str) -> bool:
    """Remove the token and end its board sessions; False when there is none by that name."""
    token_id = session.scalar(select(ApiToken.id).where(ApiToken.name == name))
    if token_id is None:
        return False
    session.execute(delete(BoardSession).where(BoardSession.token_id == token_id))
    session.execute(delete(ApiToken).where(ApiToken.id == token_id))
    return True


def find_token(session: Session, token: str) -> Caller | None:
    """The caller a bearer token stands for, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = session.execute(
        select(ApiToken.id, ApiToken.name, ApiToken.read_only)
        .where(ApiToken.token_hash == _digest(token))
    ).first()
    return Caller(row[0], row[1], row[2]) if row is not None else None


def mark_used(session: Session, token_id: int, now: datetime) -> None:
    token = session.get(ApiToken, token_id)
    if token is not None:
        token.last_used_at = now


def open_board_session(session: Session, caller: Caller, *, lifetime: timedelta,
                       now: datetime | None = None) -> str:
    """A new board session for the caller; returns the cookie value (shown only here)."""
    now = now or utcnow()
    value = secrets.token_urlsafe(32)
    session.execute(delete(BoardSession).where(BoardSession.expires_at < now))
    session.add(BoardSession(session_hash=_digest(value), token_id=caller.token_id,
                             created_at=now, expires_at=now + lifetime))
    return value


def find_board_session(session: Session, value: str, now: datetime) -> Caller | None:
    """The caller a board cookie stands for while it lasts, or None."""
    if not value or len(value) > 200:
        return None
    row = session.execute(
        select(ApiToken.id, ApiToken.name, ApiToken.read_only)
        .join(BoardSession, BoardSession.token_id == ApiToken.id)
        .where(BoardSession.session_hash == _digest(value), BoardSession.expires_at > now)
    ).first()
    return Caller(row[0], row[1], row[2]) if row is not None else None


def close_board_session(session: Session, value: str) -> None:
    session.execute(delete(BoardSession).where(BoardSession.session_hash == _digest(value)))


def csrf_token(session_value: str) -> str:
    """The CSRF token of a board session: derived from its secret cookie, so a page of
    another site (which cannot read the cookie) cannot know it."""
    return hashlib.sha256(b"mailbridge-csrf:" + session_value.encode()).hexdigest()
