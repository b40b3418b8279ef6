"""Reply text → only what is new: quoted history, forwarded blocks and signatures removed."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from email.utils import getaddresses

from mailbridge.parse.ahead import ahead

log = logging.getLogger(__name__)

# mail-parser-reply is tried first; its header patterns cover clients we have no rule for.
# Its regexes backtrack badly on long lines ("On On On …" costs seconds), so it only sees
# the head of the text with long lines blanked: no quote header is that long.
_LIBRARY_MAX_CHARS = 20_000
_LIBRARY_MAX_LINE = 300
_LIBRARY_LANGUAGES = ["es", "en", "de", "fr", "it", "nl", "pl"]

_QUOTE_PREFIX_RE = re.compile(r"^[ \t]*(?:>[ \t]?)+")
_QUOTED_LINE_RE = re.compile(r"^[ \t]*>")

# "… wrote:" in the languages a Spanish desk sees; the line must also hold a date or address.
_WROTE_VERBS = (
    r"wrote|escribió|escribio|ha escrito|escreveu|schrieb|a écrit|a ecrit|ha scritto|"
    r"schreef|napisał\(a\)|napisał|napisal|написал\(а\)|написал|написала|skrev|kirjoitti"
)
_WROTE_RE = re.compile(rf"(?:^|[\s,>)\"'])(?:{_WROTE_VERBS})\s*:\s*$", re.IGNORECASE)
# Words that open an attribution line; used to decide which lines may wrap.
_ATTRIBUTION_START_RE = re.compile(
    r"^\s*(?:-+\s*)?(?:on|el|em|am|le|il|op|den|dnia|dne|the|\d|\w+ <|\"|<)",
    re.IGNORECASE,
)
_MAX_ATTRIBUTION_CHARS = 400
# Attributions with no verb: '26.06.2014, 14:41, "Ana" <ana@example.com>:' (Yandex, Mail.ru).
_ADDRESS_COLON_RE = re.compile(r"<?[^\s<>@]+@[^\s<>@]+\.[^\s<>@]+>\s*:\s*$")
_TIME_RE = re.compile(r"\b\d{1,2}:\d{2}\b")

_ORIGINAL_MESSAGE_WORDS = (
    r"original message|mensaje original|ursprüngliche nachricht|message d'origine|"
    r"messaggio originale|mensagem original|oorspronkelijk bericht|oprindelig meddelelse|"
    r"originalmeddelande|alkuperäinen viesti|oryginalna wiadomość|původní zpráva"
)
_FORWARD_WORDS = (
    r"forwarded message|mensaje reenviado|mensaje original reenviado|mensagem encaminhada|"
    r"mensagem reencaminhada|message transféré|message transfere|weitergeleitete nachricht|"
    r"messaggio inoltrato|doorgestuurd bericht|wiadomość przekazana dalej"
)
_DASHES = r"[-_=*~]{2,}"
_ORIGINAL_SEPARATOR_RE = re.compile(
    rf"^\s*(?:{_DASHES}\s*(?:{_ORIGINAL_MESSAGE_WORDS})\s*{_DASHES}|"
    rf"(?:{_ORIGINAL_MESSAGE_WORDS})\s*:?\s*$)",
    re.IGNORECASE,
)
_FORWARD_SEPARATOR_RE = re.compile(
    rf"^\s*(?:{_DASHES}\s*(?:{_FORWARD_WORDS})\s*{_DASHES}|"
    r"(?:begin forwarded message|inicio del mensaje reenviado|comienzo del mensaje reenviado|"
    r"mensaje reenviado|forwarded message|início da mensagem reencaminhada|"
    r"début du message réexpédié|anfang der weitergeleiteten nachricht)\s*:)",
    re.IGNORECASE,
)
# Outlook draws a line of underscores above its header block.
_RULE_LINE_RE = re.compile(r"^\s*(?:_{8,}|-{8,}|—{4,})\s*$")

# Header labels of a quoted or forwarded header block, by what they mean.
_LABELS: dict[str, tuple[str, ...]] = {
    kind: tuple(labels.split("|"))
    for kind, labels in {
        "from": "from|de|von|van|da|od|från|fra|remitente|expéditeur|от",
        "date": "sent|date|enviado el|enviado|enviada el|enviada em|fecha|gesendet|datum|envoyé"
        "|envoyé le|date d'envoi|inviato|data|verzonden|skickat|sendt|wysłano|отправлено|дата",
        "to": "to|para|an|à|a|aan|till|til|do|destinatario|destinatarios|кому",
        "cc": "cc|cco|bcc|kopie|kopia|copia|dw",
        "subject": "subject|asunto|betreff|objet|oggetto|assunto|onderwerp|ämne|emne|temat|тема",
    }.items()
}
_LABEL_KIND = {label: kind for kind, labels in _LABELS.items() for label in labels}
_LABEL_RE = re.compile(
    r"^\s*\**\s*("
    + "|".join(sorted((re.escape(label) for label in _LABEL_KIND), key=len, reverse=True))
    + r")\s*\**\s*:(?:\s|\*|$)",
    re.IGNORECASE,
)

_SIGNATURE_DELIMITER_RE = re.compile(r"^(?:-- ?|--|__|—)\s*$")
_MOBILE_FOOTER_RE = re.compile(
    r"^\s*(?:sent from my|sent from outlook|sent with|get outlook for|"
    r"enviado desde mi|enviado desde|obtener outlook para|descargar outlook para|"
    r"enviado con|gesendet von meinem|envoyé de mon|inviato da)\b",
    re.IGNORECASE,
)

_DISCLAIMER_RE = re.compile(
    r"^\W*(?:aviso legal|aviso de confidencialidad|confidencialidad|confidential|disclaimer|"
    r"(?:este|el presente|el contenido de este) (?:mensaje|correo|e-?mail)|"
    r"this (?:e-?mail|message|communication)|le informamos|en cumplimiento|de conformidad con|"
    r"protección de datos|información confidencial|antes de imprimir|"
    r"please consider the environment)",
    re.IGNORECASE,
)


@dataclass
class _Region:
    """Lines [start, end) that belong to quoted history."""

    start: int
    end: int
    forward: bool = False
    body_start: int = -1  # first quoted line after an attribution line

    def __post_init__(self) -> None:
        if self.body_start < 0:
            self.body_start = self.start


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _unquote(line: str) -> str:
    return _QUOTE_PREFIX_RE.sub("", line, count=1)


def _is_quoted(line: str) -> bool:
    return bool(_QUOTED_LINE_RE.match(line))


def _label_kind(line: str) -> str | None:
    match = _LABEL_RE.match(_unquote(line))
    return _LABEL_KIND.get(match.group(1).lower()) if match else None


def _header_block_end(lines: list[str], start: int) -> int | None:
    """End of a quoted header block ("From:/Sent:/To:/Subject:") starting at `start`, if any.

    A block needs a sender label and at least one other kind (date, recipient, subject);
    labels may be separated by one blank line (HTML turned into text) and a value may wrap
    onto at most two further lines (Outlook splits long "From:" values).
    """
    kinds: list[str] = []
    index = start
    continuation = 0
    last_label_end = start
    while index < len(lines) and index < start + 24:
        kind = _label_kind(lines[index])
        stripped = _unquote(lines[index]).strip()
        if kind is not None:
            kinds.append(kind)
            continuation = 0
            index += 1
            last_label_end = index
            continue
        if not stripped:
            ahead = index + 1
            while ahead < len(lines) and ahead <= index + 1 and not _unquote(lines[ahead]).strip():
                ahead += 1
            if ahead < len(lines) and _label_kind(lines[ahead]) is not None and kinds:
                index = ahead
                continue
            break
        if kinds and continuation < 2:
            continuation += 1
            index += 1
            continue
        break
    distinct = set(kinds)
    if "from" in distinct and len(distinct) >= 2 and len(kinds) >= 2:
        return last_label_end
    # Hotmail's "> Subject: … > Date: …" without a sender still names a date and a subject.
    if {"date", "subject"} <= distinct and len(distinct) >= 3:
        return last_label_end
    return None


def _attribution_end(lines: list[str], start: int) -> int | None:
    """End of an "On <date>, <name> wrote:" line starting at `start`, wrapped over ≤3 lines."""
    first = _unquote(lines[start]).strip()
    if not first or len(first) > _MAX_ATTRIBUTION_CHARS:
        return None
    joined = first
    for end in range(start + 1, min(start + 3, len(lines)) + 1):
        if end > start + 1:
            nxt = _unquote(lines[end - 1]).strip()
            if not nxt:
                return None
            joined = f"{joined} {nxt}"
            if len(joined) > _MAX_ATTRIBUTION_CHARS:
                return None
        if (_WROTE_RE.search(joined) and re.search(r"[\d@]", joined)) or (
            _ADDRESS_COLON_RE.search(joined) and _TIME_RE.search(joined)
        ):
            if end == start + 1 or _ATTRIBUTION_START_RE.match(first):
                return end
        if end == start + 1 and not _ATTRIBUTION_START_RE.match(first):
            # Only lines that look like the start of an attribution may wrap.
            return _generic_attribution_end(lines, start)
    return _generic_attribution_end(lines, start)


def _generic_attribution_end(lines: list[str], start: int) -> int | None:
    """A line (or two) ending in ':' with a date or address, right above a '>' block.

    Catches attributions in languages we have no verb for (e.g. Russian Android mail).
    """
    joined = ""
    for end in range(start + 1, min(start + 2, len(lines)) + 1):
        part = lines[end - 1].strip()
        if not part or _is_quoted(lines[end - 1]):
            return None
        joined = f"{joined} {part}".strip()
        if len(joined) > _MAX_ATTRIBUTION_CHARS:
            return None
        if joined.endswith(":") and re.search(r"\d.*[\d@]|@", joined):
            after = end
            while after < len(lines) and not lines[after].strip():
                after += 1
            if after < len(lines) and _is_quoted(lines[after]) and after - end <= 1:
                return end
            return None
    return None


def _separator_end(lines: list[str], start: int) -> tuple[int, bool] | None:
    """A separator line ("-----Mensaje original-----", "Forwarded message", underscores)."""
    line = _unquote(lines[start])
    if _ORIGINAL_SEPARATOR_RE.match(line):
        return start + 1, False
    if _FORWARD_SEPARATOR_RE.match(line):
        return start + 1, True
    if _RULE_LINE_RE.match(line):
        ahead = start + 1
        while ahead < len(lines) and ahead <= start + 2 and not lines[ahead].strip():
            ahead += 1
        if ahead < len(lines) and _header_block_end(lines, ahead) is not None:
            return start + 1, False
    return None


def _quote_block_end(lines: list[str], start: int) -> int:
    """End of a run of '>' lines (blank lines inside the run belong to it)."""
    index = start
    last = start
    while index < len(lines):
        if _is_quoted(lines[index]):
            index += 1
            last = index
        elif not lines[index].strip():
            index += 1
        else:
            break
    return last


def _library_split_line(text: str, lines: list[str]) -> int | None:
    """First line where mail-parser-reply sees an earlier message begin, if it sees one."""
    head = "\n".join(
        "" if len(line) > _LIBRARY_MAX_LINE else line
        for line in text[:_LIBRARY_MAX_CHARS].split("\n")
    )
    try:
        from mailparser_reply import EmailReplyParser  # type: ignore[import-untyped]

        parsed = EmailReplyParser(languages=list(_LIBRARY_LANGUAGES)).read(head)
        headers = [reply.headers for reply in parsed.replies if reply.headers]
    except Exception:  # the library is a helper here; our own rules still run
        log.debug("mail-parser-reply failed", exc_info=True)
        return None
    if not headers:
        return None
    header = headers[0]
    # Its hits are only trusted when they name a date or an address, like a real header.
    if not re.search(r"[\d@]", header):
        return None
    first_line = _unquote(header.strip().split("\n", 1)[0]).strip()
    if not first_line:
        return None
    for index, line in enumerate(lines):
        if _unquote(line).strip() == first_line:
            return index
    return None


def _quoted_regions(lines: list[str], text: str, *, keep_forwarded: bool) -> list[_Region]:
    regions: list[_Region] = []
    library_line = _library_split_line(text, lines)
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
            continue
        separator = _separator_end(lines, index)
        if separator is not None:
            if not (separator[1] and keep_forwarded):
                regions.append(_Region(index, len(lines), forward=separator[1]))
            # Either way nothing below a separator is new text.
            break
        if _header_block_end(lines, index) is not None:
            regions.append(_Region(index, len(lines)))
            break
        attribution = _attribution_end(lines, index)
        if attribution is not None:
            after = attribution
            while after < len(lines) and not lines[after].strip():
                after += 1
            if after < len(lines) and _is_quoted(lines[after]):
                end = _quote_block_end(lines, after)
                regions.append(_Region(index, end, body_start=after))
                index = end
                continue
            # Outlook-style quote without '>' marks: the rest is history.
            regions.append(_Region(index, len(lines)))
            break
        if _is_quoted(line):
            end = _quote_block_end(lines, index)
            regions.append(_Region(index, end))
            index = end
            continue
        if library_line is not None and index == library_line:
            # A header pattern of the library that none of our rules knows.
            regions.append(_Region(index, len(lines)))
            break
        index += 1
    return regions


def _is_disclaimer_segment(segment: list[str]) -> bool:
    text_lines = [line for line in segment if line.strip()]
    if text_lines and _SIGNATURE_DELIMITER_RE.match(text_lines[0]):
        text_lines = text_lines[1:]
    return bool(text_lines) and bool(_DISCLAIMER_RE.match(text_lines[0]))


def _is_signature_segment(segment: list[str]) -> bool:
    first = next((line for line in segment if line.strip()), "")
    return bool(_SIGNATURE_DELIMITER_RE.match(first) or _MOBILE_FOOTER_RE.match(first))


def _strip_blank_edges(segment: list[str]) -> list[str]:
    start, end = 0, len(segment)
    while start < end and not segment[start].strip():
        start += 1
    while end > start and not segment[end - 1].strip():
        end -= 1
    return segment[start:end]


@ahead
def strip_quotes(text: str, *, keep_forwarded: bool = False) -> str:
    """Only the new text of a reply, without the quoted history below or around it.

    Handles Outlook, Gmail, Apple Mail and Thunderbird in Spanish and English (and the
    attribution lines of a few other languages), '>' quoting, and forwarded blocks, which
    are removed too unless `keep_forwarded` is set (a customer forwarding a mail to open a
    case wants the forwarded text kept). Replies written between quoted lines keep the
    quotes they answer. Line ends become '\\n' and trailing whitespace is dropped; text
    without quotes comes back otherwise unchanged. When nothing new is left but the input
    had text outside '>' quotes (a bare forward, a header block only), the whole input is
    returned rather than nothing. Never raises.
    """
    try:
        return _strip_quotes(text, keep_forwarded=keep_forwarded)
    except Exception:  # never lose a reply because a rule misfired
        log.exception("strip_quotes failed; keeping the full text")
        try:
            return _normalise(str(text)).rstrip()
        except Exception:
            return ""


def _strip_quotes(text: str, *, keep_forwarded: bool) -> str:
    text = _normalise(text if isinstance(text, str) else str(text or ""))
    lines = text.split("\n")
    regions = _quoted_regions(lines, text, keep_forwarded=keep_forwarded)
    if not regions:
        return text.rstrip()
    # Text segments: the line spans between quoted regions that hold any text.
    spans: list[tuple[int, int]] = []
    position = 0
    for region in regions:
        if region.start > position:
            spans.append((position, region.start))
        position = max(position, region.end)
    if position < len(lines):
        spans.append((position, len(lines)))
    spans = [(a, b) for a, b in spans if any(line.strip() for line in lines[a:b])]
    if not spans:
        # Nothing new. History without '>' marks (a bare forward, an Outlook header block
        # at the top) is text the sender sent us, so it is kept whole; a reply made only of
        # '>' quotes (e.g. it just carried an attachment) has no text of its own.
        last = regions[-1]
        keep = last.forward or (last.end == len(lines) and _unmarked(lines, last))
        return text.rstrip() if keep else ""
    # A legal notice the sender's server appends below the quote is not part of the reply.
    tail = [(a, b) for a, b in spans[1:] if not _is_disclaimer_segment(lines[a:b])]
    if any(not _is_signature_segment(lines[a:b]) for a, b in tail):
        # Answers written between the quotes: keep the quotes they answer.
        start = spans[0][0]
        above = [region for region in regions if region.end <= start]
        if above and above[-1].end == _skip_blank_back(lines, start, above[-1].end):
            start = above[-1].body_start
        return "\n".join(_strip_blank_edges(lines[start : tail[-1][1]])).rstrip()
    pieces = ["\n".join(_strip_blank_edges(lines[a:b])) for a, b in [spans[0], *tail]]
    return "\n\n".join(pieces).rstrip()


def _skip_blank_back(lines: list[str], index: int, floor: int) -> int:
    while index > floor and not lines[index - 1].strip():
        index -= 1
    return index


def _unmarked(lines: list[str], region: _Region) -> bool:
    """Whether a region holds text lines that are not '>'-quoted (beyond its first line)."""
    return any(
        line.strip() and not _is_quoted(line) for line in lines[region.start + 1 : region.end]
    )


def signature_free(text: str) -> str:
    """Text without its signature: cut at a "-- " delimiter line (RFC 3676) or a mobile
    footer ("Enviado desde mi iPhone", "Obtener Outlook para iOS") and anything below it,
    and without a legal notice at the end. Sign-offs ("Saludos, Ana") are kept. If that
    would leave nothing, the text is returned as it was. Never raises."""
    try:
        lines = _normalise(text if isinstance(text, str) else str(text or "")).split("\n")
        cut = len(lines)
        for index, line in enumerate(lines):
            if index and (_SIGNATURE_DELIMITER_RE.match(line) or _MOBILE_FOOTER_RE.match(line)):
                cut = index
                break
        kept = lines[:cut]
        # A trailing legal notice paragraph (no delimiter above it).
        paragraphs = "\n".join(kept).rstrip().split("\n\n")
        while len(paragraphs) > 1 and _DISCLAIMER_RE.match(paragraphs[-1].strip()):
            paragraphs.pop()
        result = "\n\n".join(paragraphs).rstrip()
        return result if result.strip() else "\n".join(lines).rstrip()
    except Exception:
        log.exception("signature_free failed; keeping the text")
        return str(text or "").rstrip()


# --- forwarded mail --------------------------------------------------------------------------

_FORWARD_SUBJECT_RE = re.compile(
    r"^\s*(?:(?:re|aw|sv)\s*:\s*)*(?:fwd?|fw|rv|tr|wg|enc|reenviado|reenv|i)\s*:\s*", re.IGNORECASE
)
_INLINE_LABEL_RE = re.compile(
    r"(From|De|To|Para|Cc|CC|Sent|Enviado|Date|Fecha|Subject|Asunto)\s*:\s*"
)


@dataclass
class ForwardedMail:
    """The headers and text of a forwarded message found in a mail body."""

    subject: str | None = None
    date: str | None = None
    from_name: str | None = None
    from_address: str | None = None
    to: list[tuple[str | None, str]] = field(default_factory=list)
    cc: list[tuple[str | None, str]] = field(default_factory=list)
    body: str = ""
    message: str | None = None  # what the forwarder wrote above it, if anything


def parse_forwarded(text: str, subject: str | None = None) -> ForwardedMail | None:
    """The forwarded message in `text`, or None when there is none.

    A forward is known by its separator line ("---------- Mensaje reenviado ---------",
    "Inicio del mensaje reenviado:", "-------- Forwarded Message --------") or, for clients
    that write none (Outlook), by a forward prefix on `subject` ("RV:", "Fwd:", "TR:").
    Never raises.
    """
    try:
        return _parse_forwarded(_normalise(text or ""), subject)
    except Exception:
        log.exception("parse_forwarded failed")
        return None


def _parse_forwarded(text: str, subject: str | None) -> ForwardedMail | None:
    lines = text.split("\n")
    start = next(
        (i for i, line in enumerate(lines) if _FORWARD_SEPARATOR_RE.match(_unquote(line))), None
    )
    forward_subject = bool(subject and _FORWARD_SUBJECT_RE.match(subject))
    if start is None and not forward_subject:
        return None
    if start is not None:
        message = "\n".join(_strip_blank_edges(lines[:start])).rstrip() or None
        separator = _unquote(lines[start])
        inline = re.sub(rf"^\s*(?:{_DASHES}\s*)?[^-:]*?(?:{_DASHES}|:)\s*", "", separator, count=1)
        if _INLINE_LABEL_RE.search(inline) and len(_INLINE_LABEL_RE.findall(inline)) >= 2:
            found = _from_inline_headers(inline, lines[start + 1 :])
        else:
            found = _from_header_lines(lines, start + 1)
    else:
        regions = _quoted_regions(lines, text, keep_forwarded=False)
        if not regions:
            return None
        first = regions[0].start
        message = "\n".join(_strip_blank_edges(lines[:first])).rstrip() or None
        found = _from_header_lines(lines, first)
    if found is None:
        return None
    found.message = message
    if found.subject is None and subject:
        found.subject = _FORWARD_SUBJECT_RE.sub("", subject, count=1).strip() or None
    return found


def _from_header_lines(lines: list[str], start: int) -> ForwardedMail | None:
    index = start
    while index < len(lines) and not _unquote(lines[index]).strip():
        index += 1
    if index >= len(lines):
        return None
    while index < len(lines) and _RULE_LINE_RE.match(_unquote(lines[index])):
        index += 1
    attribution = _attribution_end(lines, index)
    if attribution is not None:
        joined = " ".join(_unquote(line).strip() for line in lines[index:attribution])
        found = ForwardedMail()
        head = _WROTE_RE.split(joined)[0]
        addresses = getaddresses([head.split(",", 1)[-1] if "," in head else head])
        if addresses and "@" in addresses[-1][1]:
            found.from_name = addresses[-1][0].strip() or None
            found.from_address = addresses[-1][1].lower()
        date = re.match(r"^\s*\S+\s+(.*?),", head)
        found.date = date.group(1) if date else None
        found.body = _forwarded_body(lines[attribution:])
        return found
    fields: dict[str, str] = {}
    last: str | None = None
    while index < len(lines):
        line = _unquote(lines[index])
        kind = _label_kind(line)
        if kind is not None:
            value = line.split(":", 1)[1].strip()
            fields.setdefault(kind, value)
            last = kind if fields[kind] == value else None
        elif line.strip() and last in ("from", "to", "cc") and re.match(r"^\s+\S|^\s*<", line):
            fields[last] = f"{fields[last]} {line.strip()}"
        else:
            break
        index += 1
    if "from" not in fields:
        return None
    return _forwarded_from_fields(fields, lines[index:])


def _from_inline_headers(inline: str, rest: list[str]) -> ForwardedMail | None:
    """Yahoo writes the whole header block on the separator's line."""
    fields: dict[str, str] = {}
    matches = list(_INLINE_LABEL_RE.finditer(inline))
    for position, match in enumerate(matches):
        end = matches[position + 1].start() if position + 1 < len(matches) else len(inline)
        kind = _LABEL_KIND.get(match.group(1).lower())
        if kind:
            fields.setdefault(kind, inline[match.end() : end].strip())
    if "from" not in fields:
        return None
    return _forwarded_from_fields(fields, rest)


def _forwarded_from_fields(fields: dict[str, str], rest: list[str]) -> ForwardedMail:
    name, address = _one_address(fields["from"])
    return ForwardedMail(
        subject=fields.get("subject") or None,
        date=fields.get("date") or None,
        from_name=name,
        from_address=address,
        to=_address_list(fields.get("to", "")),
        cc=_address_list(fields.get("cc", "")),
        body=_forwarded_body(rest),
    )


def _address_list(value: str) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for name, address in getaddresses([value.replace(";", ",")]):
        if "@" in address and all(address.lower() != seen.lower() for _n, seen in out):
            name = name.strip().strip('"').strip()
            out.append((None if not name or name.lower() == address.lower() else name, address))
    return out


def _one_address(value: str) -> tuple[str | None, str | None]:
    found = _address_list(re.sub(r"\[mailto:[^\]]*\]", "", value))
    if found:
        return found[0]
    return (value.strip() or None), None


def _forwarded_body(lines: list[str]) -> str:
    import textwrap

    body = [_unquote(line) if _is_quoted(line) else line for line in lines]
    text = textwrap.dedent("\n".join(_strip_blank_edges(body)))
    return text.strip()
