"""Real clients' replies (Outlook, Gmail, Apple Mail, Thunderbird; es/en) thread and strip right."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from mailbridge.parse.mime import parse_mail
from mailbridge.parse.quotes import strip_quotes
from mailbridge.tickets.models import Counter
from tests.pipeline.helpers import MESSAGES, case, deliver
from tests.support.daemon import opening_mail
from tests.support.rules import quiet_desk_text

REPLIES = sorted((MESSAGES / "replies").glob("*.eml"))


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    from mailbridge.rules import parse_rules
    from tests.pipeline.helpers import FIXTURE_TENANTS

    yaml = quiet_desk_text().rstrip("\n") + "\n" + FIXTURE_TENANTS
    yaml += (
        "  - id: TEN-9009\n    name: Cliente Ejemplo\n    plan: premium\n    timezone: Europe/Madrid\n"
        "    country: ES\n    contacts: [marta.soler@cliente-ejemplo.es, jorge.ruiz@cliente-ejemplo.es]\n"
        "    executive: ejecutivo.ejemplo@mesa.example\n"
    )
    yaml = yaml.replace("staff_domains: [mesa.example]", "staff_domains: [mesa.example, jd-services.eu]")
    return parse_rules(yaml)


@pytest.mark.parametrize("path", REPLIES, ids=[p.stem for p in REPLIES])
def test_reply_fixture_joins_case_12_with_only_new_text(db, settings, rules, path) -> None:
    with db.transaction() as session:
        session.add(Counter(name="case_number", value=11))
    deliver(db, settings, rules, opening_mail(sender="marta.soler@cliente-ejemplo.es",
                                              subject="TEN-9009 Caída del servicio de correo").as_bytes())
    with db.transaction() as session:
        session.execute(update(Counter).values(value=12))
    raw = path.read_bytes()
    result = deliver(db, settings, rules, raw, rcpt="soporte@mesa.example",
                     mail_from="someone@cliente-ejemplo.es")
    assert result.ticket_number == 12, result
    assert result.outcome.startswith("reply")
    ticket = case(db, 12)
    stored = ticket["messages"][-1]["body"]
    expected = strip_quotes(parse_mail(raw).text)
    assert stored.strip().startswith(expected.strip()[:40]) or ticket["messages"][-1]["author_role"] == "staff"
    # No quoted history survives in what is stored.
    assert "escribió:" not in stored and "wrote:" not in stored
    assert "Enviado el:" not in stored and "-----Original Message-----" not in stored
    if "inline" not in path.stem:  # an interleaved answer keeps the questions it answers
        assert not any(line.startswith(">") for line in stored.splitlines())
