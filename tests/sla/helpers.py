"""SLA test helpers: the real pipeline and sweeps on a real SQLite database, at fake times."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

from sqlalchemy import select

from mailbridge.db import Database
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.pipeline import Pipeline, ProcessResult
from mailbridge.rules import Rules, parse_rules
from mailbridge.settings import Settings
from mailbridge.spool import new_inbound, store_inbound
from mailbridge.views import get_ticket, ticket_json
from tests.support.daemon import COMPLETE_BODY
from tests.support.rules import quiet_desk_text

REPO = Path(__file__).resolve().parents[2]
BOGOTA = ZoneInfo("America/Bogota")
SANTIAGO = ZoneInfo("America/Santiago")

# Two Profesional 5x8 tenants for office-hours clocks: Colombia (holidays, no DST) and
# Chile (DST ends on 5 April 2026). Inserted at the top of the demo's tenant list.
SLA_TENANTS = """\
  - id: TEN-8008
    name: Colsubsidio
    plan: profesional
    timezone: America/Bogota
    country: CO
    contacts: [pedro@colsubsidio.example]
    executive: ejecutivo.colsubsidio@mesa.example
  - id: TEN-9009
    name: Falabella Chile
    plan: profesional
    timezone: America/Santiago
    country: CL
    contacts: [carolina@falabella.example]
    executive: ejecutivo.falabella@mesa.example
"""


def sla_rules(text: str | None = None) -> Rules:
    """The demo rules.yaml with the SLA test tenants added."""
    text = text if text is not None else quiet_desk_text()
    assert text.count("\ntenants:\n") == 1
    return parse_rules(text.replace("\ntenants:\n", "\ntenants:\n" + SLA_TENANTS))


def local(zone: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


class FakeClock:
    """The injected `now`: tests move it; nothing sleeps."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> datetime:
        self.now = now
        return now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@contextmanager
def pipeline_clock(at: datetime) -> Iterator[None]:
    """The pipeline reads its `now` from mailbridge.pipeline.runner.utcnow: fake it."""
    with mock.patch("mailbridge.pipeline.runner.utcnow", return_value=at):
        yield


def deliver_at(
    db: Database,
    settings: Settings,
    rules: Rules,
    msg: EmailMessage,
    at: datetime,
    *,
    rcpt: str | list[str] = "soporte-a@mesa.example",
) -> ProcessResult:
    """Store `msg` as received (250) at `at` and run the real pipeline at that time."""
    rcpts = [rcpt] if isinstance(rcpt, str) else rcpt
    inbound = new_inbound(bytes(msg), channel="smtp", mail_from=msg["From"].addresses[0].addr_spec,
                          rcpt_tos=rcpts)
    inbound.received_at = at
    (inbound_id,) = store_inbound(db, [inbound])
    with pipeline_clock(at):
        result = Pipeline(db, settings, lambda: rules).process(inbound_id)
    assert result is not None
    return result


def opening(
    *,
    tenant: str = "TEN-1001",
    sender: str = "ana@compensar.example",
    name: str = "Ana Gómez",
    to: str = "soporte-a@mesa.example",
    subject: str = "Caída del servicio de correo",
    body: str = COMPLETE_BODY,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"{tenant} {subject}"
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg.set_content(body)
    return msg


def reply(
    number: int,
    *,
    sender: str,
    body: str,
    name: str = "",
    to: list[str] | None = None,
    cc: list[str] | None = None,
    subject: str = "Caída del servicio de correo",
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>" if name else sender
    msg["To"] = ", ".join(to or [f"soporte+{number}@mesa.example"])
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = f"RE: [Caso {number}] {subject}"
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg.set_content(body)
    return msg


def case(db: Database, number: int) -> dict[str, Any]:
    with db.reader() as session:
        ticket = get_ticket(session, number)
        assert ticket is not None, f"no case {number}"
        return ticket_json(session, ticket)


def outbox(db: Database, kind: str | None = None) -> list[OutboxMail]:
    with db.reader() as session:
        stmt = select(OutboxMail).order_by(OutboxMail.id)
        if kind is not None:
            stmt = stmt.where(OutboxMail.kind == kind)
        rows = list(session.scalars(stmt))
        for row in rows:
            _ = row.raw  # load the deferred column before the session closes
        return rows


def body_of(row: OutboxMail) -> str:
    message = email.message_from_bytes(row.raw, policy=email.policy.default)
    return message.get_content()  # type: ignore[no-any-return,attr-defined]


def events(db: Database, number: int, kind: str) -> list[dict[str, Any]]:
    return [e for e in case(db, number)["events"] if e["kind"] == kind]


def rewind_stored_jobs(database_url: str, next_run: datetime) -> list[str]:
    """Make every stored SLA job due at `next_run`, as downtime leaves them.

    Through APScheduler's job store: a job keeps its next run time both in its row and in
    its pickled state, and both must agree. Returns the job ids.
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    from mailbridge.db import make_engine
    from mailbridge.sla.jobs import JOBS_TABLE, ResilientJobStore

    engine = make_engine(database_url)
    store = ResilientJobStore(engine=engine, tablename=JOBS_TABLE)
    store.start(BackgroundScheduler(timezone=UTC), "default")  # never started itself
    try:
        ids = []
        for job in store.get_all_jobs():
            job._modify(next_run_time=next_run)
            store.update_job(job)
            ids.append(job.id)
        return ids
    finally:
        store.shutdown()


def race(database_url: str, db: Database, work) -> list[Any]:  # type: ignore[no-untyped-def]
    """Run `work(database)` at the same moment on two Database objects (two daemons on one
    database) and return both results."""
    import threading

    other = Database(database_url)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def run(database: Database) -> None:
        barrier.wait()
        results.append(work(database))

    threads = [threading.Thread(target=run, args=(d,)) for d in (db, other)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        other.dispose()
    assert len(results) == 2, "a racing worker failed"
    return results
