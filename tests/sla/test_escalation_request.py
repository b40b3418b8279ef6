"""A customer asking to escalate by mail gets the decision and its reason (seeds 000, 001).

Ways in: a mail to the escalation address with [Caso N], or a keyword ("escalar",
"escalamiento" …) in a reply on the case. The decision comes from rules.yaml's
`escalation` section, the same rules the sweep applies.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailbridge.tickets.models import Ticket
from tests.sla.helpers import (
    BOGOTA,
    body_of,
    case,
    deliver_at,
    events,
    local,
    opening,
    outbox,
    reply,
    sla_rules,
)

PEDRO = {"tenant": "TEN-8008", "sender": "pedro@colsubsidio.example", "name": "Pedro Ruiz"}


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return sla_rules()


def _decisions(db) -> list[str]:  # type: ignore[no-untyped-def]
    return [" ".join(body_of(m).split()) for m in outbox(db, "escalation_decision")]


def test_medium_case_waits_three_business_days_across_the_colombian_holiday(
    db, settings, rules
) -> None:
    """Friday 20 March 16:00, MEDIA, no desk update: Monday 23 is San José, so the three
    business days are Tue 24, Wed 25, Thu 26 → eligible from Thursday 16:00."""
    deliver_at(db, settings, rules, opening(**PEDRO, to="soporte-b@mesa.example"),
               local(BOGOTA, 2026, 3, 20, 16), rcpt="soporte-b@mesa.example")
    ask = "Buenos días, solicito escalar el caso: seguimos sin solución."
    deliver_at(db, settings, rules, reply(1, sender=PEDRO["sender"], body=ask),
               local(BOGOTA, 2026, 3, 25, 10), rcpt="soporte+1@mesa.example")
    (refused,) = _decisions(db)
    assert "Decisión: por ahora su caso no puede escalarse." in refused
    assert "jueves 26 de marzo de 2026 a las 16:00 (America/Bogota)" in refused
    assert outbox(db, "escalation") == []

    deliver_at(db, settings, rules, reply(1, sender=PEDRO["sender"], body=ask),
               local(BOGOTA, 2026, 3, 26, 16, 30), rcpt="soporte+1@mesa.example")
    granted = _decisions(db)[1]
    assert "Decisión: su caso ha sido escalado a su ejecutivo comercial." in granted
    assert "no se ha actualizado durante 3 días laborables" in granted
    (mail,) = outbox(db, "escalation")
    assert mail.rcpt_tos == ["ejecutivo.colsubsidio@mesa.example"]
    assert "El cliente (pedro@colsubsidio.example) solicita escalar el caso 1" in body_of(mail)
    requests = events(db, 1, "escalation_request")
    assert [(e["data"]["eligible"], e["data"]["via"]) for e in requests] == [
        (False, "keyword"), (True, "keyword"),
    ]
    assert events(db, 1, "escalated")[0]["data"]["trigger"] == "customer"
    # The requests are on the case as messages too.
    assert [m["author_role"] for m in case(db, 1)["messages"]] == ["customer"] * 3


def test_low_priority_is_never_eligible_and_the_customer_is_told_why(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(to="soporte-c@mesa.example", subject="Consulta"),
               local(BOGOTA, 2026, 3, 2, 9), rcpt="soporte-c@mesa.example")
    deliver_at(db, settings, rules,
               reply(1, sender="ana@compensar.example", body="Favor escalar este caso.",
                     subject="Consulta"),
               local(BOGOTA, 2026, 3, 20, 9), rcpt="soporte+1@mesa.example")
    (answer,) = _decisions(db)
    assert "Los casos de baja prioridad no son aptos para escalamiento." in answer
    assert "impacto medio" in answer
    assert outbox(db, "escalation") == []


def test_writing_to_the_escalation_address_escalates_an_eligible_case(db, settings, rules) -> None:
    opened = local(BOGOTA, 2026, 3, 21, 2)
    deliver_at(db, settings, rules, opening(), opened)
    # Staff answered once on Saturday morning: the case is updated, not stale yet.
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Lo revisamos.",
                     to=["ana@compensar.example"]),
               opened + timedelta(hours=6), rcpt="soporte+1@mesa.example")
    msg = reply(1, sender="ana@compensar.example", body="Necesitamos una respuesta ya.",
                to=["escalamiento@mesa.example"])
    deliver_at(db, settings, rules, msg, opened + timedelta(hours=10),
               rcpt="escalamiento@mesa.example")
    assert "no puede escalarse" in _decisions(db)[0]
    assert "a partir del domingo 22 de marzo de 2026 a las 08:00" in _decisions(db)[0]
    deliver_at(db, settings, rules, msg, opened + timedelta(hours=31),
               rcpt="escalamiento@mesa.example")
    # The same Message-ID twice is deduplicated: send a fresh one.
    msg2 = reply(1, sender="ana@compensar.example", body="Seguimos sin respuesta.",
                 to=["escalamiento@mesa.example"])
    deliver_at(db, settings, rules, msg2, opened + timedelta(hours=31),
               rcpt="escalamiento@mesa.example")
    assert "ha sido escalado a su ejecutivo comercial" in _decisions(db)[-1]
    assert [m.rcpt_tos for m in outbox(db, "escalation")] == [["ejecutivo.compensar@mesa.example"]]
    assert events(db, 1, "escalation_request")[-1]["data"]["via"] == "address"


def test_escalation_address_without_a_case_opens_nothing(db, settings, rules) -> None:
    msg = opening(subject="Queremos escalar", body="Por favor escalen nuestro problema.")
    msg.replace_header("To", "escalamiento@mesa.example")
    result = deliver_at(db, settings, rules, msg, local(BOGOTA, 2026, 3, 20, 9),
                        rcpt="escalamiento@mesa.example")
    assert result.outcome == "reply:escalation-without-case"
    with db.reader() as session:
        assert session.scalar(select(func.count(Ticket.id))) == 0
    (answer,) = _decisions(db)
    assert "no indica a qué caso se refiere" in answer


def test_rca_request_may_not_escalate_before_five_business_days(db, settings, rules) -> None:
    opened = local(BOGOTA, 2026, 3, 16, 9)  # Monday
    deliver_at(db, settings, rules, opening(), opened)
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Resuelto el incidente.",
                     to=["ana@compensar.example"]),
               opened + timedelta(hours=2), rcpt="soporte+1@mesa.example")
    # Wednesday 18: the customer asks for the RCA.
    deliver_at(db, settings, rules,
               reply(1, sender="ana@compensar.example",
                     body="Gracias. Por favor envíennos el RCA del incidente."),
               local(BOGOTA, 2026, 3, 18, 10), rcpt="soporte+1@mesa.example")
    # Friday 20: asks to escalate because the RCA is not there. 5 business days from
    # Wednesday skip Monday 23 (San José): Thu, Fri, Tue, Wed, Thu 26 → eligible then.
    deliver_at(db, settings, rules,
               reply(1, sender="ana@compensar.example",
                     body="Solicito escalar: aún no recibimos el RCA."),
               local(BOGOTA, 2026, 3, 20, 10), rcpt="soporte+1@mesa.example")
    refused = _decisions(db)[-1]
    assert "Una solicitud de RCA no puede escalarse antes de que pasen 5 días laborables" in refused
    assert "jueves 26 de marzo de 2026 a las 10:00" in refused
    deliver_at(db, settings, rules,
               reply(1, sender="ana@compensar.example",
                     body="Solicito escalamiento: el RCA sigue pendiente."),
               local(BOGOTA, 2026, 3, 26, 10, 5), rcpt="soporte+1@mesa.example")
    assert "ha sido escalado" in _decisions(db)[-1]
    assert events(db, 1, "escalation_request")[-1]["data"]["rca"] is True


def test_staff_and_unrelated_words_do_not_trigger_a_request(db, settings, rules) -> None:
    deliver_at(db, settings, rules, opening(), local(BOGOTA, 2026, 3, 16, 9))
    deliver_at(db, settings, rules,
               reply(1, sender="carla@mesa.example", body="Podemos escalar al proveedor.",
                     to=["ana@compensar.example"]),
               local(BOGOTA, 2026, 3, 16, 10), rcpt="soporte+1@mesa.example")
    deliver_at(db, settings, rules,
               reply(1, sender="ana@compensar.example", body="La escala de grises falla."),
               local(BOGOTA, 2026, 3, 16, 11), rcpt="soporte+1@mesa.example")
    assert _decisions(db) == []
