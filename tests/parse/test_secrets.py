"""Secrets in a mail body are redacted before storage; ordinary support Spanish is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.parse.mime import parse_mail
from mailbridge.parse.secrets import REDACTED, redact_secrets

OPENING = Path(__file__).resolve().parent.parent / "messages" / "opening"

PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)

# (text as written, text as stored, kinds the sender is told about)
REDACTIONS = [
    ("Contraseña: Hola123!", f"Contraseña: {REDACTED}", ["contraseña"]),
    ("contraseña: verano", f"contraseña: {REDACTED}", ["contraseña"]),
    ("CONTRASEÑA = Pa$$w0rd", f"CONTRASEÑA = {REDACTED}", ["contraseña"]),
    ("password=hunter2", f"password={REDACTED}", ["contraseña"]),
    ("pwd: s3cr3t", f"pwd: {REDACTED}", ["contraseña"]),
    ("Clave: Xy7#kq", f"Clave: {REDACTED}", ["contraseña"]),
    ("mi contraseña es Hola2026", f"mi contraseña es {REDACTED}", ["contraseña"]),
    (
        "usuario: admin contraseña: Ana2026* (la de siempre)",
        f"usuario: admin contraseña: {REDACTED} (la de siempre)",
        ["contraseña"],
    ),
    ("PIN: 4321", f"PIN: {REDACTED}", ["contraseña"]),
    (
        "https://admin:S3cret@panel.compensar.example/login",
        f"https://admin:{REDACTED}@panel.compensar.example/login",
        ["contraseña"],
    ),
    (
        "Authorization: Bearer abcdefghijklmnop1234567890",
        f"Authorization: Bearer {REDACTED}",
        ["token"],
    ),
    (
        "token: 4f9a1c2e8b7d6a5f4e3d2c1b0a9f8e7d",
        f"token: {REDACTED}",
        ["token"],
    ),
    ("AKIAIOSFODNN7EXAMPLE", REDACTED, ["clave de API"]),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        f"aws_secret_access_key = {REDACTED}",
        ["clave de API"],
    ),
    ("el token ghp_" + "a1B2" * 9 + " ya no sirve", f"el token {REDACTED} ya no sirve", ["token"]),
    ("xoxb-1234567890-abcdefghij", REDACTED, ["token"]),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        f"jwt {REDACTED}",
        ["token"],
    ),
    (
        "clave de API: AIzaSyA1234567890abcdefghijklmnopqrstu",
        f"clave de API: {REDACTED}",
        ["clave de API"],
    ),
    (f"La llave:\n{PRIVATE_KEY}\nGracias", f"La llave:\n{REDACTED}\nGracias", ["clave privada"]),
    (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAA\n\nfin",
        f"{REDACTED}\n\nfin",
        ["clave privada"],
    ),
    (
        "Contraseña: Abc12345\ntoken: 4f9a1c2e8b7d6a5f4e3d2c1b0a9f8e7d",
        f"Contraseña: {REDACTED}\ntoken: {REDACTED}",
        ["contraseña", "token"],
    ),
]


@pytest.mark.parametrize(("text", "stored", "kinds"), REDACTIONS)
def test_secrets_are_redacted(text: str, stored: str, kinds: list[str]) -> None:
    assert redact_secrets(text) == (stored, kinds)


# Ordinary support mail: nothing to redact.
NOT_SECRETS = [
    "olvidé mi contraseña",
    "Olvidé mi contraseña y no puedo entrar.",
    "La contraseña es incorrecta según el portal.",
    "la contraseña es nueva",
    "Contraseña: restablecida por el usuario ayer",
    "Contraseña: ninguna",
    "Contraseña: ********",
    "No debe proporcionarnos ninguna contraseña, clave o información sensible",
    "La clave del problema es que el DNS no resuelve.",
    "Palabra clave: correo",
    "Punto clave: la cola crece.",
    "El token expiró ayer y el usuario no puede entrar.",
    "Hay que renovar el token de acceso del conector.",
    "Contraseña de Wi-Fi cambiada por el área de TI.",
    "Les pasamos el log completo del servidor.",
    "Número de pedido 4f9a1c2e8b7d6a5f",
    "Explicación detallada del incidente: el usuario olvidó su clave y la bloqueó.",
    "ID de transacción: 20260312-000123",
    "Datos de Contacto del LCCD responsable del caso: Ana – ana@compensar.example – 300 123 4567",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_support_spanish_is_not_redacted(text: str) -> None:
    assert redact_secrets(text) == (text, [])


def test_fixture_with_a_password_is_stored_without_it() -> None:
    parsed = parse_mail((OPENING / "password_inside.eml").read_bytes())
    stored, kinds = redact_secrets(parsed.text)
    assert "Compensar2026*" not in stored
    assert "AKIAIOSFODNN7EXAMPLE" not in stored
    assert f"Contraseña: {REDACTED}" in stored
    assert "Olvidé mi contraseña anterior y ya la cambié dos veces." in stored
    assert "usuario: admin.compensar" in stored  # a user name is not a secret
    assert kinds == ["contraseña", "clave de API"]


@pytest.mark.parametrize(
    "name", ["plain_utf8_8bit.eml", "html_only_outlook.eml", "base64_utf8.eml"]
)
def test_clean_opening_mails_are_unchanged(name: str) -> None:
    text = parse_mail((OPENING / name).read_bytes()).text
    assert redact_secrets(text) == (text, [])


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_redaction_never_raises(text: str) -> None:
    stored, kinds = redact_secrets(text)
    assert isinstance(stored, str)
    assert (stored == text) == (not kinds)


def test_non_string_input() -> None:
    assert redact_secrets(None) == ("", [])  # type: ignore[arg-type]


def test_a_password_after_another_label_on_the_same_line_is_found() -> None:
    """A label followed by a description or another label used to hide the password that
    came after it on the same line (the whole line was taken as one match)."""
    for text, kept in [
        ("Mi contraseña: la nueva contraseña es Abc123!", "Mi contraseña: la nueva contraseña es"),
        ("la clave es contraseña: Hunter2!x", "la clave es contraseña:"),
        ("contraseña: Abc123! y pin: 4321", "contraseña:"),
    ]:
        redacted, kinds = redact_secrets(text)
        assert kinds == ["contraseña"]
        assert "Abc123!" not in redacted and "Hunter2!x" not in redacted and "4321" not in redacted
        assert redacted.startswith(kept)
    assert redact_secrets("la contraseña es incorrecta") == ("la contraseña es incorrecta", [])
