"""In-process pipeline helpers: store a raw mail, run the real pipeline, read the case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailbridge.db import Database
from mailbridge.pipeline import Pipeline, ProcessResult
from mailbridge.rules import Rules, parse_rules
from mailbridge.settings import Settings
from mailbridge.spool import new_inbound, store_inbound
from mailbridge.views import get_ticket, ticket_json
from tests.support.rules import quiet_desk_text

REPO = Path(__file__).resolve().parents[2]
MESSAGES = REPO / "tests" / "messages"

# Tenants of the fixture mails, added to the demo rules for these tests only.
FIXTURE_TENANTS = """
  - id: TEN-3003
    name: Bimbo
    plan: profesional
    timezone: America/Mexico_City
    country: MX
    contacts: [luis.hernandez@bimbo.example]
    executive: ejecutivo.bimbo@mesa.example
  - id: TEN-4004
    name: Falabella
    plan: profesional
    timezone: America/Santiago
    country: CL
    contacts: [carolina.munoz@falabella.example]
    executive: ejecutivo.falabella@mesa.example
  - id: TEN-5005
    name: Banco Pichincha
    plan: profesional
    timezone: America/Guayaquil
    country: EC
    contacts: [maria.vera@pichincha.example]
    executive: ejecutivo.pichincha@mesa.example
  - id: TEN-6006
    name: Claro Nicaragua
    plan: profesional
    timezone: America/Managua
    country: NI
    contacts: [roberto.castillo@claro-ni.example]
    executive: ejecutivo.claro@mesa.example
  - id: TEN-7007
    name: Andina
    plan: profesional
    timezone: America/Lima
    country: PE
    contacts: [ti@andina.example]
    executive: ejecutivo.andina@mesa.example
"""


def fixture_rules() -> Rules:
    text = quiet_desk_text()
    text = text.replace(
        "contacts: [ana@compensar.example, luis@compensar.example]",
        "contacts: [ana@compensar.example, luis@compensar.example, paula.rios@compensar.example]",
    ).replace(
        "contacts: [maria@lafise.example]",
        "contacts: [maria@lafise.example, jose.nunez@rimac.example]",
    )
    return parse_rules(text.rstrip("\n") + "\n" + FIXTURE_TENANTS)


def deliver(
    db: Database,
    settings: Settings,
    rules: Rules,
    raw: bytes,
    *,
    rcpt: str = "soporte-a@mesa.example",
    mail_from: str = "ana@compensar.example",
    channel: str = "smtp",
) -> ProcessResult:
    (inbound_id,) = store_inbound(
        db, [new_inbound(raw, channel=channel, mail_from=mail_from, rcpt_tos=[rcpt])]
    )
    result = Pipeline(db, settings, lambda: rules).process(inbound_id)
    assert result is not None
    return result


def case(db: Database, number: int) -> dict[str, Any]:
    with db.reader() as session:
        ticket = get_ticket(session, number)
        assert ticket is not None, f"no case {number}"
        return ticket_json(session, ticket)


def outbox_raw(db: Database) -> list[bytes]:
    from sqlalchemy import select

    from mailbridge.outbound.outbox import OutboxMail

    with db.reader() as session:
        return [r.raw for r in session.scalars(select(OutboxMail).order_by(OutboxMail.id))]
