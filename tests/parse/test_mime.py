"""parse_mail on real fixture mails: charsets, HTML-only bodies, attachments, encryption."""

from __future__ import annotations

import email
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.parse.encryption import is_encrypted
from mailbridge.parse.html import html_to_text
from mailbridge.parse.mime import ParsedMail, parse_mail, safe_filename

OPENING = Path(__file__).resolve().parent.parent / "messages" / "opening"


def parse(name: str) -> ParsedMail:
    return parse_mail((OPENING / name).read_bytes())


# (fixture, decoded subject, sender name, a phrase the body must contain exactly)
DECODING = [
    (
        "plain_utf8_8bit.eml",
        "TEN-1001 Caída del servicio de correo",
        "Ana María Gómez",
        "Desde las 08:00 ningún usuario de Compensar",
    ),
    (
        "quoted_printable_latin1.eml",
        "TEN-2002 Portal de autogestión sin respuesta",
        "José Ñúñez",
        "El portal de autogestión no carga",
    ),
    (
        "base64_utf8.eml",
        "TEN-3003 Sincronización del CRM detenida",
        "Luis Hernández",
        "La integración con el CRM dejó de sincronizar contactos.",
    ),
    (
        "html_only_outlook.eml",
        "TEN-4004 Error 404 en descarga de facturas",
        "Carolina Muñoz",
        "Nombre del Cliente\tFalabella",
    ),
    (
        "gmail_multipart_alternative.eml",
        "TEN-5005 Cortes en llamadas entrantes",
        "María Vera",
        "*Nombre del Cliente:* Banco Pichincha",
    ),
    (
        "unknown_charset_x_unknown.eml",
        "TEN-7007 Sincronización fallida",
        "Soporte Andina",
        "Nombre del Cliente: Compañía Andina",
    ),
]


@pytest.mark.parametrize(
    ("name", "subject", "sender", "phrase"), DECODING, ids=[d[0] for d in DECODING]
)
def test_headers_and_body_are_decoded(name: str, subject: str, sender: str, phrase: str) -> None:
    mail = parse(name)
    assert mail.subject == subject
    assert mail.from_name == sender
    assert phrase in mail.text
    assert "\ufffd" not in mail.text


def test_html_only_mail_gets_its_text_from_the_html() -> None:
    mail = parse("html_only_outlook.eml")
    assert mail.html is not None and "<b>" in mail.html
    assert "Explicación detallada del incidente: Los enlaces de descarga" in mail.text
    assert "Datos de Contacto del LCCD responsable del caso:\nCarolina Muñoz" in mail.text
    # Styles, conditional comments and Office tags are not text.
    assert "MsoNormal" not in mail.text and "mso" not in mail.text and "<" not in mail.text


def test_multipart_alternative_prefers_the_text_part_and_keeps_the_html() -> None:
    mail = parse("gmail_multipart_alternative.eml")
    assert mail.text.startswith("*Explicación detallada del incidente:*")
    assert mail.html is not None and "<b>Nombre del Cliente:</b>" in mail.html


def test_crlf_and_lf_give_the_same_text() -> None:
    assert parse("crlf_line_endings.eml").text == parse("plain_utf8_8bit.eml").text
    assert "\r" not in parse("crlf_line_endings.eml").text


def test_unknown_charset_is_decoded_and_reported() -> None:
    mail = parse("unknown_charset_x_unknown.eml")
    assert "la sincronización falló." in mail.text
    assert any("x-unknown" in defect for defect in mail.defects)


def test_inline_image_and_log_are_kept_as_evidence() -> None:
    mail = parse("with_png_and_log_attachments.eml")
    shown = [(a.filename, a.content_type, a.inline, a.content_id) for a in mail.attachments]
    assert shown == [
        ("captura cola.png", "image/png", True, "<captura-cola@compensar.example>"),
        ("relay.log", "text/plain", False, None),
    ]
    png, log = mail.attachments
    assert png.payload.startswith(b"\x89PNG\r\n\x1a\n")
    assert log.payload.decode().startswith("2026-03-12 07:58:01 ERROR smtp-relay: 451 4.4.0")
    # The attached log is evidence, not part of the text the fields are read from.
    assert "smtp-relay" not in mail.text
    assert "Nombre del Cliente: Compensar" in mail.text


def test_hostile_attachment_names_are_made_safe() -> None:
    mail = parse("attachment_hostile_filenames.eml")
    names = [a.filename for a in mail.attachments]
    assert names[:3] == ["passwd.log", "informe técnico.pdf", "adjunto.jpg"]
    long_name = names[3]
    assert long_name.endswith(".log") and len(long_name.encode()) == 255
    for name in names:
        assert name and "/" not in name and "\\" not in name
        assert all(ch.isprintable() for ch in name)
    assert mail.attachments[0].payload == b"root:x:0:0\n"


