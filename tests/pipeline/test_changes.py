"""pipeline/changes.py alone: the staff commands' rules, shared by mail and the API; each
change writes its case events and its webhook event in the caller's transaction."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from mailbridge.db import utcnow
from mailbridge.outbound.webhooks import WebhookEvent
from mailbridge.pipeline.changes import set_owner, set_priority, set_status
from mailbridge.tickets.models import Ticket
from tests.pipeline.helpers import case, deliver
from tests.support.daemon import opening_mail


def _open_two(db, settings, rules) -> None:  # type: ignore[no-untyped-def]
    deliver(db, settings, rules, opening_mail().as_bytes())
    deliver(db, settings, rules, opening_mail(subject="TEN-1001 Otro asunto sin relación").as_bytes())


def _events(db, name: str) -> list[dict]:  # type: ignore[no-untyped-def]
    with db.reader() as session:
        return [dict(e.data, ticket_id=e.ticket_id) for e in session.scalars(
            select(WebhookEvent).where(WebhookEvent.event == name).order_by(WebhookEvent.id))]


def test_a_mail_command_and_the_core_make_the_same_change(db, settings, rules) -> None:
    _open_two(db, settings, rules)
    staff = EmailMessage()
    staff["From"] = "Carlos <carlos@mesa.example>"
    staff["To"] = "soporte+1@mesa.example"
    staff["Subject"] = "RE: [Caso 1] TEN-1001 Caída del servicio de correo"
    staff["Message-ID"] = "<cmd-1@mesa.example>"
    staff.set_content("#prioridad B\n#estado esperando_cliente\n")
    deliver(db, settings, rules, staff.as_bytes(), rcpt="soporte+1@mesa.example",
            mail_from="carlos@mesa.example")
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 2))
        assert ticket is not None
        now = utcnow()
        assert set_priority(session, rules, ticket, "b", by="api:jira", now=now).ok
        assert set_status(session, rules, ticket, "esperando", by="api:jira", now=now).ok
    by_mail, by_api = case(db, 1), case(db, 2)
    for key in ("priority", "severity", "status", "sla_state"):
        assert by_mail[key] == by_api[key], key
    assert (by_api["priority"], by_api["status"], by_api["sla_state"]) == (
        "B", "esperando_cliente", "en_pausa")

    def changes(data: dict) -> list:  # type: ignore[type-arg]
        return [(e["kind"], e["data"].get("from"), e["data"].get("to")) for e in data["events"]
                if e["kind"] in ("priority", "status")]

    assert changes(by_mail) == changes(by_api) == [("priority", "A", "B"),
                                                   ("status", "abierto", "esperando_cliente")]
    updated = _events(db, "case.updated")
    assert [(e["by"], e["changes"]) for e in updated] == [
        ("carlos@mesa.example", {"priority": {"from": "A", "to": "B"}}),
        ("carlos@mesa.example", {"status": {"from": "abierto", "to": "esperando_cliente"}}),
        ("api:jira", {"priority": {"from": "A", "to": "B"}}),
        ("api:jira", {"status": {"from": "abierto", "to": "esperando_cliente"}}),
    ]


def test_refusals_say_why_in_spanish_and_change_nothing(db, settings, rules) -> None:
    _open_two(db, settings, rules)
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        now = utcnow()
        refused = [
            set_status(session, rules, ticket, "listo", by="api:x", now=now),
            set_priority(session, rules, ticket, "Z", by="api:x", now=now),
            set_owner(session, rules, ticket, "pepe@gmail.example", by="api:x", now=now),
            set_owner(session, rules, ticket, "nadie", by="api:x", now=now),
        ]
    assert [c.ok for c in refused] == [False] * 4
    assert refused[0].message.startswith("estado desconocido; use: abierto, cerrado")
    assert refused[1].message == "prioridad desconocida; use A, B o C"
    assert refused[2].message.startswith("pepe@gmail.example no es de la mesa (mesa.example)")
    assert refused[3].message.startswith("indique a quién")
    assert _events(db, "case.updated") == []
    assert case(db, 1)["priority"] == "A"


def test_an_event_is_never_left_by_a_transaction_that_rolled_back(db, settings, rules) -> None:
    _open_two(db, settings, rules)
    with db.reader() as session:
        before = session.scalar(select(func.count()).select_from(WebhookEvent))
    with pytest.raises(RuntimeError), db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        set_owner(session, rules, ticket, "carlos@mesa.example", by="api:x", now=utcnow())
        session.flush()
        raise RuntimeError("the request failed after the change")
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == before
    assert case(db, 1)["owner"] is None
    # Committed, the owner change is an event, and the new owner is told by mail.
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        change = set_owner(session, rules, ticket, "Carlos@mesa.example", by="api:x",
                           now=utcnow(), by_name="jira (API)")
    assert (change.ok, change.message) == (True, "propietario del caso: carlos@mesa.example")
    assert _events(db, "case.updated")[-1]["changes"] == {
        "owner": {"from": None, "to": "carlos@mesa.example"}}
    assert [o["kind"] for o in case(db, 1)["outbound"]][-1] == "staff_assigned"


def test_without_a_webhook_target_no_event_is_recorded(db, settings, rules) -> None:
    """The daemon with no receiver configured (record_events with none) keeps no event
    rows: nothing would ever be delivered, and each cost a write and a publication."""
    from mailbridge.outbound.webhooks import WebhookTarget, record_events

    record_events(db, [])
    _open_two(db, settings, rules)
    assert _events(db, "case.created") == []
    assert case(db, 2)["status"] == "abierto"  # the cases themselves are untouched
    record_events(db, [WebhookTarget(name="jira", url="https://jira.example/hook",
                                    secret_env="JIRA_WEBHOOK_SECRET")])
    deliver(db, settings, rules, opening_mail(subject="TEN-1001 Tercer asunto distinto").as_bytes())
    assert [e["ticket_id"] for e in _events(db, "case.created")] == [3]


def test_a_closed_case_reopened_by_staff_is_no_longer_dated_closed(db, settings, rules) -> None:
    deliver(db, settings, rules, opening_mail().as_bytes())
    closed_at = utcnow()
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        assert set_status(session, rules, ticket, "cerrado", by="api:jira", now=closed_at).ok
    with db.reader() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None and ticket.closed_at == closed_at
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        assert set_status(session, rules, ticket, "abierto", by="api:jira", now=utcnow()).ok
    with db.reader() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None and (ticket.status, ticket.closed_at) == ("abierto", None)
