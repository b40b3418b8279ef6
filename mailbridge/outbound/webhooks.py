"""Webhook events: an outbox like mail's, and the targets (MAILBRIDGE_WEBHOOKS) they go to.

`emit_event(session, "case.updated", ticket, ...)` writes one row in the caller's
transaction: the event exists exactly when what caused it committed. The sender
(`outbound/webhook_sender.py`) publishes it (fixes its JSON body, with the case as it
stands then) and delivers it to every target that subscribed to it, each target on its
own, with retries, signed with the target's secret.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, func, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from mailbridge.db import Base, Database, UTCDateTime, utcnow
from mailbridge.rules import ConfigProblem, nearest_line, yaml_line_index
from mailbridge.settings import is_loopback_host
from mailbridge.tickets.models import Ticket

EVENTS = (
    "case.created",
    "case.updated",
    "case.message",
    "case.sla_at_risk",
    "case.sla_breached",
    "case.closed",
    "mail.quarantined",
)
ENV_WEBHOOKS = "MAILBRIDGE_WEBHOOKS"
ENV_WEBHOOKS_FILE = "MAILBRIDGE_WEBHOOKS_FILE"

DELIVERY_PENDING = "pending"
DELIVERY_SENT = "sent"
DELIVERY_FAILED = "failed"


class WebhookEvent(Base):
    """Something a tool may want to hear of; `event_id` is the `id` receivers dedupe on."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    event: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Set once by the sender: the JSON every target receives, byte for byte, on every try.
    body: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class WebhookDelivery(Base):
    """One event to one target: its tries and where it stands."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("event_pk", "target"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("webhook_events.id"), index=True)
    target: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)


Index("ix_webhook_deliveries_target_state_next", WebhookDelivery.target,
      WebhookDelivery.state, WebhookDelivery.next_attempt_at)
_INSERT_EVENT = insert(WebhookEvent.__table__)


def _plain(value: Any) -> Any:
    """JSON-safe: datetimes as ISO 8601, everything else as JSON knows it or as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


EVENTS_INFO_KEY = "webhook_events"  # in Session.info: False when nobody receives events


def record_events(db: Database, targets: Sequence[WebhookTarget]) -> None:
    """Whether this process records events: only when some target is configured.

    With none, every event would be published to nobody: a row written in the mail's
    transaction, then updated and pruned by the publisher (about a tenth of the CPU a
    mail costs). Targets are read at start, so an event never recorded could not have
    been delivered. A process that never calls this (the CLI, tests) records them all.
    """
    db.session_info[EVENTS_INFO_KEY] = bool(targets)


