"""The stdlib-only reading of plain mail gives what the mail-parser reading gives."""

from __future__ import annotations

from pathlib import Path

import pytest

import mailbridge.parse.mime as mime

MESSAGES = Path(__file__).resolve().parent.parent / "messages"
FILES = sorted(p for p in MESSAGES.rglob("*.eml") if p.is_file())


def _seen(mail: mime.ParsedMail) -> tuple[object, ...]:
    return (
        mail.message_id, mail.in_reply_to, mail.references, mail.subject, mail.from_addr,
        mail.from_name, mail.to, mail.cc, mail.reply_to, mail.date, mail.text, mail.html,
        [(a.filename, a.content_type, a.payload, a.inline, a.content_id) for a in mail.attachments],
        mail.defects,
    )


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(MESSAGES)) for p in FILES])
def test_plain_path_reads_like_mail_parser(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = path.read_bytes()
    fast = mime.parse_mail(raw)
    monkeypatch.setattr(mime, "_parse_plain", lambda message: None)
    assert _seen(fast) == _seen(mime.parse_mail(raw))


def test_most_fixture_openings_take_the_plain_path() -> None:
    import email
    import email.policy

    plain = [
        p.name for p in sorted((MESSAGES / "opening").glob("*.eml"))
        if mime._parse_plain(email.message_from_bytes(p.read_bytes(),
                                                      policy=email.policy.compat32))
    ]
    assert "plain_utf8_8bit.eml" in plain and "gmail_multipart_alternative.eml" in plain
    # Charsets are read by mailbridge.parse.charsets in both readings: one mail-parser
    # would report (an unknown charset) is plain as well.
    assert "unknown_charset_x_unknown.eml" in plain


def _big_mail(body_b64: bytes) -> bytes:
    return (
        b"From: Ana <ana@compensar.example>\r\nTo: soporte-a@mesa.example\r\n"
        b"Subject: TEN-1001 video\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nExplicaci\xc3\xb3n: ver video\r\n"
        b'--b1\r\nContent-Type: video/mp4; name="falla.mp4"\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="falla.mp4"\r\n\r\n'
        + body_b64 + b"\r\n--b1--\r\n"
    )


def test_large_attachment_is_decoded_from_the_raw_bytes_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import base64
    import os

    data = os.urandom(1_200_000)
    raw = _big_mail(base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip())
    assert mime._parse_large(raw) is not None  # cut, not parsed line by line
    fast = mime.parse_mail(raw)
    assert fast.attachments[0].payload == data and "Explicación" in fast.text
    monkeypatch.setattr(mime, "_parse_large", lambda raw: None)
    assert _seen(fast) == _seen(mime.parse_mail(raw))


def test_large_body_that_is_not_clean_base64_is_read_whole() -> None:
    import base64
    import os

    encoded = base64.encodebytes(os.urandom(1_200_000)).replace(b"\n", b"\r\n").rstrip()
    broken = encoded[:5000] + b"=\r\n" + encoded[5000:]  # padding in the middle
    assert mime._parse_large(_big_mail(broken)) is None
    assert mime._parse_large(_big_mail(encoded[:-1])) is None  # not whole quanta
