"""An opening's statements: the case inserted once and never read back, the look-alike
question asked for one column; and the look-alike rules those statements keep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from mailbridge.db import Database, utcnow
from mailbridge.pipeline.cases import insert_case
from mailbridge.tickets.models import STATUS_CLOSED, STATUS_IN_PROGRESS, Ticket
from tests.pipeline.helpers import case, deliver
from tests.support.daemon import opening_mail
from tests.support.sql import sqlite_steps, statements


def test_opening_inserts_its_case_once_and_reads_no_case_row(db, settings, rules) -> None:
    with statements(db, writer_only=True) as seen:
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
        with statements(db, writer_only=True) as seen:
            # Every column reads without a query, the unset ones as NULL.
            values = {c.key: getattr(ticket, c.key) for c in Ticket.__table__.columns}
        assert seen == []
        assert values["acked_at"] is None and values["resolved_at"] is None
        with statements(db, writer_only=True) as seen:
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


def _open_cases(db: Database, count: int, first_number: int) -> None:
    """`count` open cases of TEN-1001 opened in the last two days, each about its own
    order (bulk): what a busy tenant has open while a new mail arrives."""
    now = utcnow()
    rows = []
    for k in range(count):
        at = now - timedelta(hours=48) + timedelta(seconds=k)
        number = first_number + k
        rows.append(dict(
            number=number, tenant_id="TEN-1001", priority="B", severity="MEDIA",
            status="abierto", subject=f"Pedido {number} demorado", subject_key=f"pedido {number}",
            sender="ana@compensar.example", cc=[], cc_held=[], fields={}, fields_raw={},
            missing_fields=[], created_at=at, updated_at=at,
            ack_due_at=at + timedelta(minutes=15), acked_at=at + timedelta(seconds=3),
        ))
    with db.transaction() as session:
        session.execute(insert(Ticket.__table__), rows)


def test_the_look_alike_check_reads_the_newest_open_cases_not_all_of_them(
    db, settings, rules
) -> None:
    """Issue 21.3: an opening compares its subject with the newest 50 open cases of its
    tenant, read newest first through ix_tickets_open_tenant_created. Ten times more open
    cases cost an opening next to nothing more (before: every open case of the tenant was
    read and sorted, for every new mail)."""
    if not db.is_sqlite:
        pytest.skip("counts SQLite's steps; PostgreSQL plans the same index")
    deliver(db, settings, rules, opening_mail(subject="TEN-1001 Consulta general").as_bytes())
    _open_cases(db, 200, 10_000)
    with sqlite_steps(db) as small:
        first = deliver(db, settings, rules, opening_mail(
            subject="TEN-1001 Falla al sincronizar el inventario de bodega").as_bytes())
    _open_cases(db, 2000, 20_000)
    with sqlite_steps(db) as large:
        second = deliver(db, settings, rules, opening_mail(
            subject="TEN-1001 Error al exportar las facturas del mes").as_bytes())
    assert (first.outcome, second.outcome) == ("ticket", "ticket")
    assert large[0] < small[0] * 1.5 + 5, (small, large)
    # Still found when there is one among them: a close subject joins its case.
    again = deliver(db, settings, rules, opening_mail(
        subject="TEN-1001 Errores al exportar facturas del mes").as_bytes())
    assert (again.outcome, again.ticket_number) == ("reply:look-alike", second.ticket_number)
