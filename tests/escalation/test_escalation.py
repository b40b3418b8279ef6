"""Escalation in-process: rules, field values, threading by vendor ticket, the sweep's clock."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from sqlalchemy import select

from mailbridge.db import Database
from mailbridge.escalation import remind_overdue_vendors
from mailbridge.escalation.fields import strip_field_lines, values_from_pairs, values_from_text
from mailbridge.escalation.service import escalate
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.rules import Rules, RulesError, parse_rules
from mailbridge.settings import Settings
from mailbridge.tickets.models import Ticket
from tests.pipeline.helpers import REPO, case, deliver
from tests.support.daemon import opening_mail
from tests.support.rules import quiet_desk_text

DEMO = (REPO / "rules.yaml").read_text(encoding="utf-8")


def _outbox(db: Database) -> list[tuple[str, list[str], EmailMessage]]:
    with db.reader() as session:
        rows = session.scalars(select(OutboxMail).order_by(OutboxMail.id)).all()
        return [(r.kind, list(r.rcpt_tos),
                 email.message_from_bytes(r.raw, policy=email.policy.default))  # type: ignore[misc]
                for r in rows]


def _staff_mail(subject: str, body: str, sender: str = "carla@mesa.example") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Carla Vidal <{sender}>"
    msg["To"] = "soporte+1@mesa.example"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="mesa.example")
    msg.set_content(body)
    return msg.as_bytes()


def test_demo_targets_and_their_rules(rules: Rules) -> None:
    targets = rules.escalation_targets
    assert set(targets) == {"operaciones", "hibot", "panda"}
    assert (targets["hibot"].kind, targets["hibot"].address) == (
        "ticketing_vendor", "soporte@hibot.example")
    assert (targets["panda"].kind, targets["panda"].address) == (
        "thread_vendor", "soporte_revendedores@clickpanda.example")
    assert targets["operaciones"].kind == "internal"
    assert [f.label for f in targets["hibot"].fields if f.required] == [
        "Cliente", "Usuario que tiene el problema", "Correo asociado al usuario",
        "Descripción del problema"]
    assert [f.label for f in targets["panda"].fields if f.required] == [
        "Usuario con el problema", "Campaña afectada", "Email asociado al usuario en el reseller"]
    assert not any(t.auto_escalate.enabled for t in targets.values())  # off by default
    assert rules.escalation_targets_for_products(["INBOUND"]) == ["hibot"]
    assert rules.escalation_targets_for_products(["SMS", "voz", "emailing"]) == []
    assert rules.escalation_targets_for_products(["EMAIL"]) == ["panda"]
    assert rules.escalation_target_for_sender("Laura@HIBOT.example") == "hibot"
    assert rules.escalation_target_for_sender("carla@mesa.example") is None
    assert rules.escalation_target_for_sender("operaciones@mesa-6.hs-inbox.example") == "operaciones"


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ("    ticket_pattern: '(?i)\\bticket\\s*(?:n[º°o]\\.?\\s*)?#\\s*(\\d{3,})'\n", "hibot.ticket_pattern",
         "needs ticket_pattern"),
        ("    senders: [hibot.example]\n", "hibot.senders", None),
        ("    template: vendor_panda.txt.j2\n", "panda.template", "no template"),
        ("      - {key: cliente, label: \"Cliente\", from: [cliente, tenant.name]}\n",
         "operaciones.fields.0.from", "unknown source"),
    ],
)
def test_target_mistakes_are_named_with_their_line(change: str, key: str, words: str | None) -> None:
    assert change in DEMO
    if key == "hibot.ticket_pattern":
        text = DEMO.replace(change, "", 1)
    elif key == "hibot.senders":
        text = DEMO.replace(change, "    senders: [mesa.example]\n", 1)
        words = "staff domain"
    elif key == "panda.template":
        text = DEMO.replace(change, "    template: vendor_nada.txt.j2\n", 1)
    else:
        text = DEMO.replace(change, change.replace("tenant.name", "tenant.nombre"), 1)
    with pytest.raises(RulesError) as caught:
        parse_rules(text)
    (problem,) = caught.value.problems
    assert problem.key.startswith("escalation_targets." + key.split(".")[0])
    assert words in problem.message
    section = text.splitlines().index("escalation_targets:") + 1
    assert problem.line is not None and problem.line > section


def test_field_lines_stop_at_the_next_known_label_and_cli_pairs(rules: Rules) -> None:
    panda = rules.escalation_targets["panda"]
    text = ("Usuario con el problema: mercadeo\nCampaña afectada: Novedades de marzo\n"
            "Email asociado al usuario en el reseller: mercadeo@compensar.example\n\n"
            "Explicación detallada del incidente: no llegan las muestras.\n")
    assert values_from_text(rules, panda, text) == {
        "usuario": "mercadeo", "campana": "Novedades de marzo",
        "email_reseller": "mercadeo@compensar.example"}
    assert strip_field_lines(text, panda).strip() == (
        "Explicación detallada del incidente: no llegan las muestras.")
    hibot = rules.escalation_targets["hibot"]
    assert values_from_pairs(hibot, ["usuario=jperez", "Correo asociado al USUARIO=j@x.example"]) == {
        "usuario": "jperez", "correo_usuario": "j@x.example"}
    with pytest.raises(ValueError, match="not a field"):
        values_from_pairs(hibot, ["campaña=x"])


def _open_lafise(db: Database, settings: Settings, rules: Rules) -> None:
    raw = opening_mail(sender="maria@lafise.example", subject="TEN-2002 No ingresa a INBOUND")
    result = deliver(db, settings, rules, raw.as_bytes(), rcpt="soporte-b@mesa.example",
                     mail_from="maria@lafise.example")
    assert result.outcome == "ticket"


def test_vendor_ticket_number_joins_only_the_vendors_own_mail(
    db: Database, settings: Settings, rules: Rules
) -> None:
    _open_lafise(db, settings, rules)
    deliver(db, settings, rules, _staff_mail(
        "RE: [Caso 1] TEN-2002 No ingresa a INBOUND",
        "#escalar hibot\nUsuario que tiene el problema: jperez\n"
        "Correo asociado al usuario: jperez@lafise.example"),
        rcpt="soporte+1@mesa.example", mail_from="carla@mesa.example")
    (escalation,) = [m for kind, _, m in _outbox(db) if kind == "vendor_escalation"]
    auto = EmailMessage()
    auto["From"] = "soporte@hibot.example"
    auto["To"] = "soporte+1@mesa.example"
    auto["Subject"] = "Ticket #48213 creado"
    auto["Message-ID"] = make_msgid(domain="hibot.example")
    auto["In-Reply-To"] = escalation["Message-ID"]
    auto["Auto-Submitted"] = "auto-replied"
    auto.set_content("Se ha creado el Ticket #48213.")
    assert deliver(db, settings, rules, auto.as_bytes(), rcpt="soporte+1@mesa.example",
                   mail_from="").outcome == "vendor:auto-answer"
    # A customer quoting that number does not land on case 1.
    stranger = opening_mail(sender="ana@compensar.example",
                            subject="TEN-1001 Ticket #48213 otra cosa")
    assert deliver(db, settings, rules, stranger.as_bytes()).ticket_number == 2
    human = EmailMessage()
    human["From"] = "Laura <laura@hibot.example>"
    human["To"] = "soporte@mesa.example"
    human["Subject"] = "Solución"
    human["Message-ID"] = make_msgid(domain="hibot.example")
    human.set_content("Sobre el ticket #48213: usuario desbloqueado.")
    result = deliver(db, settings, rules, human.as_bytes(), rcpt="soporte@mesa.example",
                     mail_from="laura@hibot.example")
    assert (result.outcome, result.ticket_number) == ("vendor:answer", 1)
    (reference,) = case(db, 1)["vendor_references"]
    assert (reference["vendor_ticket"], reference["state"]) == ("48213", "respondido")


def test_sweep_reminds_once_per_due_point_then_stops(
    db: Database, settings: Settings, rules: Rules
) -> None:
    _open_lafise(db, settings, rules)
    sent_at = datetime(2026, 3, 12, 15, 0, tzinfo=UTC)
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        result = escalate(session, rules, ticket, "panda", now=sent_at,
                          evidence_dir=settings.evidence_dir, origin="cli",
                          values={"usuario": "u", "campana": "c", "email_reseller": "e@x.example"})
        assert result.ok, result.message
    target = rules.escalation_targets["panda"]  # 12 h, then every 12 h, at most 2
    assert remind_overdue_vendors(db, rules, sent_at + timedelta(hours=11, minutes=59)) == []
    first_due = sent_at + timedelta(hours=target.reply_within_hours)
    (step,) = remind_overdue_vendors(db, rules, first_due)
    assert (step["reminded"], step["staff"]) == (True, ["proveedores@mesa.example"])
    assert remind_overdue_vendors(db, rules, first_due) == []  # idempotent
    # Long after: one step per call, never a burst.
    late = first_due + timedelta(days=5)
    assert [s["reminded"] for s in remind_overdue_vendors(db, rules, late)] == [True]
    assert [s["reminded"] for s in remind_overdue_vendors(db, rules, late)] == [False]
    assert remind_overdue_vendors(db, rules, late + timedelta(days=30)) == []
    kinds = [(kind, rcpt) for kind, rcpt, _ in _outbox(db) if kind.startswith("vendor_")]
    assert kinds == [
        ("vendor_escalation", ["soporte_revendedores@clickpanda.example"]),
        ("vendor_reminder", ["soporte_revendedores@clickpanda.example"]),
        ("vendor_overdue", ["proveedores@mesa.example"]),
        ("vendor_reminder", ["soporte_revendedores@clickpanda.example"]),
        ("vendor_overdue", ["proveedores@mesa.example"]),
        ("vendor_overdue", ["proveedores@mesa.example"]),
    ]
    reminder = next(m for kind, _, m in _outbox(db) if kind == "vendor_reminder")
    assert reminder["Subject"].strip().startswith("[Caso 1] Recordatorio")
    assert reminder["In-Reply-To"] == case(db, 1)["vendor_references"][0]["message_id"]
    (reference,) = case(db, 1)["vendor_references"]
    assert (reference["state"], reference["reminders"]) == ("enviado", 2)


def test_a_closed_case_stops_reminders(db: Database, settings: Settings, rules: Rules) -> None:
    _open_lafise(db, settings, rules)
    now = datetime(2026, 3, 12, 15, 0, tzinfo=UTC)
    with db.transaction() as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == 1))
        assert ticket is not None
        assert escalate(session, rules, ticket, "operaciones", now=now,
                        evidence_dir=settings.evidence_dir, origin="cli",
                        requested_by="carla@mesa.example").ok
        ticket.status = "cerrado"
    assert remind_overdue_vendors(db, rules, now + timedelta(days=3)) == []
    (reference,) = case(db, 1)["vendor_references"]
    assert reference["state"] == "cerrado"


def test_product_rule_asks_the_desk_for_missing_fields_then_staff_completes(
    db: Database, settings: Settings
) -> None:
    text = quiet_desk_text(DEMO).replace("    products: [INBOUND]\n    auto_escalate: {enabled: false}\n",
                        "    products: [INBOUND]\n    auto_escalate: {enabled: true}\n")
    rules = parse_rules(text)
    body = ("Explicación detallada del incidente: jperez no ingresa a INBOUND.\n"
            "Fecha y hora de la detección del incidente: 12/03/2026 09:10\n"
            "Nombre del Cliente: Lafise Nicaragua\nPaís/Región del Cliente: Nicaragua\n"
            "Impacto a la Operación del Cliente: un agente sin acceso.\n"
            "Justificación de la Urgencia: cola de cobros.\n"
            "Producto(s) Involucrado(s): INBOUND\n"
            "Datos de Contacto del LCCD responsable del caso: María – maria@lafise.example\n")
    raw = opening_mail(sender="maria@lafise.example", subject="TEN-2002 No ingresa", body=body)
    result = deliver(db, settings, rules, raw.as_bytes(), rcpt="soporte-b@mesa.example",
                     mail_from="maria@lafise.example")
    assert result.outcome == "ticket"
    sent = [(kind, rcpt) for kind, rcpt, _ in _outbox(db)]
    assert sent == [("ack", ["maria@lafise.example"]),
                    ("vendor_missing_fields", ["proveedores@mesa.example"])]
    asked = _outbox(db)[1][2]
    assert "Usuario que tiene el problema" in asked.get_content()
    assert "#escalar hibot" in asked.get_content()
    (reference,) = case(db, 1)["vendor_references"]
    assert (reference["state"], reference["origin"]) == ("faltan_datos", "rule")

    # «#escalar» alone: the case's product picks HIBOT; the field lines go to HIBOT only,
    # the rest of the staff member's text is relayed to María as usual.
    deliver(db, settings, rules, _staff_mail(
        "RE: [Caso 1] TEN-2002 No ingresa",
        "#escalar\nUsuario que tiene el problema: jperez\n"
        "Correo asociado al usuario: jperez@lafise.example\n\n"
        "María, escalamos el caso al proveedor de INBOUND."),
        rcpt="soporte+1@mesa.example", mail_from="carla@mesa.example")
    mails = {kind: (rcpt, msg) for kind, rcpt, msg in _outbox(db)[2:]}
    assert mails["vendor_escalation"][0] == ["soporte@hibot.example"]
    assert "Usuario que tiene el problema: jperez" in mails["vendor_escalation"][1].get_content()
    relayed = mails["staff_answer"]
    assert relayed[0] == ["maria@lafise.example"]
    assert "escalamos el caso al proveedor" in relayed[1].get_content()
    assert "jperez@lafise.example" not in relayed[1].get_content()
    (reference,) = case(db, 1)["vendor_references"]
    assert (reference["state"], reference["origin"]) == ("enviado", "staff")
    # A second «#escalar hibot» is refused: the case is already with HIBOT.
    deliver(db, settings, rules, _staff_mail("RE: [Caso 1] TEN-2002 No ingresa", "#escalar hibot"),
            rcpt="soporte+1@mesa.example", mail_from="carla@mesa.example")
    last = _outbox(db)[-1]
    assert last[0] == "command_confirmation"
    assert "ya está escalado a HIBOT" in last[2].get_content()