@pytest.mark.parametrize(
    ("raw", "content_type", "safe"),
    [
        ("informe.pdf", "application/pdf", "informe.pdf"),
        ("C:\\Users\\ana\\Desktop\\captura.png", "image/png", "captura.png"),
        ("../../etc/passwd", "text/plain", "passwd"),
        ("..", "text/plain", "adjunto.txt"),
        ("", "image/png", "adjunto.png"),
        (None, "application/x-unknown", "adjunto.bin"),
        ("<image001.png@01DA5B2C.3F4E5A60>", "image/png", "image001.png"),
        ("=?utf-8?q?evidencia_d=C3=ADa_1.log?=", "text/plain", "evidencia día 1.log"),
        ("captura\u202egnp.exe", "image/png", "capturagnp.exe"),  # no bidi override
        ("  .oculto  ", "text/plain", "oculto"),
        ("línea\r\nnueva.txt", "text/plain", "línea nueva.txt"),
    ],
)
def test_safe_filename(raw: str | None, content_type: str, safe: str) -> None:
    assert safe_filename(raw, content_type) == safe


def test_safe_filename_cuts_multibyte_names_to_255_bytes() -> None:
    name = safe_filename("ñ" * 400 + ".pdf", "application/pdf")
    assert name.endswith("ñ.pdf") and len(name.encode("utf-8")) <= 255


# --- encryption ---------------------------------------------------------------------------

ENCRYPTION = [
    ("smime_encrypted.eml", True),
    ("pgp_mime_encrypted.eml", True),
    ("pgp_inline_encrypted.eml", True),
    ("smime_signed_only.eml", False),
    ("pgp_inline_signed_only.eml", False),
    ("plain_utf8_8bit.eml", False),
    ("with_png_and_log_attachments.eml", False),
]


@pytest.mark.parametrize(("name", "encrypted"), ENCRYPTION)
def test_is_encrypted(name: str, encrypted: bool) -> None:
    assert is_encrypted(parse(name).message) is encrypted


@pytest.mark.parametrize(
    ("content_type", "encrypted"),
    [
        ('application/x-pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"', True),
        ('application/pkcs7-mime; smime-type=authEnveloped-data; name="smime.p7m"', True),
        ('application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"', False),
        ('application/pkcs7-mime; name="smime.p7m"', True),
        ('application/pkcs7-mime; smime-type=compressed-data; name="smime.p7z"', False),
    ],
)
def test_smime_types(content_type: str, encrypted: bool) -> None:
    message = email.message_from_string(
        f"From: ana@compensar.example\nContent-Type: {content_type}\n\nMIAGCSqGSIb3DQEHA6CAMIACAQA=\n"
    )
    assert is_encrypted(message) is encrypted


def test_signed_only_mail_keeps_its_text() -> None:
    mail = parse("smime_signed_only.eml")
    assert "Explicación detallada del incidente: firmado pero no cifrado." in mail.text
    assert mail.attachments == []  # the signature is not evidence


# --- html_to_text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ("<p>Uno</p><p>Dos</p>", "Uno\n\nDos"),
        ("Uno<br>Dos<br/>Tres", "Uno\nDos\nTres"),
        ("<b>Nombre del Cliente:</b>&nbsp;Compensar", "Nombre del Cliente: Compensar"),
        (
            "<table><tr><td>A</td><td>B</td></tr><tr><td>C</td><td></td><td>D</td></tr></table>",
            "A\tB\nC\tD",
        ),
        ("<p>una línea\n   partida\tpor el editor</p>", "una línea partida por el editor"),
        ("<style>p {color: red}</style><script>x()</script><p>Hola</p>", "Hola"),
        ("<head><title>t</title><p>sin cerrar", "sin cerrar"),
        ("Caf&eacute; &amp; t&#233;", "Café & té"),
        ("", ""),
    ],
)
def test_html_to_text(markup: str, text: str) -> None:
    assert html_to_text(markup) == text


def test_a_layout_table_around_the_whole_mail_keeps_its_lines() -> None:
    markup = (
        "<table width='100%'><tr><td>"
        "<p><b>Nombre del Cliente:</b> Compensar</p><p><b>País/Región del Cliente:</b> Colombia</p>"
        "</td></tr></table><p>Saludos</p>"
    )
    assert html_to_text(markup) == (
        "Nombre del Cliente: Compensar\n\nPaís/Región del Cliente: Colombia\n\nSaludos"
    )


def test_table_cells_without_closing_tags() -> None:
    markup = "<table><tr><td>Nombre del Cliente<td>Compensar<tr><td>País<td>Chile</table>"
    assert html_to_text(markup) == "Nombre del Cliente\tCompensar\nPaís\tChile"


# --- never raises ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe",
        b"From  : broken\n\nbody",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nsin cierre",
        b"Subject: =?utf-8?b?!!!?=\nContent-Type: text/plain; charset=utf-99\n\n\xe9\xe8",
        b"Content-Type: text/html\n\n<p>" + b"<b>" * 5000,
        b"From x@y Thu Mar 12 09:00:00 2026\nSubject: mbox\n\ncuerpo",
        b"Subject: cr only\rContent-Type: text/plain\r\rcuerpo\r",
    ],
)
def test_broken_input_never_raises(raw: bytes) -> None:
    mail = parse_mail(raw)
    assert isinstance(mail.text, str)
    assert all(a.filename for a in mail.attachments)


def test_cr_only_line_ends_are_read() -> None:
    mail = parse_mail(b"Subject: cr only\rContent-Type: text/plain\r\rcuerpo\r")
    assert mail.subject == "cr only"
    assert mail.text.strip() == "cuerpo"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_mail(raw).text, str)
