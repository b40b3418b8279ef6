"""Opening mails through the real pipeline: fields, missing fields, evidence, secrets."""

from __future__ import annotations

import email
import email.policy
import hashlib

import pytest

from tests.pipeline.helpers import MESSAGES, case, deliver, fixture_rules, outbox_raw
from tests.support.rules import quiet_desk_text

OPENING = MESSAGES / "opening"


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return fixture_rules()


def _ack(db) -> email.message.EmailMessage:  # type: ignore[no-untyped-def]
    raws = outbox_raw(db)
    assert len(raws) == 1, f"expected one reply, got {len(raws)}"
    return email.message_from_bytes(raws[0], policy=email.policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("fixture", "tenant", "cliente", "fecha"),
    [
        ("plain_utf8_8bit.eml", "TEN-1001", "Compensar", "-05:00"),
        ("quoted_printable_latin1.eml", "TEN-2002", None, None),
        ("base64_utf8.eml", "TEN-3003", None, None),
        ("html_only_outlook.eml", "TEN-4004", "Falabella", "2026-03-11T22:40:00-03:00"),
        ("gmail_multipart_alternative.eml", "TEN-5005", None, None),
        ("shuffled_labels_no_accents.eml", "TEN-6006", None, None),
        ("crlf_line_endings.eml", "TEN-1001", "Compensar", None),
    ],
)
def test_complete_openings_become_open_cases(db, settings, rules, fixture, tenant, cliente, fecha) -> None:
    raw = (OPENING / fixture).read_bytes()
    result = deliver(db, settings, rules, raw)
    assert result.outcome == "ticket", result
    ticket = case(db, 1)
    assert ticket["tenant_id"] == tenant
    assert ticket["status"] == "abierto", ticket["missing_fields"]
    assert ticket["missing_fields"] == []
    for key in ("explicacion", "fecha_deteccion", "cliente", "pais_region", "impacto",
                "justificacion_urgencia", "productos", "contacto_lccd"):
        assert ticket["fields"].get(key), f"{fixture}: {key} not read"
    if cliente:
        assert ticket["fields"]["cliente"] == cliente
    if fecha:
        assert fecha in ticket["fields"]["fecha_deteccion"]
    assert set(ticket["fields"]["contacto_lccd"]) == {"nombre", "correo", "telefono"}
    ack = _ack(db)
    assert ack["Subject"].startswith("[Caso 1] ")
    assert "nos faltan" not in ack.get_content()


def test_missing_fields_make_an_incomplete_case_and_one_reply_naming_them(db, settings, rules) -> None:
    raw = (OPENING / "missing_fields.eml").read_bytes()
    deliver(db, settings, rules, raw, mail_from="paula.rios@compensar.example")
    ticket = case(db, 1)
    assert ticket["status"] == "incompleto"
    assert ticket["missing_fields"] == [
        "fecha_deteccion", "pais_region", "impacto", "justificacion_urgencia", "productos",
        "contacto_lccd",
    ]
    ack = _ack(db)
    body = ack.get_content().replace("\r\n", "\n")
    assert ack["To"] == "paula.rios@compensar.example"
    for label in ("Fecha y hora de la detección del incidente", "País/Región del Cliente",
                  "Impacto a la Operación del Cliente", "Justificación de la Urgencia",
                  "Producto(s) Involucrado(s)", "Datos de Contacto del LCCD responsable del caso"):
        assert f"  - {label}\n" in body
    # Present fields are not asked for again.
    assert "  - Nombre del Cliente" not in body and "  - Explicación detallada" not in body
    assert "Responder a todos" in body

    # The customer answers on the thread with what was missing: the case completes.
    reply = email.message.EmailMessage()
    reply["From"] = "Paula Ríos <paula.rios@compensar.example>"
    reply["To"] = "soporte@mesa.example"
    reply["Subject"] = f"RE: {ack['Subject']}"
    reply["Message-ID"] = "<completa@compensar.example>"
    reply["In-Reply-To"] = ack["Message-ID"]
    reply.set_content(
        "Fecha y hora de la detección del incidente: 12/03/2026 09:00 Colombia\n"
        "País/Región del Cliente: Colombia\n"
        "Impacto a la Operación del Cliente: 40 agentes sin consola\n"
        "Justificación de la Urgencia: cierre de mes\n"
        "Producto(s) Involucrado(s): Consola\n"
        "Datos de Contacto del LCCD responsable del caso: Paula Ríos, paula.rios@compensar.example, 3001234567\n\n"
        "El mar, 12 mar 2026 a las 10:00, Mesa de Soporte <soporte@mesa.example> escribió:\n"
        "> Para poder atender el caso nos faltan estos datos\n"
    )
    result = deliver(db, settings, rules, reply.as_bytes(), rcpt="soporte+1@mesa.example",
                     mail_from="paula.rios@compensar.example")
    assert result.ticket_number == 1
    ticket = case(db, 1)
    assert ticket["missing_fields"] == []
    assert ticket["status"] == "abierto"
    assert ticket["fields"]["pais_region"] == "Colombia"
    assert ticket["fields"]["contacto_lccd"]["telefono"] == "3001234567"
    notice = email.message_from_bytes(outbox_raw(db)[-1], policy=email.policy.default)
    assert "Hemos recibido los datos que faltaban" in notice.get_content()


