"""DATA as the listener collects it: byte for byte, limits and replies as aiosmtpd's own.

Each transaction goes to two real servers on loopback: mailbridge's listener
(`smtp_factory`) and a plain aiosmtpd `SMTP` with the same limits. Both must answer
the same, and what mailbridge stores must be aiosmtpd's content under one
`Received:` line.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbridge.intake.smtp import IntakeHandler, ListenerSMTP, smtp_factory
from mailbridge.rules import load_rules
from mailbridge.settings import Settings
from mailbridge.spool import InboundMail
from tests.support.daemon import free_port

REPO = Path(__file__).resolve().parents[2]
LIMIT = 64 * 1024
RCPT = "soporte-a@mesa.example"
TRACE = re.compile(rb"\AReceived: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
                   rb"\tby mx\.test \(mailbridge\) with ESMTP\r\n\tfor <soporte-a@mesa\.example>;"
                   rb" [^\r\n]+ \+0000\r\n")


class _Recording:
    """aiosmtpd's reference handler: keeps what the plain SMTP class collected."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(bytes(envelope.original_content or b""))
        return "250 OK"


class _Listener(Controller):
    def __init__(self, make: Any, port: int) -> None:
        self.make = make
        super().__init__(None, hostname="127.0.0.1", port=port)

    def factory(self) -> ListenerSMTP:
        return self.make()  # type: ignore[no-any-return]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[int, list[InboundMail], int, _Recording]]:
    """(mailbridge port, the mails it stored, aiosmtpd port, aiosmtpd's contents)."""
    settings = Settings(data_dir=tmp_path, rules=REPO / "rules.yaml", max_message_size=LIMIT,
                        hostname="mx.test", _env_file=None)
    rules = load_rules(REPO / "rules.yaml")
    stored: list[InboundMail] = []

    async def store(mail: InboundMail) -> int:
        stored.append(mail)
        return len(stored)

    ours = _Listener(smtp_factory(IntakeHandler(lambda: rules, settings, store), settings),
                     free_port())
    reference = _Recording()
    theirs = Controller(reference, hostname="127.0.0.1", port=free_port(),
                        data_size_limit=LIMIT, decode_data=False)
    ours.start()
    theirs.start()
    try:
        yield ours.port, stored, theirs.port, reference
    finally:
        ours.stop()
        theirs.stop()


def _reply(reader: Any) -> bytes:
    lines = []
    while True:
        line = reader.readline()
        assert line, "connection closed"
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def transact(port: int, wire: bytes) -> bytes:
    """One transaction whose DATA is `wire` as sent (already dot-stuffed, with the end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert _reply(reader).startswith(b"220")
        for command in (b"EHLO client.example", b"MAIL FROM:<ana@compensar.example>",
                        f"RCPT TO:<{RCPT}>".encode()):
            sock.sendall(command + b"\r\n")
            assert _reply(reader)[:1] == b"2", command
        sock.sendall(b"DATA\r\n")
        assert _reply(reader).startswith(b"354")
        sock.sendall(wire)
        answer = _reply(reader)
        sock.sendall(b"QUIT\r\n")
        return answer


def stuff(message: bytes) -> bytes:
    """What a client puts on the wire: leading dots doubled, the final dot line."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) \
        + (b"" if message.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def _line(i: int) -> bytes:
    return (b"." if i % 7 == 0 else b"") + f"line {i} ".encode() + b"x" * (i % 900) + b"\r\n"


def _big_message() -> bytes:
    body = bytearray(b"Subject: many lines\r\n\r\n")
    i = 0
    while len(body) < LIMIT - 2000:
        body += _line(i)
        i += 1
    return bytes(body)


