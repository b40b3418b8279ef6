"""The compat32 `Message` tree of well-formed mail, without the stdlib's line-by-line parse.

`email.message_from_bytes` feeds every line of a message, bodies included, through the
feedparser's generator, checks each one against the boundary pattern of every multipart
it is inside, and compiles one such pattern per multipart (a new boundary misses the
`re` cache every time). For mail whose structure is regular, `message_from_bytes` here
finds the same header blocks, delimiter lines, preambles, epilogues and bodies by
searching the text, lets the stdlib parse each header block alone, and gives the tree the
stdlib would give: the same `Message` objects with the same headers, payloads, preambles,
epilogues and (no) defects.

Anything the feedparser would report as a defect or read in a way of its own (a missing
header/body separator, a multipart without a boundary or without its closing delimiter,
doubled delimiter lines, message/* and multipart/digest parts, a boundary with
characters outside printable ASCII) is not read here: such mail is parsed by the stdlib.
tests/parse/test_structure.py compares both readings over the test messages, the shared
corpus and made-up edge cases.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
from email.message import Message

__all__ = ["message_from_bytes", "parse_headers", "regular_message"]

_POLICY = email.policy.compat32
# A line end, then an empty line: the end of a header block (a lone CR ends a line,
# a CR before LF does not).
_BLANK_LINE = re.compile(r"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_MAX_DEPTH = 30
# A field name as the feedparser takes it: printable ASCII up to the first colon.
_FIELD_NAME = re.compile(r"[\041-\071\073-\176]+")


class _Irregular(Exception):
    """The structure is not one read here: the stdlib parses the message."""


def message_from_bytes(raw: bytes) -> Message:
    """`email.message_from_bytes(raw, policy=compat32)`, cheaper for regular mail."""
    message = regular_message(raw)
    if message is None:
        return email.message_from_bytes(raw, policy=_POLICY)
    return message


def regular_message(raw: bytes) -> Message | None:
    """The stdlib's tree for `raw`, or None when its structure is not a regular one."""
    # The stdlib's bytes parser reads the text this way too: one character per byte.
    text = raw.decode("ascii", "surrogateescape")
    try:
        return _entity(text, 0, len(text), False, 0)
    except Exception:  # _Irregular, or anything else: the stdlib's parse decides
        return None


def _without_eol(text: str, start: int, end: int) -> int:
    """Where text[start:end] ends without one trailing line end (which belongs to the
    delimiter line after it)."""
    if end - start >= 2 and text.startswith("\r\n", end - 2, end):
        return end - 2
    if end > start and text[end - 1] in "\r\n":
        return end - 1
    return end


def parse_headers(block: str) -> Message:
    """`email.parser.Parser(policy=compat32).parsestr(block, headersonly=True)`, cheaper
    when `block` is header lines and the empty line that ends them."""
    lines = block.splitlines(True)
    if lines and lines[-1] in ("\r\n", "\n", "\r"):
        lines.pop()  # the empty line
        message = Message(policy=_POLICY)
        header: list[str] = []
        for line in lines:
            if not line.endswith(("\n", "\r")):
                break  # split at a character only str.splitlines() takes for a line end
            if line[0] in " \t":
                if not header:
                    break  # a continuation line first
                header.append(line)
                continue
            colon = line.find(":")
            if colon <= 0 or not _FIELD_NAME.fullmatch(line, 0, colon):
                break  # not a header line, or a From line
            if header:
                message.set_raw(*_POLICY.header_source_parse(header))
            header = [line]
        else:
            if header:
                message.set_raw(*_POLICY.header_source_parse(header))
            message.set_payload("")
            return message
    # Anything unusual in the block: the stdlib reads it.
    return email.parser.Parser(policy=_POLICY).parsestr(block, headersonly=True)


def _entity(text: str, start: int, end: int, nested: bool, depth: int) -> Message:
    """The message or body part in text[start:end] (whole lines, as the feedparser sees them)."""
    if depth > _MAX_DEPTH:
        raise _Irregular
    if start < end and text[start] in "\r\n":  # no headers: the empty line opens the body
        body = start + (2 if text.startswith("\r\n", start, end) else 1)
    else:
        found = _BLANK_LINE.search(text, start, end)
        if found is None:
            raise _Irregular  # headers up to the end (or nothing at all)
        body = found.end()
    message = parse_headers(text[start:body])
    if message.defects or message._payload != "":  # type: ignore[attr-defined]
        raise _Irregular  # a line the header block ends at otherwise, or reported
    maintype = message.get_content_maintype()
    if maintype == "message":
        raise _Irregular
    if maintype != "multipart":
        message.set_payload(text[body:_without_eol(text, body, end) if nested else end])
        return message
    if message.get_content_type() == "multipart/digest":
        raise _Irregular  # its parts default to message/rfc822
    boundary = message.get_boundary()
    if not boundary or not boundary.isascii() or not boundary.isprintable():
        raise _Irregular
    if str(message.get("content-transfer-encoding", "8bit")).lower() \
            not in ("7bit", "8bit", "binary"):
        raise _Irregular  # a defect the stdlib reports
    separator = "--" + boundary
    parts: list[Message] = []
    part_start: int | None = None  # None: still in the preamble
    position = body
    while True:
        found = text.find(separator, position, end)
        if found == -1:
            raise _Irregular  # no closing delimiter (or no delimiter at all)
        position = found + 1
        if found > body and text[found - 1] not in "\r\n":
            continue  # not at the start of a line
        cursor = found + len(separator)
        closing = text.startswith("--", cursor, end)
        if closing:
            cursor += 2
        while cursor < end and text[cursor] in " \t":
            cursor += 1
        if cursor < end:
            if text[cursor] not in "\r\n":
                continue  # a longer line that starts with the delimiter
            after = cursor + (2 if text.startswith("\r\n", cursor, end) else 1)
        elif end == len(text):
            after = cursor  # the last line of the message, with no line end
        else:
            raise _Irregular
        if part_start is None:
            if closing:
                raise _Irregular  # a closing delimiter before any part
            if found > body:
                message.preamble = text[body:_without_eol(text, body, found)]
        else:
            if found == part_start:
                raise _Irregular  # delimiter lines in a row: the stdlib skips them
            parts.append(_entity(text, part_start, found, True, depth + 1))
        if closing:
            if not nested:
                message.epilogue = text[after:end]
            elif after < end:
                message.epilogue = text[after:_without_eol(text, after, end)]
            else:
                message.epilogue = None
            break
        if after == end:
            raise _Irregular  # a delimiter at the very end: no closing one
        part_start = after
        position = after
    message._payload = parts  # type: ignore[attr-defined]
    return message
