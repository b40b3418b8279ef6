"""The sweeps' bounds: they read only cases that can be due, in chunks, and write only
what changes — and still do every due thing once, as walking every case did."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from mailbridge.db import Database
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.sla.escalation import ESCALATABLE_STATUSES, automatic_decision
from mailbridge.sla.sweep import (
    escalation_candidates,
    run_sweep,
    sweep_due_escalations,
    watch_acks,
    watch_responses,
)
from mailbridge.status import status_report
from mailbridge.tickets.models import Ticket
from tests.sla.helpers import (
    BOGOTA,
    REPO,
    deliver_at,
    events,
    local,
    opening,
    reply,
    sla_rules,
)
from tests.support.sql import sqlite_steps

OPENED = local(BOGOTA, 2026, 3, 21, 2, 0)  # Saturday 02:00, Bogotá


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return sla_rules()


@contextlib.contextmanager
def write_transactions(db: Database) -> Iterator[list[int]]:
    """Counts the write transactions opened inside the block."""
    opened: list[int] = []
    original = db.transaction

    @contextlib.contextmanager
    def counted() -> Iterator[Any]:
        opened.append(1)
        with original() as session:
            yield session

    db.transaction = counted  # type: ignore[method-assign]
    try:
        yield opened
    finally:
        db.transaction = original  # type: ignore[method-assign]


def due_by_walking_every_case(db: Database, rules, now) -> set[int]:  # type: ignore[no-untyped-def]
    """What the sweep used to do: ask `automatic_decision` about every open case."""
    with db.reader() as session:
        due = set()
        for ticket in session.scalars(
            select(Ticket).where(Ticket.status.in_(ESCALATABLE_STATUSES))
        ):
            tenant = rules.tenant(ticket.tenant_id)
            if automatic_decision(session, rules, ticket, tenant, now) is not None:
                due.add(ticket.id)
        return due


def test_chunked_sweep_escalates_every_due_case_once(db, settings, rules) -> None:
    for n in range(7):
        deliver_at(db, settings, rules, opening(subject=f"Caída del enlace {n}"),
                   OPENED + timedelta(minutes=n))
    at = OPENED + timedelta(hours=24, minutes=10)
    with write_transactions(db) as opened:
        assert sweep_due_escalations(db, rules, at, chunk=2) == 7
    assert len(opened) == 7  # one short write per escalation, none for the reading
    assert sweep_due_escalations(db, rules, at + timedelta(minutes=1), chunk=2) == 0
    assert [len(events(db, n, "escalated")) for n in range(1, 8)] == [1] * 7


def test_a_sweep_with_nothing_due_takes_no_write_lock(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    with db.transaction() as session:  # acknowledged in time
        session.execute(update(Ticket).values(acked_at=OPENED + timedelta(seconds=5)))
        session.execute(update(OutboxMail).values(state="sent"))
    with write_transactions(db) as opened:
        for kind in ("acks", "response", "escalation"):
            assert not any(run_sweep(kind, db, rules, OPENED + timedelta(minutes=30)).done.values())
    assert opened == []


def test_acks_and_breaches_are_claimed_in_chunks_each_once(db, settings, rules) -> None:
    for n in range(5):
        deliver_at(db, settings, rules, opening(subject=f"Sin respuesta {n}"),
                   OPENED + timedelta(minutes=n))
    later = OPENED + timedelta(days=2)
    with write_transactions(db) as opened:
        assert watch_acks(db, later, chunk=2) == 5
        assert watch_responses(db, later, chunk=2) == 5
    assert len(opened) == 6  # 3 + 3 chunks
    assert watch_acks(db, later, chunk=2) == 0 and watch_responses(db, later, chunk=2) == 0
    assert [len(events(db, n, "ack_late")) for n in range(1, 6)] == [1] * 5
    assert [len(events(db, n, "sla_breached")) for n in range(1, 6)] == [1] * 5


def test_an_ack_sent_between_the_read_and_the_claim_is_not_called_overdue(
    db, settings, rules
) -> None:
    deliver_at(db, settings, rules, opening(), OPENED)
    original = db.transaction

    @contextlib.contextmanager
    def sender_wins() -> Iterator[Any]:
        # The sender records the ack, in time, just before the sweep's write.
        with original() as session:
            session.execute(update(Ticket).values(acked_at=OPENED + timedelta(minutes=1)))
        with original() as session:
            yield session

    db.transaction = sender_wins  # type: ignore[method-assign]
    try:
        assert watch_acks(db, OPENED + timedelta(hours=1)) == 0
    finally:
        db.transaction = original  # type: ignore[method-assign]
    assert events(db, 1, "ack_late") == []


def test_candidates_include_every_case_the_walk_would_escalate(db, settings) -> None:
    """Hour by hour for twenty days: high and medium cases (medium escalates by itself
    here), premium and office-hours tenants, a Colombian holiday (23 March), Chile's DST
    change (5 April), desk updates midway. At each hour the sweep escalates exactly what
    asking every case would have, and the bounded query lists all of those."""
    text = (REPO / "rules.yaml").read_text(encoding="utf-8")
    rules = sla_rules(text.replace("automatic_severities: [URGENTE, ALTA]",
                                   "automatic_severities: [URGENTE, ALTA, MEDIA]"))
    start = local(BOGOTA, 2026, 3, 19, 16, 0)  # Thursday before the 23 March holiday
    chile = "TEN-9009", "carolina@falabella.example", "Carolina"
    colombia = "TEN-8008", "pedro@colsubsidio.example", "Pedro"
    openings = [  # (hours after start, tenant, address)
        (0, ("TEN-1001", "ana@compensar.example", "Ana"), "soporte-a@mesa.example"),
        (1, ("TEN-1001", "ana@compensar.example", "Ana"), "soporte-b@mesa.example"),
        (2, colombia, "soporte-b@mesa.example"),
        (3, colombia, "soporte-a@mesa.example"),
        (20, chile, "soporte-b@mesa.example"),
        (30, chile, "soporte-a@mesa.example"),
        (24 * 12, chile, "soporte-b@mesa.example"),  # 31 March: Good Friday, then DST ends
    ]
    staff_updates = {50: 1, 70: 3, 100: 2, 200: 5}  # hour → case number
    opened = 0
    for step in range(20 * 24):
        now = start + timedelta(hours=step)
        while opened < len(openings) and openings[opened][0] == step:
            _, (tenant, sender, name), address = openings[opened]
            deliver_at(db, settings, rules,
                       opening(tenant=tenant, sender=sender, name=name, to=address,
                               subject=f"Incidente {opened}"), now, rcpt=address)
            opened += 1
        if step in staff_updates:
            number = staff_updates[step]
            result = deliver_at(db, settings, rules,
                                reply(number, sender="carla@mesa.example",
                                      body="Seguimos en ello.", to=["soporte@mesa.example"]),
                                now, rcpt=f"soporte+{number}@mesa.example")
            assert result.outcome.startswith("reply:staff")
        expected = due_by_walking_every_case(db, rules, now)
        with db.reader() as session:
            listed = set(escalation_candidates(session, rules, now, limit=10_000))
        assert expected <= listed, (now, expected - listed)
        assert run_sweep("escalation", db, rules, now).done["escalated"] == len(expected)
    escalated = {n: len(events(db, n, "escalated")) for n in range(1, opened + 1)}
    assert opened == 7 and all(escalated.values()), escalated  # high and medium, every one
    assert all(escalated[n] >= 2 for n in (1, 4, 6)), escalated  # high: again after 24 h


def _add_history(db: Database, count: int, first_number: int) -> None:
    """`count` closed cases of past years, acknowledged and answered in time (bulk)."""
    start = OPENED - timedelta(days=700)
    tickets, acks = [], []
    for k in range(count):
        at = start + timedelta(minutes=k)
        number = first_number + k
        tickets.append(dict(
            number=number, tenant_id="TEN-1001", priority="B", severity="MEDIA",
            status="cerrado", subject=f"Caso antiguo {number}", subject_key=f"antiguo {number}",
            sender="ana@compensar.example", cc=[], cc_held=[], fields={}, fields_raw={},
            missing_fields=[], created_at=at, updated_at=at,
            ack_due_at=at + timedelta(minutes=15), acked_at=at + timedelta(seconds=3),
            response_started_at=at, response_at_risk_at=at + timedelta(hours=3),
            response_due_at=at + timedelta(hours=4), first_response_at=at + timedelta(hours=1),
            closed_at=at + timedelta(days=2),
        ))
    with db.transaction() as session:
        session.execute(insert(Ticket.__table__), tickets)
        ids = session.scalars(select(Ticket.id).where(Ticket.number >= first_number)).all()
        for ticket_id, row in zip(sorted(ids), tickets, strict=True):
            acks.append(dict(
                kind="ack", ticket_id=ticket_id, mail_from="soporte-a@mesa.example",
                rcpt_tos=["ana@compensar.example"], message_id=f"<ack-{ticket_id}@mesa.example>",
                subject="Caso", raw=b"-", state="sent", created_at=row["created_at"],
                next_attempt_at=row["created_at"], sent_at=row["acked_at"],
            ))
        session.execute(insert(OutboxMail.__table__), acks)


def test_a_sweep_round_does_not_read_the_closed_history(db, settings, rules) -> None:
    """Issue 21.2: the sweeps and `mailbridge status` find their few cases through partial
    indexes. Ten times more closed cases in the database cost a round next to nothing more
    (before: every watch walked every case: 1.6 s a round at a million cases)."""
    if not db.is_sqlite:
        pytest.skip("counts SQLite's steps; PostgreSQL plans the same indexes (EXPLAIN)")
    deliver_at(db, settings, rules, opening(subject="Sin acuse"), OPENED)  # due by now
    late = OPENED + timedelta(hours=5)

    def round_steps() -> tuple[int, int]:
        with sqlite_steps(db) as sweeps:
            for kind in ("acks", "response", "warnings", "escalation", "vendors"):
                run_sweep(kind, db, rules, late)
        with sqlite_steps(db) as status, db.reader() as session:
            report = status_report(session, counts=False)
        assert [entry["case"] for entry in report["acks"]["overdue"]] == [1]
        assert [entry["case"] for entry in report["sla"]["response_breached"]] == [1]
        return sweeps[0], status[0]

    run_sweep("acks", db, rules, late)
    run_sweep("response", db, rules, late)
    _add_history(db, 300, 10_000)
    small = round_steps()
    _add_history(db, 3000, 20_000)
    large = round_steps()
    for before, after in zip(small, large, strict=True):  # (sweeps, status) in 1000 steps
        assert after < before * 1.5 + 5, (small, large)
    # Still told once each: the open case's late ack and missed target, nothing historic.
    assert len(events(db, 1, "ack_late")) == 1 and len(events(db, 1, "sla_breached")) == 1


def test_an_ack_sent_late_and_an_answer_given_late_are_each_told_once(db, settings, rules) -> None:
    """The two 'late but done' branches now have their own partial indexes."""
    deliver_at(db, settings, rules, opening(), OPENED)
    with db.transaction() as session:  # sent 20 minutes late; answered 6 hours late
        ticket = session.scalars(select(Ticket)).one()
        assert ticket.response_due_at is not None
        ticket.acked_at = OPENED + timedelta(minutes=35)
        ticket.first_response_at = ticket.response_due_at + timedelta(hours=6)
    _add_history(db, 50, 10_000)
    later = OPENED + timedelta(days=3)
    assert watch_acks(db, later) == 1 and watch_responses(db, later) == 1
    assert watch_acks(db, later) == 0 and watch_responses(db, later) == 0
    assert len(events(db, 1, "ack_late")) == 1 and len(events(db, 1, "sla_breached")) == 1


def test_listing_running_clocks_by_state_does_not_read_the_closed_history(
        db, settings, rules) -> None:
    """Issue 21.2: `?sla_state=a_tiempo|en_riesgo|en_pausa` (the API, `tickets list --sla`)
    start from the cases whose clock runs (ix_tickets_clock_running), with the tenant or
    without; what they find is what `response_state` says of each case."""
    from mailbridge.sla.cases import response_state
    from mailbridge.views import count_tickets, list_tickets

    deliver_at(db, settings, rules, opening(subject="Reloj corriendo"), OPENED)
    at = OPENED + timedelta(minutes=30)
    with db.transaction() as session:
        ticket = session.scalars(select(Ticket)).one()
        expected = response_state(ticket, at)
    assert expected in ("a_tiempo", "en_riesgo")

    def listing() -> tuple[int, list[list[int]]]:
        found = []
        counting = sqlite_steps(db) if db.is_sqlite else contextlib.nullcontext([0])
        with counting as steps, db.reader() as session:
            for tenant in ("TEN-1001", None):
                for state in ("a_tiempo", "en_riesgo", "en_pausa"):
                    cases = [t.number for t in list_tickets(session, tenant_id=tenant,
                                                           sla_state=state, at=at)]
                    assert count_tickets(session, tenant_id=tenant, sla_state=state,
                                         at=at) == len(cases)
                    found.append(cases)
        return steps[0], found

    _add_history(db, 300, 10_000)
    small, found = listing()
    assert found == [[1] if state == expected else [] for _tenant in (1, 2)
                     for state in ("a_tiempo", "en_riesgo", "en_pausa")]
    _add_history(db, 3000, 20_000)
    large, found_again = listing()
    assert found_again == found
    if db.is_sqlite:
        assert large < small * 1.5 + 5, (small, large)