def test_attachments_are_kept_as_evidence_by_hash(db, settings, rules) -> None:
    raw = (OPENING / "with_png_and_log_attachments.eml").read_bytes()
    deliver(db, settings, rules, raw)
    ticket = case(db, 1)
    assert len(ticket["attachments"]) == 2
    for detail in ticket["attachment_details"]:
        path = settings.evidence_dir / detail["sha256"][:2] / detail["sha256"][2:4] / detail["sha256"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == detail["sha256"]
        assert len(data) == detail["size"]
    # The same evidence again is stored once.
    files_before = sorted(settings.evidence_dir.rglob("*"))
    deliver(db, settings, rules, raw.replace(b"Message-ID: <", b"Message-ID: <again-"))
    assert sorted(settings.evidence_dir.rglob("*")) == files_before


def test_hostile_attachment_names_are_sanitised(db, settings, rules) -> None:
    deliver(db, settings, rules, (OPENING / "attachment_hostile_filenames.eml").read_bytes())
    names = case(db, 1)["attachments"]
    assert names, "attachments were dropped"
    for name in names:
        assert "/" not in name and "\\" not in name and ".." != name
        assert all(ch.isprintable() for ch in name)


def test_oversize_evidence_is_listed_but_not_kept(db, settings, rules) -> None:
    settings.max_attachment_size = 10
    deliver(db, settings, rules, (OPENING / "with_png_and_log_attachments.eml").read_bytes())
    ticket = case(db, 1)
    assert len(ticket["attachments"]) == 2
    assert not list(settings.evidence_dir.rglob("*")) or all(
        p.is_dir() for p in settings.evidence_dir.rglob("*")
    )


def test_secrets_are_redacted_everywhere_and_the_sender_is_told(db, settings, rules) -> None:
    raw = (OPENING / "password_inside.eml").read_bytes()
    deliver(db, settings, rules, raw)
    ticket = case(db, 1)
    body = ticket["messages"][0]["body"]
    assert "[REDACTADO]" in body
    assert "Olvidé mi contraseña" in body  # prose about passwords is not a secret
    from mailbridge.spool import InboundMail

    with db.reader() as session:
        archived = session.get(InboundMail, 1).raw  # type: ignore[union-attr]
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.lower().startswith(("contraseña:", "api key")):
            secret = line.split(":", 1)[1].strip()
            assert secret and secret.encode() not in archived
            assert secret not in str(ticket)
    assert any(e["kind"] == "secrets_redacted" for e in ticket["events"])
    assert "información sensible (contraseña" in _ack(db).get_content()


@pytest.mark.parametrize("fixture", ["smime_encrypted.eml", "pgp_mime_encrypted.eml",
                                     "pgp_inline_encrypted.eml"])
def test_encrypted_opening_is_answered_not_opened(db, settings, rules, fixture) -> None:
    result = deliver(db, settings, rules, (OPENING / fixture).read_bytes())
    assert result.outcome == "refused:encrypted"
    assert result.ticket_number is None
    reply = _ack(db)
    assert "sin cifrar" in reply.get_content()
    assert reply["To"] == "ana@compensar.example"


@pytest.mark.parametrize("fixture", ["smime_signed_only.eml", "pgp_inline_signed_only.eml"])
def test_signed_only_mail_opens_a_case(db, settings, rules, fixture) -> None:
    assert deliver(db, settings, rules, (OPENING / fixture).read_bytes()).outcome == "ticket"


def test_a_new_field_in_rules_is_extracted_without_code(db, settings) -> None:
    from mailbridge.rules import parse_rules

    text = quiet_desk_text().replace(
        "template:\n  fields:\n",
        "template:\n  fields:\n    - key: numero_contrato\n      label: Número de contrato\n"
        "      synonyms: [Contrato]\n      required: false\n",
    )
    rules = parse_rules(text)
    raw = (OPENING / "plain_utf8_8bit.eml").read_bytes().replace(
        b"Nombre del Cliente:", "Número de contrato: CT-2026-0042\nNombre del Cliente:".encode()
    )
    deliver(db, settings, rules, raw)
    assert case(db, 1)["fields"]["numero_contrato"] == "CT-2026-0042"
