"""Case numbers: allocation from a counter row and the `[Caso N]` subject token."""

from __future__ import annotations

import re
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailbridge.tickets.models import Counter

CASE_COUNTER = "case_number"
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|rv|r|aw|wg|fw|fwd|tr|rif|sv|vs|reenviado|respuesta)\s*(?:\[\d+\])?\s*:\s*)+",
    re.IGNORECASE,
)


def next_case_number(session: Session) -> int:
    """Take the next number inside the caller's transaction (row lock on PostgreSQL)."""
    stmt = (
        update(Counter)
        .where(Counter.name == CASE_COUNTER)
        .values(value=Counter.value + 1)
        .returning(Counter.value)
    )
    value = session.execute(stmt).scalar_one_or_none()
    if value is not None:
        return int(value)
    # First case ever: the row is created here; a concurrent creator loses on the PK.
    session.add(Counter(name=CASE_COUNTER, value=1))
    session.flush()
    return 1


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
