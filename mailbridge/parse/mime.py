"""Raw bytes → ParsedMail with mail-parser; never raises on broken input."""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.utils import getaddresses, parseaddr

import mailparser

log = logging.getLogger(__name__)
# mail-parser logs every unhandled content type at WARNING; it is noise here.
logging.getLogger("mailparser").setLevel(logging.ERROR)

_MSGID_RE = re.compile(r"<[^<>\s]+>")
_WS_RE = re.compile(r"\s+")


@dataclass
class ParsedAttachment:
    filename: str
    content_type: str
    payload: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass
class ParsedMail:
    """What the pipeline needs from one message; header values already decoded."""

    message: Message
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    subject: str
    from_addr: str
    from_name: str
    to: list[str]
    cc: list[str]
    reply_to: list[str]
    date: datetime | None
    text: str
    html: str | None
    attachments: list[ParsedAttachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def header(self, name: str) -> str:
        value = self.message.get(name)
        return _WS_RE.sub(" ", str(value)).strip() if value is not None else ""


def clean_header_text(value: str | None) -> str:
    """One line of text: no CR/LF or control characters, whitespace folded."""
    if not value:
        return ""
    value = "".join(ch if ch.isprintable() else " " for ch in value)
    return _WS_RE.sub(" ", value).strip()


def message_ids(value: str | None) -> list[str]:
    return _MSGID_RE.findall(value or "")


def _addresses(values: list[tuple[str, str]] | None) -> list[str]:
    out: list[str] = []
    for _name, addr in values or []:
        addr = (addr or "").strip().lower()
        if "@" in addr and addr not in out:
            out.append(addr)
    return out


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse any bytes into a ParsedMail; defects are recorded, not raised."""
    defects: list[str] = []
    # Normalise mbox "From " lines and bare CR line ends before parsing.
    if raw.startswith(b"From ") and b"\n" in raw:
        raw = raw.split(b"\n", 1)[1]
    if b"\r" in raw and b"\n" not in raw:
        raw = raw.replace(b"\r", b"\n")
    try:
        parsed = mailparser.parse_from_bytes(raw)
        message = parsed.message
    except Exception as exc:  # mail-parser gives up on some broken input
        defects.append(f"mail-parser: {exc!r}")
        parsed = None
        message = email.message_from_bytes(raw, policy=email.policy.compat32)

    def safe(getter, default):  # type: ignore[no-untyped-def]
        try:
            value = getter()
        except Exception as exc:
            defects.append(f"{getattr(getter, '__name__', 'field')}: {exc!r}")
            return default
        return default if value is None else value

    if parsed is not None:
        subject = clean_header_text(safe(lambda: parsed.subject, ""))
        from_pairs = safe(lambda: parsed.from_, [])
        to_pairs = safe(lambda: parsed.to, [])
        cc_pairs = safe(lambda: parsed.cc, [])
        reply_pairs = safe(lambda: getaddresses([str(v) for v in message.get_all("Reply-To", [])]), [])
        text_parts = safe(lambda: parsed.text_plain, [])
        html_parts = safe(lambda: parsed.text_html, [])
        date = safe(lambda: parsed.date, None)
        for d in safe(lambda: parsed.defects, []):
            defects.append(str(d))
    else:
        subject = clean_header_text(str(message.get("Subject", "")))
        from_pairs = [parseaddr(str(message.get("From", "")))]
        to_pairs = getaddresses([str(v) for v in message.get_all("To", [])])
        cc_pairs = getaddresses([str(v) for v in message.get_all("Cc", [])])
        reply_pairs = getaddresses([str(v) for v in message.get_all("Reply-To", [])])
        text_parts, html_parts, date = [], [], None

    from_name, from_addr = (from_pairs[0] if from_pairs else ("", ""))
    html = "\n".join(html_parts) if html_parts else None
    text = "\n".join(text_parts)
    if not text.strip() and html:
        from mailbridge.parse.html import html_to_text

        text = html_to_text(html)
    attachments = _attachments(parsed, defects) if parsed is not None else []
    msgid = message_ids(str(message.get("Message-ID", "")))
    in_reply_to = message_ids(str(message.get("In-Reply-To", "")))
    return ParsedMail(
        message=message,
        message_id=msgid[0] if msgid else None,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=message_ids(str(message.get("References", ""))),
        subject=subject,
        from_addr=(from_addr or "").strip().lower(),
        from_name=clean_header_text(from_name),
        to=_addresses(to_pairs),
        cc=_addresses(cc_pairs),
        reply_to=_addresses(reply_pairs),
        date=date if isinstance(date, datetime) else None,
        text=text.replace("\r\n", "\n"),
        html=html,
        attachments=attachments,
        defects=defects,
    )


def _attachments(parsed: mailparser.MailParser, defects: list[str]) -> list[ParsedAttachment]:
    import base64

    out: list[ParsedAttachment] = []
    try:
        items = parsed.attachments
    except Exception as exc:
        defects.append(f"attachments: {exc!r}")
        return out
    for item in items:
        try:
            payload = item.get("payload") or ""
            if item.get("binary"):
                data = base64.b64decode(payload)
            else:
                data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload
            out.append(
                ParsedAttachment(
                    filename=item.get("filename") or "adjunto",
                    content_type=item.get("mail_content_type") or "application/octet-stream",
                    payload=data,
                    inline=bool(item.get("content-disposition", "").startswith("inline"))
                    if isinstance(item.get("content-disposition"), str)
                    else False,
                    content_id=item.get("content-id") or None,
                )
            )
        except Exception as exc:
            defects.append(f"attachment {item.get('filename')!r}: {exc!r}")
    return out