def emit_event(session: Session, event: str, ticket: Ticket | None = None, *,
               at: datetime | None = None, **data: Any) -> None:
    """Record `event` (about `ticket`) in the caller's transaction: it is sent once that
    commits, and never if it rolls back. Nothing when no target is configured
    (`record_events`)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    if session.info.get(EVENTS_INFO_KEY) is False:
        return
    session.connection().execute(_INSERT_EVENT, [{
        "event_id": str(uuid.uuid4()), "event": event, "occurred_at": at or utcnow(),
        "ticket_id": ticket.id if ticket is not None else None, "data": _plain(data),
        "body": None, "published_at": None,
    }])


def emit_quarantined(session: Session, mail: Any) -> None:
    """`mail.quarantined` for a stored mail just put in quarantine (spool.quarantine's
    `then`): what ops need to find it, never its content."""
    error = (mail.error or "").strip().splitlines()
    emit_event(session, "mail.quarantined", inbound_id=mail.id, stage=mail.stage,
               error=error[-1][:500] if error else "", channel=mail.channel,
               mail_from=mail.mail_from, rcpt_tos=list(mail.rcpt_tos or []),
               message_id=mail.message_id, received_at=mail.received_at)


# -- targets ------------------------------------------------------------------------------


class WebhookConfigError(Exception):
    """The webhook targets are unreadable or invalid; `problems` says where."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class WebhookTarget(BaseModel):
    """One receiver: where events go, which ones, and where its signing secret is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    url: str
    secret_env: str | None = None
    secret_file: Path | None = None
    events: tuple[str, ...] = EVENTS
    timeout: float | None = Field(default=None, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be http(s)://host/…")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("an http:// url is only allowed on loopback: use https:// "
                             "(case data and signatures must not travel in clear)")
        return value

    @field_validator("events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> Any:
        if value in ("*", ["*"]):
            return EVENTS
        if isinstance(value, list | tuple):
            unknown = [e for e in value if e not in EVENTS]
            if unknown:
                raise ValueError(f"unknown event(s) {', '.join(map(str, unknown))} "
                                 f"(known: {', '.join(EVENTS)})")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookTarget:
        given = [n for n in ("secret_env", "secret_file") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of secret_env, secret_file (the secret itself "
                             f"never goes in this list; got {', '.join(given) or 'none'})")
        return self

    def wants(self, event: str) -> bool:
        return event in self.events

    def resolve_secret(self, environ: Mapping[str, str] | None = None) -> bytes:
        """The signing secret, read now (a rotated file or variable is picked up)."""
        environ = os.environ if environ is None else environ
        if self.secret_env is not None:
            value = environ.get(self.secret_env, "")
            if not value:
                raise ValueError(f"webhook {self.name}: environment variable "
                                 f"{self.secret_env} is not set")
            return value.encode()
        assert self.secret_file is not None
        try:
            value = self.secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"webhook {self.name}: cannot read secret_file "
                             f"{self.secret_file}: {exc.strerror or exc}") from None
        if not value:
            raise ValueError(f"webhook {self.name}: secret_file {self.secret_file} is empty")
        return value.encode()


def _parse_targets(text: str, source: str, *, yaml_ok: bool) -> list[WebhookTarget]:
    lines: dict[tuple[Any, ...], int] = {}
    try:
        if yaml_ok:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if node is not None:
                yaml_line_index(node, (), lines)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} (column {exc.colno})"
        raise WebhookConfigError([ConfigProblem(source, exc.lineno, "(syntax)", problem)]) \
            from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise WebhookConfigError([ConfigProblem(
            source, mark.line + 1 if mark is not None else None, "(syntax)", problem)]) from None
    prefix: tuple[Any, ...] = ()
    if isinstance(data, dict) and "webhooks" in data:
        data, prefix = data["webhooks"], ("webhooks",)
    if data is None:
        return []
    if not isinstance(data, list):
        raise WebhookConfigError([ConfigProblem(
            source, 1, "(top)", "expected a list of webhooks (or {webhooks: [...]})")])
    targets: list[WebhookTarget] = []
    problems: list[ConfigProblem] = []
    for index, item in enumerate(data):
        try:
            targets.append(WebhookTarget.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                loc = (*prefix, index, *err["loc"])
                problems.append(ConfigProblem(source, nearest_line(lines, loc),
                                              ".".join(str(p) for p in loc),
                                              err["msg"].removeprefix("Value error, ")))
    names = [t.name for t in targets]
    for index, name in enumerate(names):
        if name in names[:index]:
            loc = (*prefix, index, "name")
            problems.append(ConfigProblem(source, nearest_line(lines, loc),
                                          ".".join(map(str, loc)),
                                          f"duplicate webhook name {name!r}"))
    if problems:
        raise WebhookConfigError(problems)
    return targets


def load_webhook_targets(value: str | None = None, *, path: str | Path | None = None,
                         ) -> list[WebhookTarget]:
    """The configured targets ([] when none): `value` is MAILBRIDGE_WEBHOOKS (a JSON list),
    `path` MAILBRIDGE_WEBHOOKS_FILE (YAML or JSON); not both. Raises WebhookConfigError
    naming the place and key of every problem."""
    if value is not None and path is not None:
        raise WebhookConfigError([ConfigProblem(
            ENV_WEBHOOKS, None, "(source)", f"set either {ENV_WEBHOOKS} or {ENV_WEBHOOKS_FILE}, "
            "not both")])
    if value is not None:
        return _parse_targets(value, ENV_WEBHOOKS, yaml_ok=False)
    if path is None:
        return []
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebhookConfigError([ConfigProblem(str(file), None, "(file)",
                                                exc.strerror or str(exc))]) from None
    return _parse_targets(text, str(file), yaml_ok=True)


def webhook_report(session: Session, now: datetime, limit: int = 10) -> dict[str, Any]:
    """What `mailbridge status` and /metrics show of the webhooks: deliveries by target and
    state, the oldest waiting, and the newest that failed for good with their reason."""
    d, e = WebhookDelivery.__table__.c, WebhookEvent.__table__.c
    by_target: dict[str, dict[str, int]] = {}
    for target, state, count in session.execute(
            select(d.target, d.state, func.count()).group_by(d.target, d.state)):
        by_target.setdefault(target, {DELIVERY_PENDING: 0, DELIVERY_SENT: 0,
                                      DELIVERY_FAILED: 0})[state] = count
    oldest = session.scalar(select(func.min(d.created_at)).where(d.state == DELIVERY_PENDING))
    failures = session.execute(
        select(d.target, e.event, e.event_id, Ticket.number, d.attempts, d.last_status,
               d.last_error, d.created_at)
        .join(WebhookEvent.__table__, e.id == d.event_pk)
        .outerjoin(Ticket, Ticket.id == e.ticket_id)
        .where(d.state == DELIVERY_FAILED).order_by(d.id.desc()).limit(limit)
    ).all()
    return {
        "pending": sum(t[DELIVERY_PENDING] for t in by_target.values()),
        "failed": sum(t[DELIVERY_FAILED] for t in by_target.values()),
        "unpublished": session.scalar(
            select(func.count()).select_from(WebhookEvent).where(e.published_at.is_(None))) or 0,
        "oldest_pending_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "by_target": by_target,
        "recent_failures": [
            {"target": f.target, "event": f.event, "id": f.event_id, "case": f.number,
             "attempts": f.attempts, "last_status": f.last_status,
             "error": (f.last_error or "")[:300], "created_at": f.created_at.isoformat()}
            for f in failures
        ],
    }
