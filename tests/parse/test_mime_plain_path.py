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
    assert "unknown_charset_x_unknown.eml" not in plain  # reported by mail-parser: its way
