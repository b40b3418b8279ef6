"""An opening's statements: the case inserted once and never read back, the look-alike
question asked for one column; and the look-alike rules those statements keep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select, update

from mailbridge.db import Database, utcnow
from mailbridge.pipeline.cases import insert_case
from mailbridge.tickets.models import STATUS_CLOSED, STATUS_IN_PROGRESS, Ticket
from tests.pipeline.helpers import case, deliver
from tests.support.daemon import opening_mail


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL the writer engine runs inside the block, whitespace folded."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def test_opening_inserts_its_case_once_and_reads_no_case_row(db, settings, rules) -> None:
    with statements(db) as seen:
        result = deliver(db, settings, rules, opening_mail().as_bytes())
    assert result.outcome == "ticket"
    assert sum(s.startswith("INSERT INTO tickets ") for s in seen) == 1
    case_reads = [s for s in seen if s.startswith("SELECT") and " FROM tickets" in s]
    # Only the look-alike questions (the id; the open subjects for a close one): no whole
    # row, no reload after the insert.
    assert case_reads and all(s.startswith(("SELECT tickets.id FROM tickets",
                                            "SELECT tickets.id, tickets.subject_key FROM"))
                              for s in case_reads)
    assert not any(s.startswith("UPDATE tickets") for s in seen)
    opened = case(db, result.ticket_number)  # type: ignore[arg-type]
    assert opened["status"] == "abierto" and opened["tenant_id"] == "TEN-1001"
    assert opened["sla"]["response_due_at"] is not None  # the clock set before the insert


def test_inserted_case_is_in_the_session_as_if_loaded(db) -> None:
    now = utcnow()
    with db.transaction() as session:
        ticket = Ticket(number=900, tenant_id="TEN-1001", priority="A", severity="ALTA",
                        status="abierto", subject="Caída", subject_key="caida",
                        sender="ana@compensar.example", sender_name=None, queue=None,
                        cc=["luis@compensar.example"], fields={"producto": "Correo"},
                        fields_raw={}, missing_fields=[], created_at=now, updated_at=now,
                        ack_due_at=now + timedelta(minutes=15))
        insert_case(session, ticket)
        assert ticket.id is not None
        assert session.get(Ticket, ticket.id) is ticket
        with statements(db) as seen:
            # Every column reads without a query, the unset ones as NULL.
            values = {c.key: getattr(ticket, c.key) for c in Ticket.__table__.columns}
        assert seen == []
        assert values["acked_at"] is None and values["resolved_at"] is None
        with statements(db) as seen:
            ticket.status = STATUS_IN_PROGRESS  # what a later stage changes is written
            session.flush()
        assert len(seen) == 1 and seen[0].startswith("UPDATE tickets SET status=")
    with db.reader() as session:
        stored = session.get(Ticket, ticket.id)
        assert stored is not None
        assert (stored.number, stored.status, stored.cc, stored.fields) == (
            900, STATUS_IN_PROGRESS, ["luis@compensar.example"], {"producto": "Correo"})
        assert stored.created_at == now and stored.acked_at is None


def test_look_alike_joins_the_newest_open_case_of_the_tenant_in_the_window(
    db, settings, rules
) -> None:
    subject = "TEN-1001 Caída del portal de pagos"
    first = deliver(db, settings, rules, opening_mail(subject=subject).as_bytes())
    assert first.outcome == "ticket"
    again = deliver(db, settings, rules, opening_mail(subject=f"RE: {subject}").as_bytes())
    assert (again.outcome, again.ticket_number) == ("reply:look-alike", first.ticket_number)
    other_tenant = deliver(db, settings, rules, opening_mail(
        subject="TEN-2002 Caída del portal de pagos", sender="maria@lafise.example",
        to="soporte-b@mesa.example").as_bytes(), mail_from="maria@lafise.example",
        rcpt="soporte-b@mesa.example")
    assert other_tenant.outcome == "ticket"  # the same words from another tenant: its own case
    with db.transaction() as session:  # closed: a new case
        session.execute(update(Ticket).where(Ticket.number == first.ticket_number)
                        .values(status=STATUS_CLOSED))
    second = deliver(db, settings, rules, opening_mail(subject=subject).as_bytes())
    assert second.outcome == "ticket" and second.ticket_number != first.ticket_number
    third = deliver(db, settings, rules, opening_mail(subject=subject).as_bytes())
    assert (third.outcome, third.ticket_number) == ("reply:look-alike", second.ticket_number)
    window = timedelta(hours=rules.desk.duplicate_window_hours)
    with db.transaction() as session:  # opened before the window: a new case
        session.execute(update(Ticket).where(Ticket.number == second.ticket_number)
                        .values(created_at=utcnow() - window - timedelta(minutes=1)))
    fourth = deliver(db, settings, rules, opening_mail(subject=subject).as_bytes())
    assert fourth.outcome == "ticket"
    with db.reader() as session:
        linked = session.scalars(select(Ticket.number).order_by(Ticket.number)).all()
    assert len(linked) == 4
