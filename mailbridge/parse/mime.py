"""Raw bytes → ParsedMail with mail-parser; never raises on broken input."""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
import functools
import logging
import mimetypes
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import TYPE_CHECKING, Any

from mailbridge.parse.charsets import CharsetHints, decode_part, decode_text, reencode_words
from mailbridge.parse.senders import pick_sender
from mailbridge.parse.structure import message_from_bytes, parse_headers

if TYPE_CHECKING:
    import mailparser

__all__ = ["TEXT_LIMIT", "ParsedAttachment", "ParsedMail", "clean_header_text", "decode_text",
           "message_ids", "parse_mail", "safe_filename", "thread_headers"]

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
    # Bytes (as sent) of text bodies past TEXT_LIMIT that were not read: `text` holds
    # only each body's head. The stored raw message keeps all of it.
    text_cut: int = 0

    def header(self, name: str) -> str:
        value = self.message.get(name)
        return _WS_RE.sub(" ", str(value)).strip() if value is not None else ""


def clean_header_text(value: str | None) -> str:
    """One line of text: no CR/LF or control characters, whitespace folded."""
    if not value:
        return ""
    if isinstance(value, str) and value.isprintable():  # its only whitespace is the space
        return value.strip() if "  " not in value else _WS_RE.sub(" ", value).strip()
    value = "".join(ch if ch.isprintable() else " " for ch in value)
    return _WS_RE.sub(" ", value).strip()


def message_ids(value: str | None) -> list[str]:
    return _MSGID_RE.findall(value or "")


def thread_headers(message: Message) -> dict[str, Any]:
    """ParsedMail's threading fields: Message-ID, In-Reply-To (first id) and References."""
    msgid = message_ids(str(message.get("Message-ID", "")))
    in_reply_to = message_ids(str(message.get("In-Reply-To", "")))
    return {
        "message_id": msgid[0] if msgid else None,
        "in_reply_to": in_reply_to[0] if in_reply_to else None,
        "references": message_ids(str(message.get("References", ""))),
    }


