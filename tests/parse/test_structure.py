"""mailbridge.parse.structure builds the very tree the stdlib's parser builds, or none."""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from pathlib import Path

import pytest

from mailbridge.parse.structure import message_from_bytes, regular_message
from tests.support.corpus import mail_files

MESSAGES = Path(__file__).resolve().parent.parent / "messages"


def _tree(message: object) -> object:
    """Everything the stdlib sets on a Message, all the way down."""
    if not isinstance(message, Message):
        return ("not a message", repr(message))
    payload = message._payload  # type: ignore[attr-defined]
    if isinstance(payload, list):
        payload = [_tree(part) for part in payload]
    return (type(message), list(message._headers), message._unixfrom,  # type: ignore[attr-defined]
            message.preamble, message.epilogue,
            [(type(d), str(d)) for d in message.defects],
            message._default_type, message._charset, payload,  # type: ignore[attr-defined]
            message.policy, sorted(vars(message)))


def _variants(raw: bytes) -> list[bytes]:
    """raw, and raw with every line end written as LF, CRLF and CR."""
    lf = raw.replace(b"\r\n", b"\n")
    return [raw, lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")]


def _check(raw: bytes) -> bool:
    """True when the fast reading applies; it must then equal the stdlib's."""
    found = regular_message(raw)
    if found is None:
        return False
    assert _tree(found) == _tree(email.message_from_bytes(raw, policy=email.policy.compat32))
    return True


def _mail_files() -> list[Path]:
    return mail_files(MESSAGES)


def test_every_test_and_corpus_mail_reads_as_the_stdlib_reads_it() -> None:
    files = _mail_files()
    fast = 0
    for path in files:
        for raw in _variants(path.read_bytes()):
            fast += _check(raw)
    assert fast > len(files)  # most mail is regular


HEAD = b"From: a@b.example\nTo: c@d.example\nSubject: s\nMIME-Version: 1.0\n"


def _multipart(body: bytes, boundary: bytes = b"XYZ", kind: bytes = b"mixed") -> bytes:
    return HEAD + b"Content-Type: multipart/" + kind + b'; boundary="' + boundary + b'"\n\n' + body


NESTED = _multipart(
    b"--XYZ\nContent-Type: multipart/alternative; boundary=IN\n\ninner preamble\n"
    b"--IN\n\nplain\n--IN\nContent-Type: text/html\n\n<b>html</b>\n--IN--\ninner epilogue\n"
    b"\n--XYZ\nContent-Type: application/pdf\nContent-Disposition: attachment\n\n%PDF\n"
    b"--XYZ--\n")
EDGE_CASES = [
    HEAD + b"\nplain body\n",
    HEAD + b"\n",
    HEAD + b"\nno line end at the end",
    b"\nno headers at all\n",
    b"\r\n\r\nempty line first\r\n",
    b"From someone Mon Jan  1 00:00:00 2024\n" + HEAD + b"\nbody\n",
    HEAD + b"From the body\n\nbody\n",  # a From line ends the header block
    HEAD + b"not a header\n\nbody\n",
    HEAD + b" continued\n\nbody\n",
    b" first line continued\n" + HEAD + b"\nbody\n",
    b": no name\n" + HEAD + b"\nbody\n",
    HEAD + b"X-Folded: one\n two\n\tthree\n\nbody\n",
    HEAD + b"X-Eight-Bit: \xc3\xa1\xff\n\n\xe9t\xe9\n",
    HEAD + b"X-Form-Feed: a\x0cb\x0bc\x1cd\x1de\x1ef\n\nbody\x0c\x0b\x1c\n",
    _multipart(b"--XYZ\nX-Form-Feed: a\x0cb\n\none\x0c\n--XYZ\x0c\n--XYZ--\x0b\n--XYZ--\n"),
    HEAD,  # headers only
    b"",
    b"garbage without any line end",
    HEAD + b"\r\r\nbody after CR CR LF\r\n",
    HEAD + b"Subject: x\r\n\r\n\nbody\n",
    _multipart(b"--XYZ\n\nno headers\n--XYZ--\n"),
    _multipart(b"--XYZ\nContent-Type: text/plain\n\none\n--XYZ\nContent-Type: text/html\n\n"
               b"<p>two</p>\n--XYZ--\n"),
    _multipart(b"preamble\nlines\n--XYZ\n\none\n--XYZ--\nepilogue\nlines\n"),
    _multipart(b"\n--XYZ\n\none\n--XYZ--\n\n"),
    _multipart(b"--XYZ\n\none\n--XYZ--"),
    _multipart(b"--XYZ\n\none\n--XYZ--  \t\n"),
    _multipart(b"--XYZ \t\n\none\n--XYZ--\n"),
    _multipart(b"--XYZ\n\none\n--XYZA\nstill one\n --XYZ\n--XYZ--x\n--XYZ--\n"),
    _multipart(b"--XYZ\n\none\n--XYZ\n--XYZ\n\ntwo\n--XYZ--\n"),  # doubled delimiter lines
    _multipart(b"--XYZ\n\none\n--XYZ\n"),  # no closing delimiter
    _multipart(b"--XYZ\n\none\n"),
    _multipart(b"no delimiter at all\n"),
    _multipart(b"--XYZ--\n"),
    _multipart(b"--XYZ\n"),
    _multipart(b"--XYZ\n\none\n--XYZ--\n", boundary=b""),
    _multipart(b"--XYZ\n\none\n--XYZ--\n", kind=b"digest"),
    _multipart(b"-- a b\n\none\n-- a b--\n", boundary=b" a b"),
    _multipart(b"--\xc3\xa1\n\none\n--\xc3\xa1--\n", boundary=b"\xc3\xa1"),
    HEAD + b"Content-Type: multipart/mixed\n\n--XYZ\n\none\n--XYZ--\n",  # no boundary
    HEAD + b"Content-Type: multipart/mixed; boundary=XYZ\nContent-Transfer-Encoding: base64\n\n"
           b"--XYZ\n\none\n--XYZ--\n",
    HEAD + b"Content-Type: message/rfc822\n\nFrom: x@y.example\n\ninner\n",
    NESTED,
    _multipart(b"--XYZ\nContent-Type: multipart/alternative; boundary=IN\n\n--IN\n\nplain\n"
               b"--IN--\n--XYZ--\n"),
    _multipart(b"--XYZ\nContent-Type: multipart/alternative; boundary=IN\n\n--IN\n\nplain\n"
               b"--XYZ--\n"),  # the inner multipart is not closed
    _multipart(b"--XYZ\nContent-Type: multipart/alternative; boundary=XYZ\n\n--XYZ\n\nplain\n"
               b"--XYZ--\n--XYZ--\n"),  # the same boundary inside
    _multipart(b"--XYZ\nContent-Type: multipart/alternative; boundary=XY\n\n--XY\n\nplain\n"
               b"--XYZ\n--XY--\n--XYZ--\n"),
    _multipart(b"--XYZ\nContent-Type: text/plain\n--XYZ--\n"),  # no empty line in the part
    _multipart(b"--XYZ\nbody text at once\n--XYZ--\n"),
    _multipart(b"--XYZ\nContent-Type: message/rfc822\n\nFrom: x@y.example\n\ninner\n--XYZ--\n"),
    _multipart(b"--XYZ\n\none\r\n--XYZ\r\n\r\ntwo\r--XYZ--\r\n"),
    _multipart(b"--XYZ\n\n\n\n--XYZ--\n\n\n"),
]


@pytest.mark.parametrize("raw", EDGE_CASES, ids=[str(n) for n in range(len(EDGE_CASES))])
def test_edge_cases_read_as_the_stdlib_reads_them(raw: bytes) -> None:
    for variant in _variants(raw):
        _check(variant)
        assert _tree(message_from_bytes(variant)) == _tree(
            email.message_from_bytes(variant, policy=email.policy.compat32))


def test_common_shapes_take_the_fast_reading() -> None:
    for raw in _variants(NESTED):  # nested, with preambles and epilogues
        found = regular_message(raw)
        assert found is not None and len(list(found.walk())) == 5
    assert sum(regular_message(raw) is not None for raw in EDGE_CASES) >= 20


def _header_blocks() -> list[str]:
    import re

    blocks = [
        "", "\n", "\r\n", "A: b", "A: b\n", "A: b\n\n", "A: b\r\n\r\n", "A: b\r\r\n", " A: b\n\n",
        "A: b\n c\n\td\n\n", "From x\nA: b\n\n", "A: b\nFrom x\n\n", ": b\n\n", "A b: c\n\n",
        "A: b\nnot a header\n\n", "A: b\x0cc\n\n", "A:\n\n", "A:b:c\n\n", "A: \udcc3\udca1\n\n",
        "A: b\n\nbody\n", "A: b\n \n\n",
    ]
    blank = re.compile(r"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
    for path in _mail_files():
        for raw in _variants(path.read_bytes()):
            text = raw.decode("ascii", "surrogateescape")
            found = blank.search(text)
            if found is not None:
                blocks.append(text[:found.end()])
    return blocks


def test_header_blocks_read_as_the_stdlib_reads_them() -> None:
    from email.parser import Parser

    from mailbridge.parse.structure import parse_headers

    for block in _header_blocks():
        assert _tree(parse_headers(block)) == _tree(
            Parser(policy=email.policy.compat32).parsestr(block, headersonly=True)), block
