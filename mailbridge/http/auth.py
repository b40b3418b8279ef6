"""Who is asking: a bearer token (the API) or a board session cookie (the board)."""

from __future__ import annotations

import logging
import threading
import time

from mailbridge.db import Database, utcnow
from mailbridge.tokens import Caller, find_board_session, find_token, mark_used

log = logging.getLogger(__name__)

SESSION_COOKIE = "mb_session"
TOUCH_EVERY = 60.0  # seconds: last_used_at is written at most this often per token


class Guard:
    """Looks callers up (read-only sessions) and records when each token was last used,
    at most once a minute, so reads do not take SQLite's write lock on every request."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def bearer(self, header: str | None) -> Caller | None:
        """The caller of an `Authorization: Bearer <token>` header, or None."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        with self.db.reader() as session:
            caller = find_token(session, token.strip())
        if caller is not None:
            self._touch(caller)
        return caller

    def board(self, cookie: str | None) -> Caller | None:
        """The caller of a board session cookie while it lasts, or None."""
        if not cookie:
            return None
        with self.db.reader() as session:
            caller = find_board_session(session, cookie, utcnow())
        if caller is not None:
            self._touch(caller)
        return caller

    def _touch(self, caller: Caller) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(caller.token_id, -TOUCH_EVERY) < TOUCH_EVERY:
                return
            self._touched[caller.token_id] = now
        try:
            with self.db.transaction() as session:
                mark_used(session, caller.token_id, utcnow())
        except Exception as exc:  # a busy database must not refuse the request for this
            log.warning("token use not recorded", extra={"token": caller.name,
                                                          "error": str(exc)[:200]})
