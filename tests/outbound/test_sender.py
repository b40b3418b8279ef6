"""The outbox sender against a real SMTP sink: what it records for each outcome.

Sent, refused for good, deferred, given up, taken by someone else, and the
accepted-marker that keeps a crash or a failed commit from sending a mail twice
(SQLite); the same recording on PostgreSQL, where each row is locked while it is sent.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import REGISTRY
from sqlalchemy import insert, select, update
from sqlalchemy.exc import OperationalError

from mailbridge.db import Database, utcnow
from mailbridge.outbound.outbox import STATE_FAILED, STATE_PENDING, STATE_SENT, OutboxMail
from mailbridge.outbound.sender import OutboxSender
from mailbridge.settings import Settings
from mailbridge.tickets.models import Ticket, TicketEvent
from tests.support.sink import Received, SmtpSink


class _Relay:
    """A sink handler: 550 for recipients named `rechazo…`, 451 for `demora…`."""

    def __init__(self) -> None:
        import threading

        self.received: list[Received] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.startswith("rechazo"):
            return "550 5.1.1 no such user"
        if address.startswith("demora"):
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                          envelope.original_content or b""))
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.handler = _Relay()  # type: ignore[assignment]
    sink.start()
    yield sink
    sink.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sender(db: Database, settings: Settings, port: int, **changes: Any) -> OutboxSender:
    return OutboxSender(db, settings.model_copy(update={"relay": f"127.0.0.1:{port}", **changes}))


_numbers = iter(range(1, 1_000_000))


def add_case(db: Database, *, acked: bool = False) -> int:
    now = utcnow()
    number = next(_numbers)
    with db.transaction() as session:
        ticket = Ticket(number=number, tenant_id="TEN-1001", priority="A", severity="ALTA",
                        status="abierto", subject=f"Caso {number}", sender="ana@compensar.example",
                        created_at=now, updated_at=now, ack_due_at=now + timedelta(minutes=15),
                        acked_at=now - timedelta(days=1) if acked else None)
        session.add(ticket)
        session.flush()
        return ticket.id


def queue(db: Database, ticket_id: int | None, *, kind: str = "ack",
          to: tuple[str, ...] = ("ana@compensar.example",), tag: str = "") -> str:
    message_id = f"<out-{next(_numbers)}{tag}@mesa.example>"
    raw = (f"From: soporte@mesa.example\r\nTo: {', '.join(to)}\r\nMessage-ID: {message_id}\r\n"
           f"Subject: prueba\r\n\r\nHola\r\n").encode()
    now = utcnow()
    with db.transaction() as session:
        session.execute(insert(OutboxMail.__table__), [{
            "created_at": now, "kind": kind, "ticket_id": ticket_id, "inbound_id": None,
            "trigger_received_at": now - timedelta(seconds=2), "mail_from": "soporte@mesa.example",
            "rcpt_tos": list(to), "message_id": message_id, "subject": "prueba", "raw": raw,
            "state": STATE_PENDING, "attempts": 0, "next_attempt_at": now,
        }])
    return message_id


def rows(db: Database) -> dict[str, dict[str, Any]]:
    table = OutboxMail.__table__.c
    with db.reader() as session:
        found = session.execute(select(table.message_id, table.state, table.attempts,
                                       table.last_error, table.sent_at, table.next_attempt_at)
                                ).all()
    return {r.message_id: r._asdict() for r in found}


def acked_at(db: Database, ticket_id: int) -> Any:
    with db.reader() as session:
        return session.scalar(select(Ticket.acked_at).where(Ticket.id == ticket_id))


def events(db: Database, kind: str) -> list[dict[str, Any]]:
    with db.reader() as session:
        return [e.data for e in session.scalars(
            select(TicketEvent).where(TicketEvent.kind == kind).order_by(TicketEvent.id))]


def outbound_count(kind: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("mailbridge_outbound_total",
                                     {"kind": kind, "outcome": outcome}) or 0.0


def test_sent_mail_is_recorded_and_the_ack_marks_its_case(db, settings, relay) -> None:
    first, second, already = add_case(db), add_case(db), add_case(db, acked=True)
    ids = [queue(db, first), queue(db, second, kind="notice", to=("ana@compensar.example",
                                                                   "luis@compensar.example")),
           queue(db, already), queue(db, None, kind="reply")]
    before = outbound_count("ack", "sent")
    previous_ack = acked_at(db, already)
    started = utcnow()
    result = _sender(db, settings, relay.port).send_due()
    assert (result.sent, result.deferred, result.failed, result.skipped) == (4, 0, 0, 0)
    assert [r.message["Message-ID"] for r in relay.received] == ids
    assert relay.received[1].rcpt_tos == ["ana@compensar.example", "luis@compensar.example"]
    assert relay.received[0].mail_from == "soporte@mesa.example"
    for row in rows(db).values():
        assert (row["state"], row["attempts"], row["last_error"]) == (STATE_SENT, 1, None)
        assert row["sent_at"] >= started
    assert acked_at(db, first) >= started
    assert acked_at(db, second) is None  # only an ack marks the case acknowledged
    assert acked_at(db, already) == previous_ack  # the first ack's time stays
    assert outbound_count("ack", "sent") == before + 2
    again = _sender(db, settings, relay.port).send_due()
    assert (again.sent, len(relay.received)) == (0, 4)


def test_refused_mail_fails_with_an_event_and_the_rest_goes(db, settings, relay) -> None:
    case = add_case(db)
    refused = queue(db, case, to=("rechazo@compensar.example",))
    orphan = queue(db, None, kind="reply", to=("rechazo@otro.example",))
    fine = queue(db, case)
    before = outbound_count("ack", "failed")
    result = _sender(db, settings, relay.port).send_due()
    assert (result.sent, result.failed, result.deferred) == (1, 2, 0)
    state = rows(db)
    assert state[refused]["state"] == STATE_FAILED and state[refused]["attempts"] == 1
    assert "550" in state[refused]["last_error"]
    assert state[orphan]["state"] == STATE_FAILED
    assert state[fine]["state"] == STATE_SENT
    failed = events(db, "outbound_failed")
    assert [e["message_id"] for e in failed] == [refused]  # the case's mail only
    assert "550" in failed[0]["error"]
    assert outbound_count("ack", "failed") == before + 1
    assert acked_at(db, case) is not None  # the second ack went


def test_relay_down_defers_one_row_and_pauses(db, settings) -> None:
    case = add_case(db)
    first, second = queue(db, case), queue(db, case)
    sender = _sender(db, settings, _free_port(), outbox_retry_base=60.0)
    before = utcnow()
    result = sender.send_due()
    assert (result.sent, result.deferred, result.failed) == (0, 1, 0)
    state = rows(db)
    assert state[first]["state"] == STATE_PENDING and state[first]["attempts"] == 1
    assert state[first]["last_error"]
    assert before + timedelta(seconds=47) <= state[first]["next_attempt_at"]
    assert state[first]["next_attempt_at"] <= utcnow() + timedelta(seconds=73)
    # Not hammered row by row: the second row was not tried, and nothing is until the pause.
    assert state[second]["attempts"] == 0 and state[second]["last_error"] is None
    assert sender.paused_until > 0
    assert sender.send_due().deferred == 0 and rows(db)[second]["attempts"] == 0
    assert acked_at(db, case) is None


def test_temporary_refusal_is_deferred_then_given_up(db, settings, relay) -> None:
    queue(db, None, kind="reply", to=("demora@compensar.example",))
    sender = _sender(db, settings, relay.port, outbox_max_attempts=2, outbox_retry_base=0.0)
    assert sender.send_due().deferred == 1
    (row,) = rows(db).values()
    assert (row["state"], row["attempts"]) == (STATE_PENDING, 1) and "451" in row["last_error"]
    sender.paused_until = 0.0
    assert sender.send_due().deferred == 1  # the last try: given up, not a refusal event
    (row,) = rows(db).values()
    assert (row["state"], row["attempts"]) == (STATE_FAILED, 2)
    assert events(db, "outbound_failed") == []
    assert relay.received == []


class _TakenOnTheWay:
    """A transport that lets another writer record the mail as sent while it is sent."""

    def __init__(self, db: Database, inner: Any, message_id: str) -> None:
        self.db, self.inner, self.message_id = db, inner, message_id

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def release(self) -> None:
        self.inner.release()

    def expire(self) -> float | None:
        return self.inner.expire()  # type: ignore[no-any-return]

    def send(self, mail_from: str, rcpt_tos: list[str], raw: bytes, message_id: str) -> None:
        self.inner.send(mail_from, rcpt_tos, raw, message_id)
        if message_id == self.message_id:
            with self.db.transaction() as session:
                session.execute(update(OutboxMail.__table__)
                                .where(OutboxMail.__table__.c.message_id == message_id)
                                .values(state=STATE_SENT, attempts=7))


def test_a_row_done_by_someone_else_meanwhile_is_skipped(db, settings, relay) -> None:
    if not db.is_sqlite:
        pytest.skip("on PostgreSQL the row is locked while it is sent")
    case = add_case(db)
    taken, mine = queue(db, case), queue(db, case)
    sender = _sender(db, settings, relay.port)
    sender.transport = _TakenOnTheWay(db, sender.transport, taken)  # type: ignore[assignment]
    result = sender.send_due()
    assert (result.sent, result.skipped) == (1, 1)
    state = rows(db)
    assert (state[taken]["state"], state[taken]["attempts"]) == (STATE_SENT, 7)  # untouched
    assert (state[mine]["state"], state[mine]["attempts"]) == (STATE_SENT, 1)


def test_marker_names_accepted_mail_which_is_recorded_not_resent(db, settings, relay) -> None:
    if not db.is_sqlite:
        pytest.skip("the accepted-marker is the SQLite sender's")
    case = add_case(db)
    accepted, other = queue(db, case), queue(db, case, kind="notice")
    sender = _sender(db, settings, relay.port)
    assert sender.accepted is not None
    sender.accepted.add(accepted)  # as if the process died after the relay's 250
    result = sender.send_due()
    assert result.sent == 1
    assert [r.message["Message-ID"] for r in relay.received] == [other]
    state = rows(db)
    assert (state[accepted]["state"], state[accepted]["attempts"]) == (STATE_SENT, 1)
    assert acked_at(db, case) is not None
    assert sender.accepted.get() == []
    # A new sender on the same data dir finds the marker empty.
    assert _sender(db, settings, relay.port).accepted.get() == []  # type: ignore[union-attr]


def test_failed_commit_does_not_send_again(db, settings, relay, monkeypatch) -> None:
    if not db.is_sqlite:
        pytest.skip("the accepted-marker is the SQLite sender's")
    case = add_case(db)
    ids = [queue(db, case), queue(db, None, kind="reply")]
    sender = _sender(db, settings, relay.port)
    real = Database.transaction

    @contextlib.contextmanager
    def locked(self: Database) -> Iterator[Any]:
        raise OperationalError("COMMIT", {}, Exception("database is locked"))
        yield  # pragma: no cover

    monkeypatch.setattr(Database, "transaction", locked)
    with pytest.raises(OperationalError):
        sender.send_due()
    monkeypatch.setattr(Database, "transaction", real)
    assert {r["state"] for r in rows(db).values()} == {STATE_PENDING}
    assert sorted(sender.accepted.get()) == sorted(ids)  # type: ignore[union-attr]
    result = sender.send_due()
    assert result.sent == 0
    assert len(relay.received) == 2  # each once
    assert {(r["state"], r["attempts"]) for r in rows(db).values()} == {(STATE_SENT, 1)}
    assert acked_at(db, case) is not None
    assert sender.accepted.get() == []  # type: ignore[union-attr]


def test_due_time_and_limit_are_respected(db, settings, relay) -> None:
    case = add_case(db)
    later = queue(db, case)
    with db.transaction() as session:
        session.execute(update(OutboxMail.__table__)
                        .where(OutboxMail.__table__.c.message_id == later)
                        .values(next_attempt_at=utcnow() + timedelta(hours=1)))
    now_ids = [queue(db, None, kind="reply") for _ in range(5)]
    sender = _sender(db, settings, relay.port)
    assert sender.send_due(limit=3).sent == 3
    assert sender.send_due(limit=3).sent == 2
    assert [r.message["Message-ID"] for r in relay.received] == now_ids
    assert rows(db)[later]["state"] == STATE_PENDING
    assert 0.05 <= sender._idle_wait() <= settings.worker_poll_interval


def test_postgresql_row_locked_by_another_worker_is_skipped(db, settings, relay) -> None:
    if db.is_sqlite:
        pytest.skip("SKIP LOCKED is the PostgreSQL sender's claim")
    case = add_case(db)
    busy, free = queue(db, case), queue(db, case)
    table = OutboxMail.__table__.c
    with db.engine.connect() as other, other.begin():
        # Another worker is sending `busy`: it holds the row's lock until its commit.
        other.execute(select(table.id).where(table.message_id == busy).with_for_update())
        result = _sender(db, settings, relay.port).send_due()
        # The chunk is locked with SKIP LOCKED: the busy row is not even read.
        assert result.sent == 1
    assert [r.message["Message-ID"] for r in relay.received] == [free]
    state = rows(db)
    assert (state[busy]["state"], state[busy]["attempts"]) == (STATE_PENDING, 0)
    assert (state[free]["state"], state[free]["attempts"]) == (STATE_SENT, 1)


def test_sqlite_one_sender_per_database_file(db, settings, relay) -> None:
    """Two daemons on one SQLite file: the SQLite sender sends outside any transaction,
    so both could read a due row and send it (a duplicate escalation was seen under load
    in tests/sla/test_daemon_sla.py). The one holding the file lock sends; the other
    leaves the round to it."""
    if not db.is_sqlite:
        pytest.skip("the PostgreSQL sender locks each row (SKIP LOCKED)")
    from mailbridge.db import Database, ProcessLock

    case = add_case(db)
    message_id = queue(db, case)
    other = ProcessLock(db.sqlite_sender_lock.path)  # another daemon's, mid-send
    assert other.try_acquire()
    second = Database(db.url)
    try:
        result = _sender(second, settings, relay.port).send_due()
        assert (result.sent, len(relay.received)) == (0, 0)
        assert rows(db)[message_id]["state"] == STATE_PENDING
        other.release()
        result = _sender(second, settings, relay.port).send_due()
        assert result.sent == 1
        assert [r.message["Message-ID"] for r in relay.received] == [message_id]
    finally:
        other.release()
        second.dispose()


def test_sender_thread_outlives_a_database_outage(db, settings, relay, monkeypatch) -> None:
    """A poll during the outage fails both the pass and the due-time lookup; the thread
    must still be there to send once the database is back."""
    import threading
    import time

    sender = _sender(db, settings, relay.port, worker_poll_interval=0.05)
    real = Database.reader
    gone = threading.Event()
    gone.set()
    polled_while_gone = threading.Event()

    @contextlib.contextmanager
    def unreachable(self: Database) -> Iterator[Any]:
        if gone.is_set():
            polled_while_gone.set()
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        with real(self) as session:
            yield session

    monkeypatch.setattr(Database, "reader", unreachable)
    sender.start()
    try:
        assert polled_while_gone.wait(5)
        time.sleep(0.2)  # several polls fail
        gone.clear()
        message_id = queue(db, None, kind="reply")
        sender.wakeup.set()
        relay.wait_for(1, timeout=5)
        assert relay.received[0].message["Message-ID"] == message_id
    finally:
        sender.stop(timeout=5)
