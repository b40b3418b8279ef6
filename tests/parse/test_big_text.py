"""Big text bodies: only their head is read (issue 21.5); the rest of the mail is read as
before, and what is left out is counted."""

from __future__ import annotations

import tracemalloc
from email.message import EmailMessage

import pytest

import mailbridge.parse.mime as mime
from mailbridge.parse.mime import TEXT_LIMIT, parse_mail

LINE = "Línea 00000 del registro: error de conexión al servidor de reportes (código 504).\n"


def log_text(size: int) -> str:
    lines = []
    total = 0
    number = 0
    while total < size:
        line = LINE.replace("00000", f"{number:05d}")
        lines.append(line)
        total += len(line.encode("utf-8"))
        number += 1
    return "".join(lines)


def text_mail(body: str, *, cte: str = "8bit", subtype: str = "plain",
              charset: str = "utf-8", attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Ana <ana@compensar.example>"
    message["To"] = "soporte-a@mesa.example"
    message["Subject"] = "TEN-1001 Registro completo"
    message["Message-ID"] = "<registro@compensar.example>"
    message.set_content(body, subtype=subtype, cte=cte, charset=charset)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream",
                               filename="volcado.bin")
    return message.as_bytes()


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_a_big_plain_body_is_read_up_to_its_limit_at_a_line_end(cte: str) -> None:
    body = log_text(3 * 1024 * 1024)
    mail = parse_mail(text_mail(body, cte=cte))
    # The head is the body's start, whole lines of it, unchanged.
    assert body.startswith(mail.text) and mail.text.endswith("(código 504).")
    assert TEXT_LIMIT * 0.6 < len(mail.text.encode("utf-8")) <= TEXT_LIMIT
    assert "Línea 00000" in mail.text and "Línea 30000" not in mail.text
    assert mail.text_cut > 2 * 1024 * 1024
    assert mail.subject == "TEN-1001 Registro completo" and mail.from_addr == "ana@compensar.example"
    assert not mail.defects


def test_a_body_under_the_limit_is_read_whole() -> None:
    body = log_text(TEXT_LIMIT - 4096)
    mail = parse_mail(text_mail(body))
    assert mail.text == body.rstrip("\n") or mail.text == body
    assert mail.text_cut == 0


def test_html_and_latin1_bodies_are_cut_too() -> None:
    html = "<html><body>" + "".join(f"<p>{line}</p>\n" for line in
                                    log_text(2 * 1024 * 1024).splitlines()) + "</body></html>"
    mail = parse_mail(text_mail(html, subtype="html", cte="quoted-printable"))
    assert mail.text_cut > 0 and mail.text.startswith("Línea 00000 del registro")
    assert len(mail.text) < TEXT_LIMIT
    latin = parse_mail(text_mail(log_text(2 * 1024 * 1024), charset="iso-8859-1"))
    assert latin.text_cut > 0 and latin.text.startswith("Línea 00000 del registro: error de conexión")


def test_attachments_beside_a_cut_body_are_kept_whole() -> None:
    data = bytes(range(256)) * 8000
    mail = parse_mail(text_mail(log_text(2 * 1024 * 1024), attachment=data))
    assert mail.text_cut > 0
    assert [(a.filename, a.payload) for a in mail.attachments] == [("volcado.bin", data)]


def test_a_body_without_line_ends_is_read_whole() -> None:
    body = "x" * (2 * TEXT_LIMIT)
    raw = (b"From: ana@compensar.example\r\nSubject: TEN-1001 una linea\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body.encode())
    mail = parse_mail(raw)
    assert mail.text_cut == 0 and mail.text == body


def test_quoted_printable_is_not_cut_inside_a_soft_broken_line() -> None:
    # One logical line of 100 KB, written as many soft-broken QP lines, then short ones:
    # the cut falls before it or after it, never inside.
    long_line = "á" * 50_000 + "\n"
    body = log_text(200 * 1024) + long_line + log_text(1024 * 1024)
    mail = parse_mail(text_mail(body, cte="quoted-printable"))
    assert mail.text_cut > 0 and body.startswith(mail.text)
    assert "\ufffd" not in mail.text and "Ã" not in mail.text


def test_a_base64_head_ends_on_a_whole_character() -> None:
    # Two-byte characters only: a cut at an arbitrary base64 quantum would split one.
    body = ("ñ" * 39 + "\n") * 40_000
    raw = text_mail(body, cte="base64")
    assert b"Content-Transfer-Encoding: base64" in raw[:2000]
    mail = parse_mail(raw)
    assert mail.text_cut > 0 and body.startswith(mail.text)
    assert set(mail.text) == {"ñ", "\n"} and not mail.defects


def test_parsing_a_10_mb_text_takes_a_bounded_amount_of_memory() -> None:
    raw = text_mail(log_text(10 * 1024 * 1024))
    parse_mail(raw[:100_000])  # imports and caches out of the measure
    tracemalloc.start()
    try:
        mail = parse_mail(raw)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mail.text_cut > 9 * 1024 * 1024
    # Read whole, the stdlib's lines and copies took ~110 MB here.
    assert peak < 2 * len(raw), f"parse peak {peak / 1e6:.1f} MB for {len(raw) / 1e6:.1f} MB"


def test_cut_failure_falls_back_to_reading_it_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes) -> tuple[bytes, int]:
        raise ValueError("structure unreadable")

    monkeypatch.setattr(mime, "_cut_text_bodies", broken)
    body = log_text(600 * 1024)
    mail = parse_mail(text_mail(body))
    assert mail.text_cut == 0 and mail.text.rstrip("\n") == body.rstrip("\n")
