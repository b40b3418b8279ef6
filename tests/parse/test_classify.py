"""classify: robots, bounces, receipts, lists and our own mail never open cases."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.parse.classify import (
    AUTO_REPLY,
    BOUNCE,
    BULK,
    LIST,
    NORMAL,
    OWN,
    RECEIPT,
    Classification,
    classify,
)
from tests.support.corpus import corpus, load

MESSAGES = Path(__file__).resolve().parent.parent / "messages"
OWN_ADDRESSES = frozenset(
    {"soporte-a@jd-services.eu", "soporte-b@jd-services.eu", "soporte-c@jd-services.eu"}
)
KINDS = {NORMAL, AUTO_REPLY, BOUNCE, LIST, BULK, OWN, RECEIPT}


def mail(headers: dict[str, str], body: str = "Hola, el correo no funciona.") -> Message:
    lines = [f"{name}: {value}" for name, value in headers.items()]
    text = "\n".join(lines) + "\n\n" + body + "\n"
    return email.message_from_string(text)


BASE = {
    "From": "Ana García <ana.garcia@cliente-ejemplo.es>",
    "To": "soporte-a@jd-services.eu",
    "Subject": "TEN-1001 Caída del servicio de correo",
    "Message-ID": "<1@cliente-ejemplo.es>",
}


# --- fixture mails -------------------------------------------------------------------------------

FIXTURES = {
    "auto/exchange_out_of_office_es.eml": AUTO_REPLY,
    "auto/gmail_vacation_es.eml": AUTO_REPLY,
    "auto/postfix_dsn_of_our_ack.eml": BOUNCE,
    "auto/exchange_ndr_es.eml": BOUNCE,
    "auto/qmail_bounce.eml": BOUNCE,
    "auto/outlook_read_receipt_es.eml": RECEIPT,
    "auto/own_ack_looped.eml": OWN,
    "auto/google_group_customer.eml": LIST,
    "auto/newsletter.eml": BULK,
    # A customer forwarding a bounce, or writing about "fuera de la oficina", wants a case.
    "auto/customer_forwards_bounce.eml": NORMAL,
    "auto/customer_out_of_office_topic.eml": NORMAL,
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_mail_is_classified(name: str) -> None:
    result = classify(load(MESSAGES / name), own_addresses=OWN_ADDRESSES)
    assert result.kind == FIXTURES[name], result.reason
    assert result.may_open_case is (FIXTURES[name] == NORMAL)
    assert result.may_get_auto_reply is (FIXTURES[name] == NORMAL)


@pytest.mark.parametrize("path", sorted((MESSAGES / "replies").glob("*.eml")), ids=lambda p: p.name)
def test_customer_and_staff_replies_are_normal(path: Path) -> None:
    assert classify(load(path), own_addresses=OWN_ADDRESSES) == Classification(NORMAL)


def test_every_auto_fixture_is_in_the_table() -> None:
    assert {f"auto/{p.name}" for p in (MESSAGES / "auto").glob("*.eml")} == set(FIXTURES)


# --- header rules --------------------------------------------------------------------------------

HEADER_CASES = [
    ({}, NORMAL),
    ({"Auto-Submitted": "auto-replied"}, AUTO_REPLY),
    ({"Auto-Submitted": "auto-generated"}, AUTO_REPLY),
    ({"Auto-Submitted": "auto-notified; owner-email=x@y.es"}, AUTO_REPLY),
    ({"Auto-Submitted": "no"}, NORMAL),
    ({"Auto-Submitted": "No"}, NORMAL),
    ({"X-Autoreply": "yes"}, AUTO_REPLY),
    ({"X-Autorespond": "Respuesta automática"}, AUTO_REPLY),
    ({"X-Auto-Response-Suppress": "All"}, AUTO_REPLY),
    # Outlook puts partial values on ordinary mail (meeting requests): not enough alone.
    ({"X-Auto-Response-Suppress": "DR, RN, NRN, OOF, AutoReply"}, NORMAL),
    ({"Precedence": "bulk"}, BULK),
    ({"Precedence": "junk"}, BULK),
    ({"Precedence": "list"}, LIST),
    ({"Precedence": "auto_reply"}, AUTO_REPLY),
    ({"List-Id": "<sistemas.cliente-ejemplo.es>"}, LIST),
    ({"List-Post": "<mailto:sistemas@cliente-ejemplo.es>"}, LIST),
    ({"List-Unsubscribe": "<mailto:baja@news.example>"}, BULK),
    ({"X-Apple-Action": "VACATION"}, AUTO_REPLY),
    # Out-of-office subjects need a second sign.
    ({"Subject": "Respuesta automática: [Caso 12] Caída"}, NORMAL),
    ({"Subject": "Respuesta automática: [Caso 12] Caída", "Return-Path": "<>"}, AUTO_REPLY),
    ({"Subject": "Fuera de la oficina", "X-Auto-Response-Suppress": "OOF"}, AUTO_REPLY),
    ({"Subject": "Out of Office: [Caso 12]", "X-MS-Exchange-Inbox-Rules-Loop": "a@b.es"}, AUTO_REPLY),
    ({"Subject": "Automatic reply: [Caso 12]", "Return-Path": "<>"}, AUTO_REPLY),
    ({"Subject": "Abwesenheitsnotiz: [Caso 12]", "Return-Path": "<>"}, AUTO_REPLY),
    ({"Subject": "=?iso-8859-1?Q?Respuesta_autom=E1tica:_Ca=EDda?=", "Return-Path": "<>"}, AUTO_REPLY),
    # Our own mail.
    ({"X-Loop": "soporte-a@jd-services.eu"}, OWN),
    ({"X-Loop": "helpdesk@otra-empresa.example"}, NORMAL),
    ({"From": "Mesa de Soporte <Soporte-B+40@JD-Services.eu>"}, OWN),
    ({"From": "Mesa de Soporte <soporte-a@jd-services.eu>", "Auto-Submitted": "auto-replied"}, OWN),
    # Bounces by their sender and words, without a DSN part.
    ({"From": "MAILER-DAEMON@mx.cliente.es", "Subject": "Undelivered Mail Returned to Sender"}, BOUNCE),
    ({"From": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>", "Subject": "x"}, NORMAL),
    ({"Return-Path": "<>", "Subject": "Returned mail: see transcript for details"}, BOUNCE),
    ({"Subject": "Undeliverable: [Caso 12] Caída"}, NORMAL),
    ({"Subject": "RE: Undeliverable: [Caso 12] Caída"}, NORMAL),
]


@pytest.mark.parametrize(("headers", "kind"), HEADER_CASES)
def test_header_rules(headers: dict[str, str], kind: str) -> None:
    result = classify(mail({**BASE, **headers}), own_addresses=OWN_ADDRESSES)
    assert result.kind == kind, result.reason
    if kind != NORMAL:
        assert result.reason


def test_mailer_daemon_with_dsn_text_is_a_bounce() -> None:
    body = (
        "This is the mail system at host mx.cliente.es.\n\nI'm sorry to have to inform you that "
        "your message could not be delivered.\n\n<ana@cliente.es>: 550 5.1.1 User unknown\n"
    )
    headers = {**BASE, "From": "Mail Delivery System <MAILER-DAEMON@mx.cliente.es>",
               "Subject": "Mensaje no entregado"}
    assert classify(mail(headers, body)).kind == BOUNCE


def test_a_postmaster_writing_like_a_person_is_normal() -> None:
    headers = {**BASE, "From": "Postmaster Cliente <postmaster@cliente-ejemplo.es>",
               "Subject": "TEN-1001 Nuestro servidor rechaza correo"}
    body = "Hola, desde esta mañana nuestro servidor rechaza el correo entrante. ¿Podéis mirarlo?"
    assert classify(mail(headers, body)).kind == NORMAL


def test_null_envelope_sender_counts_as_a_sign() -> None:
    headers = {**BASE, "Subject": "Fuera de la oficina: [Caso 12]"}
    assert classify(mail(headers)).kind == NORMAL
    assert classify(mail(headers), envelope_sender="").kind == AUTO_REPLY


def test_own_addresses_may_be_empty() -> None:
    assert classify(mail({**BASE, "X-Loop": "soporte-a@jd-services.eu"})).kind == NORMAL


# --- properties ---------------------------------------------------------------------------------

_HEADER_NAMES = st.sampled_from(
    [
        "From", "To", "Subject", "Return-Path", "Auto-Submitted", "Precedence", "X-Loop",
        "List-Id", "Content-Type", "X-Auto-Response-Suppress", "X-Autoreply", "Received",
    ]
)
_VALUES = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=60
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(_HEADER_NAMES, _VALUES), max_size=8), st.text(max_size=300))
def test_never_raises_on_arbitrary_headers(headers: list[tuple[str, str]], body: str) -> None:
    text = "".join(f"{name}: {value}\n" for name, value in headers) + "\n" + body
    result = classify(email.message_from_string(text), own_addresses=OWN_ADDRESSES)
    assert result.kind in KINDS


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=600))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert classify(message, own_addresses=OWN_ADDRESSES, envelope_sender="").kind in KINDS


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(["multipart/report", "multipart/mixed", "message/rfc822", "text/plain"]),
    st.sampled_from(["delivery-status", "disposition-notification", "feedback-report", ""]),
    st.binary(max_size=400),
)
def test_never_raises_on_broken_reports(ctype: str, rtype: str, payload: bytes) -> None:
    head = f"From: x@y.es\nContent-Type: {ctype}; report-type={rtype}; boundary=\"b\"\n\n"
    raw = head.encode() + b"--b\nContent-Type: message/delivery-status\n\n" + payload + b"\n--b--"
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert classify(message).kind in KINDS


# --- shared corpus ------------------------------------------------------------------------------

# Where we part from sisimai on purpose, and why.
SISIMAI_DIVERGENCES = {
    # A person forwarding a bounce ("Fwd: Returned mail …") to ask about it: a case.
    "lhost-sendmail-14.eml": NORMAL,
    # fml mailing-list notices: list mail, which never opens a case either.
    "lhost-fml-02.eml": LIST,
    "lhost-fml-03.eml": LIST,
    # An "unsubscribe" complaint sent as an auto-reply: no case either way.
    "arf-26.eml": AUTO_REPLY,
}


def _sisimai_expected() -> dict[str, str]:
    base = corpus("sisimai")
    expected = json.loads((base / "expected_results.json").read_text())
    return {
        path: AUTO_REPLY if entries[0]["reason"] == "vacation" else BOUNCE
        for path, entries in expected.items()
    }


@pytest.mark.corpus
@pytest.mark.parametrize("variant", ["bsd", "dos", "mac"])
def test_sisimai_bounces_and_vacations(variant: str) -> None:
    base = corpus("sisimai")
    wrong: dict[str, str] = {}
    total = 0
    for path, kind in _sisimai_expected().items():
        file = base / path.replace("/bsd/", f"/{variant}/")
        if not file.exists():  # dos/ and mac/ hold a subset
            continue
        total += 1
        got = classify(load(file)).kind
        if got != kind:
            wrong[file.name] = got
    assert total > 50
    assert wrong == {k: v for k, v in SISIMAI_DIVERGENCES.items() if k in wrong}
    assert set(wrong) <= set(SISIMAI_DIVERGENCES)


@pytest.mark.corpus
def test_sisimai_not_bounces() -> None:
    base = corpus("sisimai")
    for path in json.loads((base / "expected_not_bounce.json").read_text()):
        assert classify(load(base / path)).kind == NORMAL, path


@pytest.mark.corpus
def test_sisimai_unreadable_ones_do_not_raise() -> None:
    base = corpus("sisimai") / "set-of-emails"
    files = [*base.glob("maildir/err/*"), *base.glob("to-be-debugged-because/**/*")]
    for file in files:
        if file.is_file():
            assert classify(load(file)).kind in KINDS


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("vacation-reply.eml", AUTO_REPLY),
        ("disposition-notification.eml", RECEIPT),
        ("html_only.eml", NORMAL),
    ],
)
def test_imap_to_webhook(name: str, kind: str) -> None:
    assert classify(load(corpus("imap-to-webhook") / name)).kind == kind


@pytest.mark.corpus
def test_talon_replies_are_normal() -> None:
    base = corpus("talon")
    for file in [*base.glob("standard_replies/*.eml"), base / "reply-quotations-share-block.eml"]:
        assert classify(load(file)).kind == NORMAL, file.name