def _addresses(values: list[tuple[str, str]] | None) -> list[str]:
    out: list[str] = []
    for _name, addr in values or []:
        addr = (addr or "").strip().lower()
        if "@" in addr and addr not in out:
            out.append(addr)
    return out


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse any bytes into a ParsedMail; defects are recorded, not raised."""
    try:
        return _parse_mail(raw)
    except Exception as exc:  # last resort: the headers alone, and the defect
        return _headers_only(raw, f"parse_mail: {exc!r}")


def _headers_only(raw: bytes, defect: str) -> ParsedMail:
    """What the header block says, without the body (e.g. MIME nested past the stack)."""
    try:
        message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            raw if isinstance(raw, bytes) else b""
        )
    except Exception:
        message = Message()

    def addresses(name: str) -> list[str]:
        try:
            return _addresses(getaddresses([_decoded_header(v) for v in message.get_all(name, [])]))
        except Exception:
            return []

    defects = [defect]
    try:
        from_name, from_addr = pick_sender([parseaddr(_decoded_header(message.get("From")))],
                                           _first_from(message), defects)
    except Exception:
        from_name, from_addr = "", ""
    return ParsedMail(
        message=message,
        **thread_headers(message),
        subject=clean_header_text(_decoded_header(message.get("Subject"))),
        from_addr=from_addr,
        from_name=clean_header_text(from_name),
        to=addresses("To"),
        cc=addresses("Cc"),
        reply_to=addresses("Reply-To"),
        date=None,
        text="",
        html=None,
        defects=defects,
    )


def _parse_mail(raw: bytes) -> ParsedMail:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    # Normalise mbox "From " lines and bare CR line ends before parsing.
    if raw.startswith(b"From ") and b"\n" in raw:
        raw = raw.split(b"\n", 1)[1]
    if b"\r" in raw and b"\n" not in raw:
        raw = raw.replace(b"\r", b"\n")
    cut = 0
    if len(raw) > TEXT_LIMIT:
        try:
            raw, cut = _cut_text_bodies(raw)
        except Exception:  # the structure decides nothing here: read it whole
            cut = 0
    parsed = _parse_bytes(raw)
    parsed.text_cut = cut
    return parsed


def _parse_bytes(raw: bytes) -> ParsedMail:
    defects: list[str] = []
    # Most mail is plain enough that mail-parser's walk adds nothing to the stdlib's
    # (bench/README.md: it is a third of parse_mail's time, and keeps a base64 copy of
    # every attachment); anything unusual still goes through it.
    plain = None
    if len(raw) >= _CUT_MESSAGE_SIZE:
        try:
            plain = _parse_large(raw)
        except Exception:  # the whole message, read as any other, decides
            plain = None
    if plain is not None:
        return plain
    try:
        message = message_from_bytes(raw)
    except Exception as exc:  # mail-parser and the fallback below would fail the same way
        return _headers_only(raw, f"parse_mail: {exc!r}")
    try:
        plain = _parse_plain(message)
    except Exception:  # e.g. nested past the stack: the full path below decides
        plain = None
    if plain is not None:
        return plain
    try:
        parsed = _mail_parser_class().from_bytes(raw)
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
        reply_pairs = safe(
            lambda: getaddresses([str(v) for v in message.get_all("Reply-To", [])]), []
        )
        text_parts = safe(lambda: parsed.text_plain, [])
        html_parts = safe(lambda: parsed.text_html, [])
        date = safe(lambda: parsed.date, None)
        defects.extend(_flatten_defects(safe(lambda: parsed.defects, [])))
        defects.extend(vars(parsed).get("mailbridge_defects", []))
    else:
        subject = clean_header_text(_decoded_header(message.get("Subject")))
        from_pairs = safe(lambda: [parseaddr(_decoded_header(message.get("From")))], [])
        to_pairs = safe(lambda: getaddresses([str(v) for v in message.get_all("To", [])]), [])
        cc_pairs = safe(lambda: getaddresses([str(v) for v in message.get_all("Cc", [])]), [])
        reply_pairs = safe(
            lambda: getaddresses([str(v) for v in message.get_all("Reply-To", [])]), []
        )
        text_parts, html_parts = _bodies(message, defects)
        date = None

    html = "\n".join(html_parts) if html_parts else None
    text = "\n".join(text_parts)
    if not text.strip() and html:
        from mailbridge.parse.html import html_to_text

        text = html_to_text(html)
    attachments = _attachments(message, defects)
    if parsed is not None:
        attachments.extend(_recovered_attachments(parsed, attachments, defects))
        subject, from_pairs = safe(lambda: _reencoded_headers(message, subject, from_pairs),
                                   (subject, from_pairs))
    from_name, from_addr = safe(lambda: pick_sender(from_pairs, _first_from(message), defects),
                                ("", ""))
    return ParsedMail(
        message=message,
        **thread_headers(message),
        subject=subject,
        from_addr=from_addr,
        from_name=clean_header_text(from_name),
        to=_addresses(to_pairs),
        cc=_addresses(cc_pairs),
        reply_to=_addresses(reply_pairs),
        date=date if isinstance(date, datetime) else None,
        text=text.replace("\r\n", "\n").replace("\r", "\n"),
        html=html,
        attachments=attachments,
        defects=defects,
    )


# What the plain path reads itself; everything else (uuencode, binhex …) goes to mail-parser.
_PLAIN_TRANSFER_ENCODINGS = frozenset({"", "7bit", "8bit", "quoted-printable", "base64"})
_MIME_HEADERS = frozenset({"content-type", "content-disposition", "content-id",
                           "content-transfer-encoding"})
# mail-parser reads these for its diagnostics (all occurrences; the first one is used).
_ADDRESS_HEADERS = ("bcc", "cc", "delivered-to", "from", "reply-to", "to")
_ONE_OF_EACH = ("subject", "from", "to", "cc", "reply-to", "date", "message-id")


def _reencoded_headers(message: Message, subject: str, from_pairs: list[tuple[str, str]]
                       ) -> tuple[str, list[tuple[str, str]]]:
    """Subject and From read again where they have encoded words Python cannot decode.

    mail-parser drops what such a word holds (an x-sjis or windows-31j subject, an
    ISO-2022-JP word with NEC characters); `reencode_words` makes them UTF-8 words first.
    Both readings call this with what they found, so they stay the same.
    """
    from mailparser.utils import decode_header_part, get_addresses

    fixed = reencode_words(_raw_header(message, "subject"))
    if fixed is not None:
        subject = clean_header_text(decode_header_part(fixed).strip())
    fixed = reencode_words(_raw_header(message, "from"))
    if fixed is not None:
        from_pairs = [("" if name == addr else name, addr)
                      for name, addr in get_addresses(fixed, decode_names=True) if addr]
    return subject, from_pairs


def _raw_header(message: Message, name: str) -> str | None:
    value = message.get(name)
    return None if value is None else str(value)


def _first_from(message: Message) -> str:
    """The first From header as written (what the sender salvage reads)."""
    values = message.get_all("From", [])
    return _decoded_header(values[0]) if values else ""


def _mail_parser_class() -> type[mailparser.MailParser]:
    """mail-parser's parser, with its body decoding replaced by ours (`decode_part`).

    mail-parser returns a 7bit/8bit part as its wire text whenever that text is ASCII,
    without applying the declared charset: right for ASCII-compatible charsets, wrong for
    ISO-2022-JP/KR, UTF-7, HZ and UTF-16, whose text is all ASCII bytes (an ISO-2022-JP body
    came out as its escape sequences). It also reads an unknown or failing charset as
    UTF-8 with replacement characters. Its choice of which parts are bodies is kept; the
    decoding is the one the plain path uses, so both readings agree. `_decode_body_payload`
    is mail-parser's (4.x) own hook, not public API: tests/parse/test_charsets.py fails
    loudly when it moves.
    """
    global _MAIL_PARSER
    if _MAIL_PARSER is None:
        import mailparser  # the unusual mail only: not loaded by an idle daemon

        class MailParser(mailparser.MailParser):  # type: ignore[misc]
            def _decode_body_payload(self, part: Message, charset: str, part_index: int) -> str:
                own = vars(self)
                payload = part._payload  # what mail-parser itself reads: no lossy get_payload()
                cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
                if cte in ("", "7bit", "8bit") and isinstance(payload, str) \
                        and not payload.isascii() and not _has_surrogates(payload):
                    return payload  # a part parsed from text (a recovered epilogue): text
                if "mailbridge_hints" not in own:
                    own["mailbridge_hints"] = CharsetHints(self.message)
                defects = own.setdefault("mailbridge_defects", [])
                reported = defects if part.get_content_subtype() in ("plain", "html") else None
                return decode_part(part, reported, own["mailbridge_hints"])

        _MAIL_PARSER = MailParser
    return _MAIL_PARSER


_MAIL_PARSER: type[mailparser.MailParser] | None = None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- large messages: big base64 attachments are cut out before the stdlib parses the rest ---

# `email` keeps a message as lines and joined copies: ~8x its size at the peak for
# one 25 MB mail (bench/README.md). Bodies this big are decoded straight from the raw
# bytes instead, into the one copy the evidence store needs.
_CUT_MESSAGE_SIZE = 1024 * 1024
_CUT_BODY_SIZE = 64 * 1024
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=\r\n]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _parse_large(raw: bytes) -> ParsedMail | None:
    """`_parse_plain` for a big message, without parsing its big attachment bodies.

    None when nothing was cut or the cut message is not plain: then it is read whole.
    """
    import binascii
    import secrets

    cuts: list[tuple[int, int]] = []
    _find_big_bodies(raw, 0, len(raw), 0, cuts)
    if not cuts:
        return None
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    markers: dict[str, tuple[int, int]] = {}
    position = 0
    for number, (start, end) in enumerate(cuts):
        marker = f"mailbridge-cut-{number}-{nonce}"
        markers[marker] = (start, end)
        pieces += [raw[position:start], base64.b64encode(marker.encode("ascii")), b"\r\n"]
        position = end
    pieces.append(raw[position:])
    message = message_from_bytes(b"".join(pieces))
    decoded: dict[int, bytes] = {}
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload()
        if not isinstance(payload, str) or "\n" in payload.strip():
            continue
        try:
            marker = base64.b64decode(payload.strip(), validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            continue
        where = markers.pop(marker, None)
        if where is None or str(part.get("Content-Transfer-Encoding", "")).strip().lower() \
                != "base64":
            return None
        decoded[id(part)] = binascii.a2b_base64(memoryview(raw)[where[0]:where[1]])
    if markers:
        return None  # a cut that did not land as one whole part body: read it whole
    return _parse_plain(message, decoded)


# --- big text bodies: only their head is read ----------------------------------------

# What the text work reads of each text body (as sent, before its transfer encoding is
# undone): field extraction, quote stripping, classification and secret redaction see
# this head, and the stored case message is this head and a note; the raw message is
# stored whole. A 30 MB log pasted into a mail otherwise cost 17x its size in str
# copies and regex work (bench/README.md). Secret redaction already read only the first
# million characters of a text (parse/secrets.py); now it reads this head.
TEXT_LIMIT = 256 * 1024
_TEXT_SLACK = 16 * 1024  # a body only a little over the limit is read whole


@dataclass
class _TextCut:
    body_start: int
    end: int
    head: bytes  # what replaces raw[body_start:end]: the body's head, same encoding


def _cut_text_bodies(raw: bytes) -> tuple[bytes, int]:
    """raw with each text body over TEXT_LIMIT cut to its head at a line end, and the
    number of bytes left out."""
    cuts: list[_TextCut] = []
    _find_big_bodies(raw, 0, len(raw), 0, [], cuts)
    if not cuts:
        return raw, 0
    pieces: list[bytes] = []
    position = 0
    dropped = 0
    for cut in cuts:
        pieces += [raw[position:cut.body_start], cut.head]
        position = cut.end
        dropped += (cut.end - cut.body_start) - len(cut.head)
    pieces.append(raw[position:])
    return b"".join(pieces), dropped


def _text_cut(raw: bytes, body_start: int, end: int, cte: str,
              charset: str | None) -> _TextCut | None:
    """Where a big text body is cut: after a whole line of its decoded text."""
    import binascii

    if cte not in ("", "7bit", "8bit", "binary", "quoted-printable", "base64"):
        return None
    if charset and charset.lower().replace("_", "-").startswith(("utf-16", "utf-32")):
        return None  # a byte 0x0A is not a line end there
    limit = TEXT_LIMIT * 4 // 3 if cte == "base64" else TEXT_LIMIT
    if end - body_start <= limit + _TEXT_SLACK:
        return None
    line_end = raw.rfind(b"\n", body_start, body_start + limit)
    if cte == "quoted-printable":  # a soft line break joins the next line: go back past it
        for _ in range(1000):
            if line_end <= body_start:
                break
            before = line_end - 1 if raw[line_end - 1:line_end] != b"\r" else line_end - 2
            if raw[before:before + 1] != b"=":
                break
            line_end = raw.rfind(b"\n", body_start, line_end)
    if line_end <= body_start:
        return None  # no line end in the head: read it whole
    if cte != "base64":
        head = raw[body_start:line_end]
        if raw[end:end + 1] in (b"\r", b"\n") or end == len(raw):
            head = head.rstrip(b"\r")  # what follows brings its own line break
        return _TextCut(body_start, end, head)
    decoded = binascii.a2b_base64(raw[body_start:line_end])
    last = decoded.rfind(b"\n")
    if last <= 0:
        return None
    head = base64.encodebytes(decoded[:last].rstrip(b"\r")).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return _TextCut(body_start, end, head)


def _find_big_bodies(raw: bytes, start: int, end: int, depth: int,
                     out: list[tuple[int, int]], texts: list[_TextCut] | None = None) -> None:
    """(start, end) of the base64 attachment bodies in raw[start:end] worth cutting out.

    Only bodies the stdlib would decode to exactly what `binascii` decodes (base64
    alphabet, padding at the end, whole quanta) of parts that name a file or say
    attachment; mail-parser reads neither as text. With `texts`, the text bodies over
    TEXT_LIMIT are found instead (`_text_cut`).
    """
    if depth > 20:
        return
    if raw.startswith((b"\r\n", b"\n"), start, end):  # no headers at all: text/plain
        return
    found = _HEADER_END.search(raw, start, end)
    if found is None:
        return
    headers = parse_headers(raw[start:found.end()].decode("ascii", "surrogateescape"))
    body_start = found.end()
    ctype = headers.get_content_type()
    if headers.get_content_maintype() == "multipart":
        boundary = headers.get_boundary()
        if not boundary or not boundary.isascii():
            return
        part_start: int | None = None
        for line_end, after, closing in _delimiters(raw, b"--" + boundary.encode("ascii"),
                                                    body_start, end):
            if part_start is not None:
                _find_big_bodies(raw, part_start, line_end, depth + 1, out, texts)
            if closing:
                return
            part_start = after
        return
    if texts is not None:
        if ctype in ("text/plain", "text/html") and not headers.get_filename() \
                and headers.get_content_disposition() != "attachment":
            cte = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
            cut = _text_cut(raw, body_start, end, cte, headers.get_content_charset())
            if cut is not None:
                texts.append(cut)
        return
    if ctype.startswith(("message/", "text/")) or end - body_start < _CUT_BODY_SIZE:
        return
    if str(headers.get("Content-Transfer-Encoding", "")).strip().lower() != "base64":
        return
    if not (headers.get_filename() or headers.get_content_disposition() == "attachment"):
        return
    body = memoryview(raw)[body_start:end]
    if _NOT_BASE64.search(body):
        return
    first_pad = raw.find(b"=", body_start, end)
    if first_pad != -1 and raw[first_pad:end].strip(b"=\r\n"):
        return
    symbols = (end - body_start) - raw.count(b"\r", body_start, end) \
        - raw.count(b"\n", body_start, end)
    if symbols % 4:
        return
    out.append((body_start, end))


def _delimiters(raw: bytes, dash_boundary: bytes, start: int,
                end: int) -> Iterator[tuple[int, int, bool]]:
    """Delimiter lines of a multipart body, as the stdlib's parser finds them.

    Yields (where the line break before it starts, where the next part starts, closing).
    """
    position = start
    while True:
        found = raw.find(dash_boundary, position, end)
        if found == -1:
            return
        position = found + 1
        if found > start and raw[found - 1] not in b"\r\n":
            continue  # not at the start of a line
        cursor = found + len(dash_boundary)
        closing = raw.startswith(b"--", cursor, end)
        cursor += 2 if closing else 0
        while cursor < end and raw[cursor] in b" \t":
            cursor += 1
        if cursor < end and raw[cursor] not in b"\r\n":
            continue  # a longer boundary that starts with this one
        if raw.startswith(b"\r\n", cursor, end):
            cursor += 2
        elif cursor < end:
            cursor += 1
        before = found
        if found > start and raw[found - 1] == 10 and found - 1 > start and raw[found - 2] == 13:
            before = found - 2
        elif found > start:
            before = found - 1
        yield before, cursor, closing
        position = cursor


def _parse_plain(message: Message, decoded: dict[int, bytes] | None = None) -> ParsedMail | None:
    """The mail as `_parse_mail` reads it through mail-parser, read with the stdlib alone.

    None unless the mail is one where both readings are the same: no parsing defects,
    one of each main header, no attached messages or attachment containers, MIME
    headers in ASCII, transfer encodings the stdlib undoes (bodies in any charset: both
    readings decode them with `decode_part`), and none of the header diagnostics
    mail-parser would report (its helpers decide those, so header values are decoded
    exactly as it decodes them).
    """
    from mailparser.dates import date_diagnostics, parse_mail_date
    from mailparser.utils import decode_header_part, receiveds_parsing

    counts: dict[str, int] = {}
    received: list[str] = []
    date_value: str | None = None
    for name, value in message.raw_items():
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        if key == "received":
            received.append(value)
        elif key == "date":
            date_value = value
        elif key == "resent-date":
            return None
    if any(counts.get(key, 0) > 1 for key in _ONE_OF_EACH):
        return None
    leaves: list[Message] = []
    for part in message.walk():
        if part.defects:
            return None
        ctype = part.get_content_type()
        if ctype.startswith("message/"):
            return None
        for name, value in part.raw_items():
            if name.lower() in _MIME_HEADERS and not value.isascii():
                return None
        if part.is_multipart():
            if part.get_content_disposition() not in (None, "inline") or part.get_filename():
                return None
        elif ctype.startswith("multipart/"):
            return None
        else:
            leaves.append(part)
    if len(leaves) >= 1000:
        return None
    # Header diagnostics, as mail-parser makes them: any one sends the mail its way.
    diagnostics: list[dict[str, object]] = []
    addresses: dict[str, list[tuple[str, str]]] = {}
    for key in _ADDRESS_HEADERS:
        for value in message.get_all(key, []) if key in counts else []:
            found, reported = _mail_parser_addresses(value)
            if reported:
                return None
            addresses.setdefault(key, found)
    date = None
    if date_value is not None:
        result = parse_mail_date(date_value)
        date = result.value
        diagnostics.extend(date_diagnostics(result, date_value, "date", 0))
    receiveds_parsing(received, defects=diagnostics, date_defects=diagnostics)
    if diagnostics:
        return None
    subject_value = message.get("subject")

    text_parts: list[str] = []
    html_parts: list[str] = []
    defects: list[str] = []
    hints = CharsetHints(message)
    for part in leaves:
        ctype = part.get_content_type()
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte not in _PLAIN_TRANSFER_ENCODINGS:
            return None
        filename = part.get_filename()
        if bool(filename) != bool(decode_header_part(filename)):
            return None  # a name only one of the two readings sees
        disposition = part.get_content_disposition()
        subtype = part.get_content_subtype()
        if ctype not in ("text/plain", "text/html"):
            # mail-parser reads a part it does not take for an attachment as text
            # (by subtype alone) and reports what does not decode.
            if filename or disposition == "attachment" or subtype in "rtf" \
                    or (part.get("content-id") and subtype not in ("html", "plain")):
                continue
            if subtype in ("html", "plain"):
                return None
            continue
        if filename:
            if disposition == "inline":
                return None  # mail-parser reads it as body and as attachment
            continue
        if disposition == "attachment":
            continue
        body = decode_part(part, defects, hints)
        if body:
            (html_parts if ctype == "text/html" else text_parts).append(body)

    attachments = _attachments(message, defects, decoded)
    if any(part.defects for part in leaves):
        return None  # base64 that decoded with defects: mail-parser may recover more
    from_pairs = [("" if name == addr else name, addr)
                  for name, addr in addresses.get("from", []) if addr]
    subject, from_pairs = _reencoded_headers(
        message, clean_header_text(decode_header_part(subject_value).strip()), from_pairs)
    from_name, from_addr = pick_sender(from_pairs, _first_from(message), defects)
    html = "\n".join(html_parts) if html_parts else None
    text = "\n".join(text_parts)
    if not text.strip() and html:
        from mailbridge.parse.html import html_to_text

        text = html_to_text(html)
    return ParsedMail(
        message=message,
        **thread_headers(message),
        subject=subject,
        from_addr=from_addr,
        from_name=clean_header_text(from_name),
        to=_addresses([(n, a) for n, a in addresses.get("to", []) if a]),
        cc=_addresses([(n, a) for n, a in addresses.get("cc", []) if a]),
        reply_to=_addresses(getaddresses([str(v) for v in message.get_all("Reply-To", [])])),
        date=date if isinstance(date, datetime) else None,
        text=text.replace("\r\n", "\n").replace("\r", "\n"),
        html=html,
        attachments=attachments,
        defects=defects,
    )


# Header values are short and repeat from mail to mail (a sender's From, the desk's To):
# their readings are kept. Longer values are read every time.
_CACHED_VALUE = 2048


def _mail_parser_addresses(value: object) -> tuple[list[tuple[str, str]], bool]:
    """mail-parser's reading of an address header: its addresses, and whether it reported
    anything about the value (a diagnostic sends the mail to mail-parser)."""
    if isinstance(value, str) and len(value) <= _CACHED_VALUE:
        found, reported = _addresses_of_text(value)
        return list(found), reported
    return _read_addresses(value)


@functools.lru_cache(maxsize=1024)
def _addresses_of_text(value: str) -> tuple[tuple[tuple[str, str], ...], bool]:
    found, reported = _read_addresses(value)
    return tuple(found), reported


def _read_addresses(value: object) -> tuple[list[tuple[str, str]], bool]:
    from mailparser.utils import get_addresses

    diagnostics: list[dict[str, object]] = []
    found = get_addresses(value, defects=diagnostics, decode_names=True)  # type: ignore[arg-type]
    return found, bool(diagnostics)


def _flatten_defects(items: object) -> list[str]:
    """mail-parser reports {content type: [defect, ...]}; keep one line per defect."""
    out: list[str] = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict):
            for where, found in item.items():
                for defect in found if isinstance(found, list) else [found]:
                    out.append(f"{where}: {defect}")
        else:
            out.append(str(item))
    return out


def _decoded_header(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and len(value) <= _CACHED_VALUE:
        return _decoded_text(value)
    try:
        text = str(value)
    except Exception:
        return str(value)
    return _decode_words(text)


@functools.lru_cache(maxsize=1024)
def _decoded_text(text: str) -> str:
    return _decode_words(text)


def _decode_words(text: str) -> str:
    try:
        return str(make_header(decode_header(reencode_words(text) or text)))
    except Exception:
        return text


def _is_body(part: Message) -> bool:
    """A text/plain or text/html part that is the message body, not an attachment."""
    if part.get_content_type() not in ("text/plain", "text/html"):
        return False
    try:
        disposition = part.get_content_disposition()
        filename = part.get_filename()
    except Exception:
        return True
    return disposition != "attachment" and not filename


def _leaf_parts(message: Message) -> list[Message]:
    """Leaves of the MIME tree, not descending into attached messages."""
    leaves: list[Message] = []
    stack: list[Message] = [message]
    while stack and len(leaves) < 1000:
        part = stack.pop()
        if part.get_content_type() in ("message/rfc822", "message/global") and part is not message:
            leaves.append(part)
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
        else:
            leaves.append(part)
    return leaves


def _bodies(message: Message, defects: list[str]) -> tuple[list[str], list[str]]:
    """Text and HTML bodies decoded with the stdlib (when mail-parser gave up)."""
    text_parts: list[str] = []
    html_parts: list[str] = []
    hints = CharsetHints(message)
    try:
        leaves = _leaf_parts(message)
    except Exception as exc:
        defects.append(f"walk: {exc!r}")
        return text_parts, html_parts
    for part in leaves:
        try:
            if not _is_body(part):
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes) or not payload:
                continue
            body = decode_part(part, defects, hints)
            (html_parts if part.get_content_subtype() == "html" else text_parts).append(body)
        except Exception as exc:
            defects.append(f"body part: {exc!r}")
    return text_parts, html_parts


# --- attachments ------------------------------------------------------------------

_NOT_EVIDENCE = {"application/pkcs7-signature", "application/x-pkcs7-signature",
                 "application/pgp-signature"}  # fmt: skip
MAX_FILENAME_BYTES = 255


def safe_filename(name: str | None, content_type: str = "application/octet-stream") -> str:
    """A file name safe to show and store: no path, no control characters, ≤ 255 bytes."""
    name = _decoded_header(name) if name else ""
    name = name.strip().strip("<>")
    if "@" in name and "/" not in name and "\\" not in name:
        # A Content-ID ("image001.png@01DA5B…") used as a name: keep the file part.
        name = name.split("@", 1)[0]
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(
        " " if ch in "\t\r\n" else ch
        for ch in name
        if ch in "\t\r\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs")
    )
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name:
        extension = mimetypes.guess_extension(content_type or "") or (
            ".txt" if (content_type or "").startswith("text/") else ".bin"
        )
        name = "adjunto" + extension
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        stem, dot, extension = name.rpartition(".")
        if not dot or not stem or len(extension) > 16:
            stem, extension = name, ""
        suffix = f".{extension}" if extension else ""
        budget = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
        stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(" .")
        name = (stem or "adjunto") + suffix
    return name


def _attachments(
    message: Message, defects: list[str], decoded: dict[int, bytes] | None = None
) -> list[ParsedAttachment]:
    """Evidence parts; `decoded` holds the payloads of parts cut out of a large message."""
    out: list[ParsedAttachment] = []
    try:
        leaves = _leaf_parts(message)
    except Exception as exc:
        defects.append(f"attachments: {exc!r}")
        return out
    for part in leaves:
        try:
            content_type = part.get_content_type()
            if content_type in _NOT_EVIDENCE or _is_body(part):
                continue
            if part.get_content_maintype() == "multipart":
                continue  # an empty or broken container
            content_id = message_ids(str(part.get("Content-ID", "") or ""))
            disposition = part.get_content_disposition()
            if content_type in ("message/rfc822", "message/global"):
                inner = part.get_payload()
                inner_message = inner[0] if isinstance(inner, list) and inner else None
                data = inner_message.as_bytes() if isinstance(inner_message, Message) else b""
                fallback_name = _decoded_header(
                    inner_message.get("Subject") if isinstance(inner_message, Message) else None
                )
                filename = part.get_filename() or (fallback_name + ".eml" if fallback_name else "")
                content_type = "message/rfc822"
            else:
                payload = decoded.get(id(part)) if decoded else None
                if payload is None:
                    payload = part.get_payload(decode=True)
                data = payload if isinstance(payload, bytes) else b""
                filename = part.get_filename() or (content_id[0] if content_id else "")
            out.append(
                ParsedAttachment(
                    filename=safe_filename(filename, content_type),
                    content_type=content_type,
                    payload=data,
                    inline=disposition == "inline" or (disposition is None and bool(content_id)),
                    content_id=content_id[0] if content_id else None,
                )
            )
        except Exception as exc:
            defects.append(f"attachment: {exc!r}")
    return out


def _recovered_attachments(
    parsed: mailparser.MailParser, found: list[ParsedAttachment], defects: list[str]
) -> list[ParsedAttachment]:
    """Attachments mail-parser recovered from a broken structure that the walk missed."""
    import base64
    import binascii

    known = {(a.filename, len(a.payload)) for a in found}
    # mail-parser names some parts its own way (a random name for one with a NUL in
    # its filename): the same bytes under another name are not a missed attachment.
    payloads = {a.payload for a in found}
    out: list[ParsedAttachment] = []
    try:
        items = parsed.attachments
    except Exception as exc:
        defects.append(f"attachments: {exc!r}")
        return out
    for item in items:
        try:
            content_type = item.get("mail_content_type") or "application/octet-stream"
            if content_type in _NOT_EVIDENCE or content_type.startswith("message/"):
                continue
            payload = item.get("payload") or ""
            if item.get("binary"):
                try:
                    data = base64.b64decode(payload)
                except (binascii.Error, ValueError):
                    data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)
            elif isinstance(payload, str):
                data = payload.encode("utf-8", "surrogateescape")
            else:
                data = bytes(payload)
            filename = safe_filename(item.get("filename"), content_type)
            if (filename, len(data)) in known or data in payloads \
                    or any(a.filename == filename for a in found):
                continue
            disposition = str(item.get("content-disposition") or "").lower()
            content_id = message_ids(str(item.get("content-id") or ""))
            out.append(
                ParsedAttachment(
                    filename=filename,
                    content_type=content_type,
                    payload=data,
                    inline=disposition.startswith("inline"),
                    content_id=content_id[0] if content_id else None,
                )
            )
        except Exception as exc:
            defects.append(f"attachment {item.get('filename')!r}: {exc!r}")
    return out
