"""Case numbers: allocation from a counter row and the `[Caso N]` subject token."""

from __future__ import annotations

import re
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailbridge.tickets.models import Counter

CASE_COUNTER = "case_number"
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|rv|r|aw|wg|fw|fwd|tr|rif|sv|vs|reenviado|respuesta)\s*(?:\[\d+\])?\s*:\s*)+",
    re.IGNORECASE,
)


# On the table, not the mapped class: no ORM session synchronisation to do; built once.
_TAKE_CASE_NUMBER = (
    update(Counter.__table__)
    .where(Counter.__table__.c.name == CASE_COUNTER)
    .values(value=Counter.__table__.c.value + 1)
    .returning(Counter.__table__.c.value)
)


def next_case_number(session: Session) -> int:
    """Take the next number inside the caller's transaction (row lock on PostgreSQL)."""
    stmt = _TAKE_CASE_NUMBER
    value = session.connection().execute(stmt).scalar_one_or_none()
    if value is not None:
        return int(value)
    # First case ever: create the row without racing another worker doing the same
    # (INSERT … ON CONFLICT DO NOTHING on both backends), then take the number.
    dialect = session.get_bind().dialect.name
    insert_fn = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert_fn(Counter).values(name=CASE_COUNTER, value=0).on_conflict_do_nothing()
    )
    return int(session.execute(stmt).scalar_one())


def current_case_number(session: Session) -> int:
    return session.scalar(select(Counter.value).where(Counter.name == CASE_COUNTER)) or 0


@lru_cache(maxsize=8)
def _token_re(token: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*{re.escape(token)}\s*#?\s*(\d{{1,12}})\s*\]", re.IGNORECASE)


def strip_reply_prefixes(subject: str) -> str:
    return _PREFIX_RE.sub("", subject or "").strip()


def case_subject(token: str, number: int, subject: str) -> str:
    """`[Caso N] subject`, without stacking tokens or reply prefixes."""
    rest = _token_re(token).sub(" ", strip_reply_prefixes(subject))
    rest = strip_reply_prefixes(" ".join(rest.split()))
    return f"[{token} {number}] {rest}".strip()
