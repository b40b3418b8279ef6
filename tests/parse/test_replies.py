"""Threading helpers: subjects, case tokens, thanks-only replies, staff commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.parse.mime import parse_mail
from mailbridge.parse.quotes import strip_quotes
from mailbridge.parse.replies import (
    StaffCommand,
    find_case_number,
    is_thanks_only,
    normalise_subject,
    parse_staff_commands,
)

REPLIES = Path(__file__).resolve().parent.parent / "messages" / "replies"
ORIGINAL_ID = "<caso-12.1741000000.a1b2c3@jd-services.eu>"
ACK_ID = "<caso-12.1741000100.d4e5f6@jd-services.eu>"
CASE_SUBJECT = "ten-1001 caída del servicio de correo"


@pytest.mark.parametrize("path", sorted(REPLIES.glob("*.eml")), ids=lambda p: p.name)
def test_reply_fixture_threads_to_case_12(path: Path) -> None:
    """Every client's reply-all keeps what the desk threads on."""
    mail = parse_mail(path.read_bytes())
    assert find_case_number(mail.subject) == 12
    assert normalise_subject(mail.subject) == CASE_SUBJECT
    assert mail.in_reply_to == ACK_ID
    assert mail.references[:2] == [ORIGINAL_ID, ACK_ID]


def test_staff_reply_commands_come_out_of_the_new_text() -> None:
    mail = parse_mail((REPLIES / "staff_commands_es.eml").read_bytes())
    commands, text = parse_staff_commands(strip_quotes(mail.text))
    assert commands == [
        StaffCommand("estado", ["resuelto"], "#estado resuelto"),
        StaffCommand("prioridad", ["B"], "#prioridad B"),
    ]
    assert text.startswith("Hola Ana,\n\nEl proveedor ha corregido")
    assert "#" not in text