MESSAGES = {
    "dot-stuffed CRLF": b"Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\n...\r\nend\r\n",
    "bare LF lines": b"Subject: lf\n\nuno\ndos\n.tres\n",
    "mixed endings": b"Subject: mixed\r\nX: y\n\r\nbody\rmore\n.\r\n\r\n",
    "NUL and 8 bit": b"Subject: bytes\r\n\r\n\x00\xff\xfe caf\xc3\xa9\r\n",
    "lines up to the limit": b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\n",
    "many lines near the size limit": _big_message(),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_accepted_mail_is_stored_byte_for_byte(servers, name: str) -> None:  # type: ignore[no-untyped-def]
    port, stored, reference_port, reference = servers
    message = MESSAGES[name]
    wire = stuff(message) if b"\r\n" in message else message + b"\r\n.\r\n"
    answer = transact(port, wire)
    assert answer == b"250 2.0.0 OK queued as 1\r\n"
    assert transact(reference_port, wire) == b"250 OK\r\n"
    (mail,) = stored
    raw = mail.raw
    # The buffer the listener filled is what gets stored: no second copy.
    assert isinstance(raw, bytearray)
    trace = TRACE.match(raw)
    assert trace is not None, raw[:300]
    assert raw[trace.end():] == reference.contents[0]
    if b"\n" not in message.replace(b"\r\n", b""):
        assert raw[trace.end():] == message
    assert mail.size == len(raw) and mail.rcpt_tos == [RCPT]


def sized(total: int, fill: bytes = b"z") -> bytes:
    """DATA of exactly `total` bytes before the final dot, in lines of 1000."""
    full, rest = divmod(total, 1000)
    if rest < 2:
        full, rest = full - 1, rest + 1000
    return (fill * 998 + b"\r\n") * full + fill * (rest - 2) + b"\r\n.\r\n"


WIRE_CASES = {
    "exactly the size limit": (sized(LIMIT), b"250"),
    "one byte over the size": (sized(LIMIT + 1), b"552 Error: Too much mail data\r\n"),
    "a line over 1001 bytes": (b"Subject: x\r\n\r\n" + b"a" * 1000 + b"\r\n.\r\n",
                               b"500 Line too long"),
    "a line far over the reader's limit": (b"Subject: x\r\n\r\n" + b"b" * 5000 + b"\r\n.\r\n",
                                           b"500 Line too long"),
    "LF-only mail over one line's limit": (b"Subject: x\n\n" + b"short line\n" * 200
                                           + b"\r\n.\r\n", b"500 Line too long"),
    "too long, then too much": (b"c" * 3000 + b"\r\n" + sized(LIMIT + 10), b"500 Line too long"),
    "too much, then too long": (sized(LIMIT + 10)[:-3] + b"c" * 3000 + b"\r\n.\r\n",
                                b"552 Error: Too much mail data\r\n"),
    "a dot after a long fragment is not the end": (b"e" * 3000 + b".\r\n" + b"f\r\n.\r\n",
                                                   b"500 Line too long"),
}


@pytest.mark.parametrize("name", list(WIRE_CASES))
def test_answers_are_aiosmtpds(servers, name: str) -> None:  # type: ignore[no-untyped-def]
    port, stored, reference_port, reference = servers
    wire, expected = WIRE_CASES[name]
    theirs = transact(reference_port, wire)
    ours = transact(port, wire)
    assert theirs.startswith(expected) and ours.startswith(expected)
    if expected == b"250":
        (mail,) = stored
        raw = mail.raw
        assert raw is not None
        trace = TRACE.match(raw)
        assert trace is not None and raw[trace.end():] == reference.contents[0]
        assert len(reference.contents[0]) == LIMIT
    else:
        assert ours == theirs
        assert stored == [] and reference.contents == []


def test_the_session_goes_on_after_a_refused_data(servers) -> None:  # type: ignore[no-untyped-def]
    port, stored, _, _ = servers
    assert transact(port, b"a" * 5000 + b"\r\n.\r\n").startswith(b"500")
    assert transact(port, stuff(b"Subject: ok\r\n\r\nfine\r\n")).startswith(b"250")
    assert len(stored) == 1
