"""Staff commands change the case the way the desk expects."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.message import EmailMessage

from tests.pipeline.helpers import case, deliver
from tests.support.daemon import opening_mail


def _staff(body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carla Vidal <carla@mesa.example>"
    msg["To"] = "soporte+1@mesa.example"
    msg["Subject"] = "RE: [Caso 1] TEN-1001 Caída del servicio de correo"
    msg["Message-ID"] = "<staff-prioridad@mesa.example>"
    msg.set_content(body)
    return msg.as_bytes()


def test_priority_change_before_the_first_answer_moves_the_response_target(db, settings, rules) -> None:
    deliver(db, settings, rules, opening_mail(to="soporte-c@mesa.example").as_bytes(),
            rcpt="soporte-c@mesa.example")
    before = case(db, 1)
    assert before["priority"] == "C" and before["severity"] == "BAJA"
    created = datetime.fromisoformat(before["created_at"])
    due = datetime.fromisoformat(before["sla"]["response_due_at"]) - created
    assert abs(due - timedelta(hours=10)) < timedelta(seconds=5)  # Premium, BAJA: 10 h

    deliver(db, settings, rules, _staff("#prioridad A"), rcpt="soporte+1@mesa.example",
            mail_from="carla@mesa.example")
    after = case(db, 1)
    assert after["priority"] == "A" and after["severity"] == "URGENTE"
    # Premium 7x24, URGENTE: one hour from when the case arrived.
    due = datetime.fromisoformat(after["sla"]["response_due_at"]) - created
    assert abs(due - timedelta(hours=1)) < timedelta(seconds=5)
    assert any(e["kind"] == "priority" for e in after["events"])