@pytest.mark.parametrize(
    ("subject", "normalised"),
    [
        ("RE: [Caso 12] TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("RV: RE: [Caso 12] TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("Re: Re: re:  [caso #12]   TEN-1001 Caída del   servicio de correo ", CASE_SUBJECT),
        ("RE[2]: AW: WG: Rif: R: [Caso 12] TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("Fwd: FW: Reenviado: TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("[EXTERNAL] RE: [Caso 12] TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("RE: [EXTERNO] [Caso 12] TEN-1001 CAÍDA DEL SERVICIO DE CORREO", CASE_SUBJECT),
        ("EXTERNAL: Re: TEN-1001 Caída del servicio de correo [Caso 12]", CASE_SUBJECT),
        ("Re：TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("[SPAM?] [Posible phishing] RE: TEN-1001 Caída del servicio de correo", CASE_SUBJECT),
        ("RE: [TEN-1001] Caída del servicio", "[ten-1001] caída del servicio"),
        ("Respuesta: ¿Cuándo vuelve el servicio?", "respuesta: ¿cuándo vuelve el servicio?"),
        ("Cambio de hosting a facturación anual", "cambio de hosting a facturación anual"),
        ("", ""),
        ("RE:", ""),
    ],
)
def test_normalise_subject(subject: str, normalised: str) -> None:
    assert normalise_subject(subject) == normalised


def test_normalise_subject_other_token() -> None:
    assert normalise_subject("RE: [Ticket 7] Hola", case_token="Ticket") == "hola"
    assert normalise_subject("RE: [Ticket 7] Hola") == "[ticket 7] hola"


@pytest.mark.parametrize(
    ("subject", "number"),
    [
        ("[Caso 123] TEN-1001 Caída", 123),
        ("RE: RV: [Caso 123] TEN-1001 Caída", 123),
        ("[caso #123] x", 123),
        ("[CASO Nº 123] x", 123),
        ("[Caso: 123] x", 123),
        ("[Soporte - Caso 123] x", 123),
        ("Re: TEN-1001 Caída [Caso 0042]", 42),
        ("Caso 123 sin corchetes", None),
        ("[Caso] sin número", None),
        ("[Casos 123] otra palabra", None),
        ("TEN-1001 Caída", None),
        ("", None),
    ],
)
def test_find_case_number(subject: str, number: int | None) -> None:
    assert find_case_number(subject) == number


def test_find_case_number_other_token() -> None:
    assert find_case_number("RE: [Ticket 9] x", case_token="Ticket") == 9
    assert find_case_number("RE: [Ticket 9] x") is None


@pytest.mark.parametrize(
    "text",
    [
        "gracias",
        "Gracias.",
        "Muchas gracias!",
        "¡Muchísimas gracias!",
        "Mil gracias",
        "thanks",
        "Thank you",
        "Thank you very much!",
        "ok gracias, saludos",
        "Ok, gracias. Un saludo",
        "Perfecto, muchas gracias por la rápida respuesta.",
        "¡Gracias, Carla!",
        "Hola Carla,\n\nMuchas gracias por la ayuda.\n\nUn saludo,\nAna",
        "ok gracias, saludos\n\nAna García\nResponsable de Sistemas | Cliente Ejemplo S.L.\n"
        "Tel. +34 600 000 001\nana.garcia@cliente-ejemplo.es",
        "Gracias\n\n-- \nJorge Ruiz\nCliente Ejemplo S.L.",
        "Muchas gracias\n\nEnviado desde mi iPhone",
        "Gracias!\n\nEl lun, 2 mar 2026 a las 10:15, Mesa de Soporte <soporte-a@jd-services.eu>"
        " escribió:\n\n> Cerramos el caso.",
    ],
)
def test_thanks_only(text: str) -> None:
    assert is_thanks_only(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ok",
        "Recibido",
        "Gracias. Pero sigue fallando el envío desde Outlook.",
        "Gracias, ¿cuándo lo cerráis?",
        "thanks, when will it be fixed",
        "Gracias\n\nOtra cosa: el servidor de Madrid tampoco responde.",
        "Gracias, ya funciona.",
        "Muchas gracias. Os adjunto el log del error 550.",
        "Gracias\nsigue igual",
        "Gracias " * 200,
    ],
)
def test_not_thanks_only(text: str) -> None:
    assert is_thanks_only(text) is False


@pytest.mark.parametrize(
    ("text", "commands", "rest"),
    [
        (
            "#estado resuelto\n#prioridad A\n\nHola Ana,\nya está.",
            [
                StaffCommand("estado", ["resuelto"], "#estado resuelto"),
                StaffCommand("prioridad", ["A"], "#prioridad A"),
            ],
            "Hola Ana,\nya está.",
        ),
        (
            "Escalamos al proveedor.\n  #escalar hibot\nSaludos",
            [StaffCommand("escalar", ["hibot"], "#escalar hibot")],
            "Escalamos al proveedor.\nSaludos",
        ),
        (
            "#Estado: En espera cliente",
            [StaffCommand("estado", ["En", "espera", "cliente"], "#Estado: En espera cliente")],
            "",
        ),
        ("El ticket #123 y el canal #soporte siguen igual.", [], None),
        ("# Título\n#123\n#\n", [], None),
        ("> #estado resuelto\nrespuesta", [], None),
        ("sin comandos", [], None),
    ],
)
def test_parse_staff_commands(text: str, commands: list[StaffCommand], rest: str | None) -> None:
    found, remaining = parse_staff_commands(text)
    assert found == commands
    assert remaining == (text if rest is None else rest)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_normalise_subject_is_idempotent_and_never_raises(subject: str) -> None:
    once = normalise_subject(subject)
    assert normalise_subject(once) == once
    assert find_case_number(subject) is None or isinstance(find_case_number(subject), int)


_TOPIC = st.text(
    alphabet=st.characters(blacklist_characters="[]\r\n", blacklist_categories=("Cs",)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=10**9),
    st.lists(st.sampled_from(["RE: ", "RV: ", "Fwd: ", "AW: ", "R: ", "[EXTERNAL] "]), max_size=4),
    _TOPIC,
)
def test_case_number_survives_prefixes(number: int, prefixes: list[str], topic: str) -> None:
    subject = "".join(prefixes) + f"[Caso {number}] {topic}"
    assert find_case_number(subject) == number
    assert normalise_subject(subject) == normalise_subject(topic)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_text_helpers_never_raise(text: str) -> None:
    assert isinstance(is_thanks_only(text), bool)
    commands, rest = parse_staff_commands(text)
    assert all(command.line.startswith("#") for command in commands)
    assert isinstance(rest, str)
