"""parse_bounce: which address failed, why, and which of our mails it was."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.parse.bounces import BounceInfo, parse_bounce
from tests.support.corpus import corpus, load

MESSAGES = Path(__file__).resolve().parent.parent / "messages"


@pytest.mark.parametrize(
    ("name", "recipients", "status", "hard", "original"),
    [
        # Postfix DSN of our acknowledgement: the customer's address has a typo.
        (
            "postfix_dsn_of_our_ack.eml",
            ["ana.garsia@cliente-ejemplo.es"],
            "5.1.1",
            True,
            "<caso-12.1741000100.d4e5f6@jd-services.eu>",
        ),
        # Exchange NDR in Spanish: mailbox full is permanent for this mail, not for the address.
        (
            "exchange_ndr_es.eml",
            ["luis.perez@cliente-ejemplo.es"],
            "5.2.2",
            False,
            "<caso-40.1741000300.a9b8c7@jd-services.eu>",
        ),
        # qmail: no DSN, the original follows the prose.
        (
            "qmail_bounce.eml",
            ["jorge.ruis@cliente-ejemplo.es"],
            "5.1.1",
            True,
            "<caso-55.1741000400.f0e1d2@jd-services.eu>",
        ),
    ],
)
def test_bounce_fixture(
    name: str, recipients: list[str], status: str, hard: bool, original: str
) -> None:
    info = parse_bounce(load(MESSAGES / "auto" / name))
    assert info is not None
    assert info.recipients == recipients
    assert info.status == status
    assert info.hard is hard
    assert info.original_message_id == original
    assert info.diagnostic


@pytest.mark.parametrize(
    "name",
    [
        "exchange_out_of_office_es.eml",
        "gmail_vacation_es.eml",
        "outlook_read_receipt_es.eml",
        "customer_forwards_bounce.eml",
        "customer_out_of_office_topic.eml",
        "newsletter.eml",
    ],
)
def test_not_a_bounce(name: str) -> None:
    assert parse_bounce(load(MESSAGES / "auto" / name)) is None


def test_delayed_is_not_hard() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.jd-services.eu\nTo: soporte-a@jd-services.eu\n"
        "Subject: Delayed Mail (still being retried)\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nStill trying.\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        "Final-Recipient: rfc822; ana@cliente.es\nAction: delayed\nStatus: 4.4.1\n"
        "--b--\n"
    )
    info = parse_bounce(email.message_from_string(raw))
    assert info == BounceInfo(
        recipients=["ana@cliente.es"], status="4.4.1", hard=False, action="delayed", kind="dsn"
    )


def test_generic_status_gives_way_to_the_servers_code() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.jd-services.eu\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        "Final-Recipient: rfc822; ana@cliente.es\nAction: failed\nStatus: 5.0.0\n"
        "Diagnostic-Code: smtp; 550 5.7.1 Message rejected as spam\n--b--\n"
    )
    info = parse_bounce(email.message_from_string(raw))
    assert info is not None and info.status == "5.7.1" and info.hard is False


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=800))
def test_never_raises(raw: bytes) -> None:
    head = b"From: MAILER-DAEMON@x\nSubject: Undelivered Mail Returned to Sender\n"
    head += b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n--b\n'
    result = parse_bounce(email.message_from_bytes(head + raw, policy=email.policy.compat32))
    assert result is None or isinstance(result, BounceInfo)


# --- shared corpus: sisimai ---------------------------------------------------------------------

# sisimai writes "5.0.9xx"/"4.0.9xx" when a bounce carries no status code at all; we say None.
def _pseudo(status: str) -> bool:
    return status == "" or status[1:].startswith(".0.9")


@pytest.mark.corpus
def test_sisimai_details() -> None:
    """Shares measured on sisimai's bounces; the floors guard against regressions."""
    base = corpus("sisimai")
    expected = json.loads((base / "expected_results.json").read_text())
    files = counted = status_total = status_right = hard_right = with_id = 0
    for path, entries in expected.items():
        if entries[0]["reason"] == "vacation":
            continue
        files += 1
        info = parse_bounce(load(base / path))
        if info is None:
            continue
        counted += len(info.recipients) == len(entries)
        if not _pseudo(entries[0]["deliverystatus"]):
            status_total += 1
            status_right += info.status == entries[0]["deliverystatus"]
        hard_right += info.hard is entries[0]["hardbounce"]
        with_id += info.original_message_id is not None
    assert files == 583
    assert counted / files >= 0.96  # measured 562/583
    assert status_right / status_total >= 0.93  # measured 405/430
    assert hard_right / files >= 0.82  # measured 485/583 (sisimai's "filtered" differs)
    assert with_id / files >= 0.82  # measured 486/583; most others carry no copy with an id
