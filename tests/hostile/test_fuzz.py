"""Fuzz target for the parse → extract path (hypothesis, bounded: 200 examples, no deadline).

Mails are built from pieces that matter to the parser: hostile header values (encoded
words, control characters, 8-bit bytes), any charset and transfer encoding, nested or
broken multiparts, and bodies made of the template's own labels mixed with noise. The
whole reading the pipeline does must never raise, and must stay fast.
"""

from __future__ import annotations

import base64
import os
import quopri
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.parse.classify import classify
from mailbridge.parse.mime import ParsedMail, parse_mail
from mailbridge.parse.quotes import strip_quotes
from mailbridge.parse.secrets import redact_secrets
from mailbridge.parse.template import extract_fields
from mailbridge.rules import load_rules
from tests.hostile.helpers import REPO, report

RULES = load_rules(REPO / "rules.yaml")
SPECS = RULES.template.fields
LABELS = [f.label for f in SPECS] + [s for f in SPECS for s in f.synonyms]
EXAMPLES = int(os.environ.get("MAILBRIDGE_FUZZ_EXAMPLES", "200"))
PER_MAIL_LIMIT = 5.0  # seconds; the slowest seen is recorded in the report
SLOWEST: list[float] = [0.0]

_noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
_header_value = st.one_of(
    _noise.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.tuples(st.sampled_from(["utf-8", "iso-8859-1", "x-unknown", "utf-7", ""]),
              st.sampled_from(["q", "b", "Q", "x"]), st.binary(max_size=40)).map(
        lambda t: f"=?{t[0]}?{t[1]}?".encode() + base64.b64encode(t[2]) + b"?="),
    st.sampled_from([b"", b"\x00", b"a\rb", b"x" * 2000, b"<>", b"=?", b'"\\', b";;;=,",
                     b"Ana <ana@compensar.example>, <>, @@, \"a\"@b", b"<\x00@x>"]),
)
_headers = st.lists(st.tuples(
    st.sampled_from(["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References",
                     "Reply-To", "Date", "Auto-Submitted", "Precedence", "X-Loop", "List-Id",
                     "Return-Path", "Content-Type", "X-Autoreply", "X-Auto-Response-Suppress"]),
    _header_value), max_size=10)
_body_text = st.lists(st.one_of(
    st.sampled_from(LABELS).map(lambda label: label + ":"),
    st.sampled_from(["\n", "\n\n", " – ", "> ", "El lun, 3 mar 2026 a las 9:00, Ana escribió:",
                     "-----Original Message-----", "De: Ana\nEnviado: hoy", "contraseña: s3cr3t!",
                     "-----BEGIN RSA PRIVATE KEY-----", "URGENTE", "gravedad 1", "12/03/2026 08:15",
                     "hora Colombia", "TEN-1001", "[Caso 7]", "gracias", "=?utf-8?q?x?="]),
    _noise,
), max_size=40).map("".join)
_charset = st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "x-unknown", "utf-16", ""])
_cte = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary"])


@st.composite
def _part(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth < 3 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["b1", "b2", "", "x" * 80, "b1"])).encode()
        children = draw(st.lists(_part(depth + 1), max_size=3))
        inner = b"".join(b"--" + boundary + b"\r\n" + c + b"\r\n" for c in children)
        closing = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b""]))
        subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"report"]))
        return (b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n\r\n'
                + inner + closing)
    ctype = draw(st.sampled_from(["text/plain", "text/html", "application/pdf",
                                  "message/rfc822", "image/png", "text/enriched"]))
    charset, cte = draw(_charset), draw(_cte)
    text = draw(_body_text)
    if ctype == "text/html":
        text = f"<html><body><p>{text}</p><table><tr><td>{text[:40]}</td></tr></table>"
    codec = charset if charset not in ("", "x-unknown") else "utf-8"
    payload = text.encode(codec, "replace")
    if cte == "base64":
        payload = base64.encodebytes(payload) + draw(st.sampled_from([b"", b"!!", b"=", b"\x00"]))
    elif cte == "quoted-printable":
        payload = quopri.encodestring(payload) + draw(st.sampled_from([b"", b"=Z", b"="]))
    name = draw(st.one_of(st.none(), _header_value))
    disposition = (b'Content-Disposition: attachment; filename="' + name + b'"\r\n'
                   if name is not None else b"")
    return (f"Content-Type: {ctype}; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n".encode() + disposition + b"\r\n" + payload)


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in draw(_headers))
    body = draw(_part())
    raw = head + b"MIME-Version: 1.0\r\n" + body
    return draw(st.sampled_from([raw, raw.replace(b"\r\n", b"\n"), raw.replace(b"\r\n", b"\r"),
                                 b"From sender Tue Nov 10\n" + raw]))


def read_like_the_pipeline(raw: bytes) -> ParsedMail:
    mail = parse_mail(raw)
    classify(mail.message, own_addresses=RULES.own_addresses, envelope_sender="")
    text = strip_quotes(mail.text)
    body, kinds = redact_secrets(text)
    assert isinstance(body, str) and isinstance(kinds, list)
    found = extract_fields(body, SPECS, reference=mail.date)
    assert isinstance(found.values, dict) and isinstance(found.missing, list)
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert "\r" not in mail.from_name and "\n" not in mail.from_name
    for attachment in mail.attachments:
        assert "/" not in attachment.filename and "\\" not in attachment.filename
    return mail


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=False, database=None)
@given(mails())
def test_parse_extract_never_raises(raw: bytes) -> None:
    started = time.monotonic()
    read_like_the_pipeline(raw)
    seconds = time.monotonic() - started
    SLOWEST[0] = max(SLOWEST[0], seconds)
    assert seconds < PER_MAIL_LIMIT


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.binary(max_size=4000))
def test_parse_extract_never_raises_on_bytes(raw: bytes) -> None:
    read_like_the_pipeline(raw)


def test_fuzz_report() -> None:
    report("fuzz", target="parse_mail → classify → strip_quotes → redact_secrets → extract_fields",
           examples=f"{EXAMPLES} structured mails + {EXAMPLES} raw byte strings",
           slowest_structured_s=round(SLOWEST[0], 3))
