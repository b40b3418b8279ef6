"""The webhook sender: publishes the events the transactions wrote, and delivers them.

One thread publishes: it fixes each new event's JSON body (`id`, `event`, `occurred_at`,
the case as it stands then, the event's `data`) and queues one delivery per target
that wants the event. One thread per target delivers: POST with
`X-Mailbridge-Signature: sha256=<hex HMAC-SHA256 of the body>`, success on any 2xx.
A failure (no answer, a timeout, a non-2xx, a redirect) retries that delivery with
exponential backoff and pauses only its own target (doubling while it keeps failing,
as the outbox pauses a dead relay), so a target that is down or slow never delays
another; after `webhook_retry_for` seconds a delivery is marked failed (`mailbridge
status`, `/metrics`), but never on its first try: an event that waited out an outage
of the daemon still gets its retry. Retries carry the same body, so the same `id`: receivers dedupe
on it. On PostgreSQL each delivery is locked while it is sent (several workers never
send it twice); on SQLite the write lock is never held across the network.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.db import Database, utcnow
from mailbridge.outbound.webhooks import (
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    DELIVERY_SENT,
    WebhookDelivery,
    WebhookEvent,
    WebhookTarget,
)
from mailbridge.settings import Settings
from mailbridge.workers import BackgroundLoop

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Mailbridge-Signature"
DescribeCase = Callable[[Session, int], "dict[str, Any] | None"]
_E = WebhookEvent.__table__.c
_D = WebhookDelivery.__table__.c


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: the signed body goes only where it was configured to go."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(target: WebhookTarget, body: bytes, *, event: str, event_id: str,
         timeout: float) -> tuple[int | None, str | None]:
    """POST one event; (HTTP status or None, why it failed or None)."""
    try:
        secret = target.resolve_secret()
    except ValueError as exc:
        return None, str(exc)
    # The url is http(s) only (WebhookTarget validates it): no file: or other schemes.
    request = urllib.request.Request(target.url, data=body, method="POST", headers={  # noqa: S310
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "mailbridge-webhooks/1",
        "X-Mailbridge-Event": event,
        "X-Mailbridge-Delivery": event_id,
        SIGNATURE_HEADER: sign(secret, body),
    })
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"HTTP {exc.code} {exc.reason}"[:300]
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return None, f"{type(exc).__name__}: {reason}"[:300]
    if 200 <= status < 300:
        return status, None
    return status, f"HTTP {status}"


class WebhookSender(BackgroundLoop):
    """Publishes new events; owns one delivery thread per target."""

    thread_name = "webhooks"

    def __init__(self, db: Database, settings: Settings, targets: Sequence[WebhookTarget],
                 describe_case: DescribeCase) -> None:
        super().__init__()
        self.db = db
        self.settings = settings
        self.targets = list(targets)
        self.describe_case = describe_case
        self.loops = {t.name: TargetLoop(db, settings, t) for t in self.targets}
        self._next_prune = 0.0

    def start(self) -> None:
        super().start()
        for loop in self.loops.values():
            loop.start()

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        for loop in self.loops.values():
            loop.stop(timeout)

    def _run(self) -> None:
        failed_passes = 0
        while True:
            stopping = self._stop.is_set()
            try:
                published = self.publish()
                if time.monotonic() >= self._next_prune:
                    self.prune()
                    self._next_prune = time.monotonic() + 3600
                failed_passes = 0
            except Exception:
                failed_passes += 1
                log.exception("webhook publication failed", extra={"failed_passes": failed_passes})
                published = 0
                if not stopping:
                    self.wakeup.wait(min(60.0, 0.5 * 2 ** min(failed_passes, 7)))
                    self.wakeup.clear()
                    continue
            if stopping:
                return  # one last pass ran after the stop: what the drain wrote is published
            if published:
                continue
            self.wakeup.wait(self.settings.worker_poll_interval)
            self.wakeup.clear()

    def publish(self, limit: int = 100) -> int:
        """Fix the body of the events not yet published and queue their deliveries."""
        with self.db.reader() as session:
            rows = session.execute(
                select(_E.id, _E.event_id, _E.event, _E.occurred_at, _E.ticket_id, _E.data)
                .where(_E.published_at.is_(None)).order_by(_E.id).limit(limit)
            ).all()
            work = []
            for pk, event_id, event, occurred_at, ticket_id, data in rows:
                wanted = [t.name for t in self.targets if t.wants(event)]
                body = None
                if wanted:
                    body = json.dumps({
                        "id": event_id, "event": event, "occurred_at": occurred_at.isoformat(),
                        "case": self.describe_case(session, ticket_id) if ticket_id else None,
                        "data": data or {},
                    }, ensure_ascii=False, separators=(",", ":"), default=str)
                work.append((pk, body, wanted))
        if not work:
            return 0
        now = utcnow()
        woken: set[str] = set()
        with self.db.transaction() as session:
            for pk, body, wanted in work:
                # The WHERE is the guard: another worker may have published it meanwhile.
                done = session.execute(
                    update(WebhookEvent.__table__)
                    .where(_E.id == pk, _E.published_at.is_(None))
                    .values(body=body, published_at=now)
                )
                if done.rowcount != 1 or not wanted:  # type: ignore[attr-defined]
                    continue
                session.execute(insert(WebhookDelivery.__table__), [
                    {"event_pk": pk, "target": name, "state": DELIVERY_PENDING, "attempts": 0,
                     "created_at": now, "next_attempt_at": now}
                    for name in wanted
                ])
                woken.update(wanted)
        for name in woken:
            self.loops[name].wakeup.set()
        return len(work)

    def prune(self) -> int:
        """Forget events finished longer than `webhook_retention` ago; returns how many."""
        cutoff = utcnow() - timedelta(seconds=self.settings.webhook_retention)
        old = select(_E.id).where(_E.published_at < cutoff)
        with self.db.transaction() as session:
            session.execute(delete(WebhookDelivery.__table__).where(
                _D.event_pk.in_(old), _D.state != DELIVERY_PENDING))
            gone = session.execute(delete(WebhookEvent.__table__).where(
                _E.published_at < cutoff,
                ~exists().where(_D.event_pk == _E.id)))
        return int(gone.rowcount or 0)  # type: ignore[attr-defined]


class TargetLoop(BackgroundLoop):
    """Delivers one target's events, oldest first; its failures pause only itself."""

    def __init__(self, db: Database, settings: Settings, target: WebhookTarget) -> None:
        super().__init__()
        self.thread_name = f"webhook-{target.name}"
        self.db = db
        self.settings = settings
        self.target = target
        self.timeout = target.timeout or settings.webhook_timeout
        self.paused_until = 0.0
        self.failures = 0  # in a row; the pause doubles with each

    def _run(self) -> None:
        failed_passes = 0
        while not self._stop.is_set():
            try:
                worked = self.deliver_one()
                failed_passes = 0
            except Exception:
                failed_passes += 1
                log.exception("webhook delivery pass failed",
                              extra={"target": self.target.name, "failed_passes": failed_passes})
                self.wakeup.wait(min(60.0, 0.5 * 2 ** min(failed_passes, 7)))
                self.wakeup.clear()
                continue
            if worked and not self._paused():
                continue
            self.wakeup.wait(self._idle_wait())
            self.wakeup.clear()

    def _paused(self) -> bool:
        return time.monotonic() < self.paused_until

    def _idle_wait(self) -> float:
        poll = self.settings.worker_poll_interval
        pause = self.paused_until - time.monotonic()
        try:
            with self.db.reader() as session:
                due = session.execute(select(func.min(_D.next_attempt_at)).where(
                    _D.target == self.target.name, _D.state == DELIVERY_PENDING)).scalar()
        except Exception as exc:  # the database is away: the thread must outlive it
            log.warning("webhooks: next due time unknown", extra={"error": str(exc)[:300]})
            return poll
        if due is None:
            return max(0.05, min(poll, pause)) if pause > 0 else poll
        seconds = max((due - utcnow()).total_seconds(), pause)
        return max(0.05, min(seconds, poll))

    def _due(self) -> Any:
        return (
            select(_D.id, _D.attempts, _D.created_at, _E.event_id, _E.event, _E.body)
            .join(WebhookEvent.__table__, _E.id == _D.event_pk)
            .where(_D.target == self.target.name, _D.state == DELIVERY_PENDING,
                   _D.next_attempt_at <= utcnow())
            .order_by(_D.id).limit(1)
        )

    def deliver_one(self) -> bool:
        """Try the oldest due delivery of this target; False when none was due."""
        if self._paused():
            return False
        if self.db.is_sqlite:
            with self.db.reader() as session:
                row = session.execute(self._due()).first()
            if row is None:
                return False
            status, error = self._post(row)
            with self.db.transaction() as session:
                self._record(session, row, status, error)
            return True
        with self.db.transaction() as session:
            row = session.execute(self._due().with_for_update(
                skip_locked=True, of=WebhookDelivery.__table__)).first()
            if row is None:
                return False
            status, error = self._post(row)
            self._record(session, row, status, error)
        return True

    def _post(self, row: Any) -> tuple[int | None, str | None]:
        return post(self.target, (row.body or "").encode("utf-8"), event=row.event,
                    event_id=row.event_id, timeout=self.timeout)

    def _record(self, session: Session, row: Any, status: int | None,
                error: str | None) -> None:
        now = utcnow()
        tries = row.attempts + 1
        # The attempts in the WHERE are the guard: a try recorded meanwhile is not undone.
        guard = (_D.id == row.id, _D.state == DELIVERY_PENDING, _D.attempts == row.attempts)
        name = self.target.name
        if error is None:
            session.execute(update(WebhookDelivery.__table__).where(*guard).values(
                state=DELIVERY_SENT, sent_at=now, attempts=tries, last_status=status,
                last_error=None))
            metrics.WEBHOOK_DELIVERIES.labels(target=name, outcome="sent").inc()
            log.info("webhook delivered", extra={"target": name, "event": row.event,
                                                 "event_id": row.event_id, "attempts": tries})
            self.failures = 0
            return
        expired = (now - row.created_at).total_seconds() >= self.settings.webhook_retry_for
        if expired and tries >= 2:
            session.execute(update(WebhookDelivery.__table__).where(*guard).values(
                state=DELIVERY_FAILED, attempts=tries, last_status=status, last_error=error))
            metrics.WEBHOOK_DELIVERIES.labels(target=name, outcome="failed").inc()
            log.error("webhook failed for good", extra={
                "target": name, "event": row.event, "event_id": row.event_id,
                "attempts": tries, "error": error})
        else:
            delay = self._backoff(tries)
            session.execute(update(WebhookDelivery.__table__).where(*guard).values(
                attempts=tries, last_status=status, last_error=error,
                next_attempt_at=now + timedelta(seconds=delay)))
            metrics.WEBHOOK_DELIVERIES.labels(target=name, outcome="retried").inc()
            log.warning("webhook deferred", extra={
                "target": name, "event": row.event, "event_id": row.event_id,
                "attempts": tries, "error": error, "retry_in": round(delay, 2)})
        # The target rests (only it): doubling while it keeps failing, over at its next 2xx.
        self.failures += 1
        self.paused_until = time.monotonic() + self._backoff(self.failures)

    def _backoff(self, tries: int) -> float:
        base, most = self.settings.webhook_retry_base, self.settings.webhook_retry_max
        return min(most, base * 2 ** min(tries - 1, 20)) * random.uniform(0.8, 1.2)
