"""SMTP abuse against the real listener: each attack gets its answer, others keep being served.

One daemon (module scope) with small limits: idle 1.5 s, session 4 s, 5 connections per
peer, 40 uses of a command per connection, 3 recipients, 200 kB per message.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.hostile.helpers import Closed, RawClient, report
from tests.support.daemon import Daemon, opening_mail

IDLE = 1.5
SESSION = 4.0
PER_PEER = 5
COMMANDS = 40
RCPTS = 3
SIZE = 200_000

ANSWERS: list[dict[str, object]] = []


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("abuse") / "d", {
        "MAILBRIDGE_SMTP_TIMEOUT": str(IDLE),
        "MAILBRIDGE_SMTP_SESSION_TIMEOUT": str(SESSION),
        "MAILBRIDGE_MAX_CONNECTIONS_PER_PEER": str(PER_PEER),
        "MAILBRIDGE_SMTP_COMMAND_LIMIT": str(COMMANDS),
        "MAILBRIDGE_MAX_RECIPIENTS": str(RCPTS),
        "MAILBRIDGE_MAX_MESSAGE_SIZE": str(SIZE),
    })
    daemon.upgrade()
    daemon.start()
    yield daemon
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
    assert daemon.stop() == 0
    report("smtp_abuse", cases=len(ANSWERS), answers=ANSWERS)


def record(case: str, sent: str, answer: str) -> None:
    ANSWERS.append({"case": case, "sent": sent, "answer": answer})


def served(daemon: Daemon, source: str = "127.0.0.1") -> None:
    """An ordinary client still gets its mail accepted."""
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10,
                      source_address=(source, 0)) as client:
        refused = client.send_message(opening_mail(subject=f"TEN-1001 Normal {time.time_ns()}"))
    assert refused == {}


def inbound_count(daemon: Daemon) -> int:
    return int(daemon.query("SELECT count(*) FROM inbound")[0][0])


def session(daemon: Daemon, source: str = "127.0.0.1") -> RawClient:
    client = RawClient(daemon.smtp_port, source=source)
    code, _ = client.reply()
    assert code == 220
    assert client.command("EHLO cliente.example")[0] == 250
    return client


SMUGGLED = (b"MAIL FROM:<ana@compensar.example>\r\nRCPT TO:<soporte-b@mesa.example>\r\n"
            b"DATA\r\nFrom: ana@compensar.example\r\nTo: soporte-b@mesa.example\r\n"
            b"Subject: TEN-1001 contrabando\r\nMessage-ID: <smuggled@compensar.example>\r\n\r\n"
            b"mensaje escondido")


@pytest.mark.parametrize("ending", [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r",
                                    b"\r.\r", b"\n..\r\n"],
                         ids=["LF.CRLF", "CRLF.LF", "LF.LF", "CR.CRLF", "CRLF.CR", "CR.CR", "LF..CRLF"])
def test_smuggling_is_one_message(daemon: Daemon, ending: bytes) -> None:
    before = inbound_count(daemon)
    with session(daemon) as client:
        assert client.command("MAIL FROM:<ana@compensar.example>")[0] == 250
        assert client.command("RCPT TO:<soporte-a@mesa.example>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(b"From: ana@compensar.example\r\nTo: soporte-a@mesa.example\r\n"
                    b"Subject: TEN-1001 primero\r\nMessage-ID: <first-" + ending.hex().encode()
                    + b"@compensar.example>\r\n\r\ntexto" + ending + SMUGGLED + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 250, text
        # Exactly one answer for the whole DATA: nothing of the tail ran as commands.
        code_quit, _ = client.command("QUIT")
        assert code_quit == 221
    rows = daemon.query("SELECT i.rcpt_tos, r.raw FROM inbound AS i "
                         "JOIN inbound_raw AS r ON r.inbound_id = i.id ORDER BY i.id")[before:]
    assert len(rows) == 1
    assert "soporte-b" not in str(rows[0][0])
    assert b"contrabando" in rows[0][1]  # kept inside the one message, as its text
    record(f"smuggling {ending!r}", "DATA with a fake end of data and a second transaction",
           f"{code} (one message stored, second never seen)")


def test_idle_client_gets_421_and_is_dropped(daemon: Daemon) -> None:
    client = RawClient(daemon.smtp_port)
    assert client.reply()[0] == 220
    started = time.monotonic()
    code, text = client.reply(timeout=IDLE + 5)
    waited = time.monotonic() - started
    assert code == 421 and "4.4.2" in text
    assert client.wait_closed(5)
    assert waited < IDLE + 2
    client.close()
    record("idle client", "connect, then silence", f"{text} after {waited:.1f}s, closed")
    served(daemon)


def test_slow_data_is_cut_and_nothing_is_stored(daemon: Daemon) -> None:
    before = inbound_count(daemon)
    with session(daemon) as client:
        assert client.command("MAIL FROM:<ana@compensar.example>")[0] == 250
        assert client.command("RCPT TO:<soporte-a@mesa.example>")[0] == 250
        assert client.command("DATA")[0] == 354
        started = time.monotonic()
        answer = None
        while time.monotonic() - started < IDLE + 6:
            try:
                client.send(b"x")  # one byte at a time, never a whole line
            except OSError:
                break
            try:
                answer = client.reply(timeout=0.3)
                break
            except TimeoutError:
                continue
            except Closed:
                break
        waited = time.monotonic() - started
    assert answer is not None and answer[0] == 421, answer
    assert waited < IDLE + 3
    assert inbound_count(daemon) == before
    record("slow DATA (one byte every 0.3 s)", "DATA trickled", f"{answer[1]} after {waited:.1f}s")
    served(daemon)


def test_session_time_limit(daemon: Daemon) -> None:
    with session(daemon) as client:
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < SESSION + 5:
            try:
                code, text = client.command("NOOP", timeout=2)
            except (Closed, OSError):
                break
            answers.append(code)
            if code == 421:
                break
            time.sleep(0.3)  # each NOOP resets the idle timer: only the total limit stops it
        waited = time.monotonic() - started
        assert answers[-1] == 421 and "too long" in text
        assert client.wait_closed(3)
    assert SESSION - 1 < waited < SESSION + 2
    record("endless NOOPs under the idle limit", "NOOP every 0.3 s",
           f"{text} after {waited:.1f}s (session limit {SESSION}s)")
    served(daemon)


def test_too_many_connections_from_one_peer(daemon: Daemon) -> None:
    held = [session(daemon) for _ in range(PER_PEER)]
    try:
        extra = RawClient(daemon.smtp_port)
        code, text = extra.reply()
        assert code == 421 and "Too many connections" in text
        assert extra.wait_closed(3)
        extra.close()
        # Another address is not affected.
        served(daemon, source="127.0.0.2")
        record(f"connection {PER_PEER + 1} from one IP", f"{PER_PEER} held open", text)
    finally:
        for client in held:
            client.close()
    deadline = time.monotonic() + 5
    while True:  # the slots come back once the sessions are gone
        try:
            served(daemon)
            break
        except smtplib.SMTPConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_too_many_recipients(daemon: Daemon) -> None:
    before = inbound_count(daemon)
    with session(daemon) as client:
        assert client.command("MAIL FROM:<ana@compensar.example>")[0] == 250
        codes = [client.command(f"RCPT TO:<soporte-{c}@mesa.example>")[0] for c in "abc"]
        code, text = client.command("RCPT TO:<soporte-a@mesa.example>")
        assert codes == [250, 250, 250] and code == 452
        assert client.command("RCPT TO:<victima@otro.example>")[0] == 550
        assert client.command("DATA")[0] == 354
        client.send(opening_mail().as_bytes().replace(b"\n", b"\r\n") + b".\r\n")
        assert client.reply()[0] == 250
    assert inbound_count(daemon) == before + 1
    record(f"recipient {RCPTS + 1}", "RCPT TO ×4", text)
    record("foreign recipient", "RCPT TO:<victima@otro.example>", "550 5.7.1 relay access denied")


def test_oversize_declared_and_undeclared(daemon: Daemon) -> None:
    before = inbound_count(daemon)
    with session(daemon) as client:
        code, declared = client.command(f"MAIL FROM:<ana@compensar.example> SIZE={SIZE + 1}")
        assert code == 552
        assert client.command("MAIL FROM:<ana@compensar.example>")[0] == 250
        assert client.command("RCPT TO:<soporte-a@mesa.example>")[0] == 250
        assert client.command("DATA")[0] == 354
        line = b"x" * 998 + b"\r\n"
        client.send(b"Subject: grande\r\n\r\n" + line * (SIZE // 1000 + 50) + b".\r\n")
        code2, undeclared = client.reply()
        assert code2 == 552
        # The connection stays usable after a refusal.
        assert client.command("RSET")[0] == 250
    assert inbound_count(daemon) == before
    record("oversize, SIZE declared", f"MAIL FROM … SIZE={SIZE + 1}", declared)
    record("oversize, not declared", f"{SIZE // 1000 + 50} kB of DATA", undeclared)


def test_long_line_in_data_is_refused(daemon: Daemon) -> None:
    before = inbound_count(daemon)
    with session(daemon) as client:
        assert client.command("MAIL FROM:<ana@compensar.example>")[0] == 250
        assert client.command("RCPT TO:<soporte-a@mesa.example>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(b"Subject: linea\r\n\r\n" + b"y" * 150_000 + b"\r\n.\r\n")
        code, text = client.reply()
    assert code == 500 and "Line too long" in text
    assert inbound_count(daemon) == before
    record("150 kB single line over SMTP", "DATA", text)


def test_pipelining_flood_is_cut(daemon: Daemon) -> None:
    # The server hangs up with the rest of the flood unread, so the kernel may reset
    # the connection before the client has read every answer: the answers it did
    # read must be in order, and the daemon's log names the cut.
    with session(daemon) as client:
        client.send(b"NOOP\r\n" * 20_000)
        replies = client.drain_replies(timeout=10)
        assert client.wait_closed(3)
    codes = [c for c, _ in replies]
    assert len(codes) <= COMMANDS + 1
    assert set(codes[:COMMANDS]) <= {250}
    assert codes[COMMANDS:] in ([], [421])
    record("pipelined flood", "20,000 NOOP in one write",
           f"{COMMANDS} × 250, then '421 4.7.0 NOOP sent too many times', closed "
           f"(client read {len(codes)} answers before the reset)")

    with session(daemon) as client:
        client.send(b"MAIL FROM:<ana@compensar.example>\r\n"
                    + b"RCPT TO:<soporte-a@mesa.example>\r\n" * 5_000)
        replies = client.drain_replies(timeout=10)
        assert client.wait_closed(3)
    codes = [c for c, _ in replies]
    assert codes[0] == 250 and codes[1:RCPTS + 1] == [250] * RCPTS
    assert set(codes[RCPTS + 1:COMMANDS + 1]) <= {452} and codes[COMMANDS + 1:] in ([], [421])
    log = daemon.log_path.read_text(errors="replace")
    assert "over limit for NOOP" in log and "over limit for RCPT" in log
    record("pipelined RCPT flood", "5,000 RCPT TO in one write",
           f"{RCPTS} × 250, 452 up to {COMMANDS}, then 421, closed")
    served(daemon)


def test_invalid_commands(daemon: Daemon) -> None:
    with session(daemon) as client:
        cases = [
            (b"DATA", 503), (b"RCPT TO:<soporte-a@mesa.example>", 503),
            (b"MAIL FROM:<@@>", 553), (b"MAIL FROM:", 501),
            (b"MAIL FROM:<a@compensar.example> BODY=9BIT", 501),
            (b"MAIL FROM:<a@compensar.example> FOO=1", 555),
            (b"HELO", 501), (b"VRFY soporte-a@mesa.example", 252), (b"EXPN lista", 502),
            (b"AUTH PLAIN AGFuYQBzZWNyZXRv", 538), (b"STARTTLS", 454),
            (b"MAIL FROM:<" + b"a" * 2000 + b"@x.example>", 500), (b"", 500),
        ]
        for line, expected in cases:
            assert client.command("RSET")[0] == 250
            code, text = client.command(line)
            assert code == expected, (line[:40], code, text)
            record("invalid command", repr(line[:40]), text.splitlines()[0][:80])
        # A CR inside an address is no way to a second header or recipient.
        assert client.command("MAIL FROM:<ana@compensar.example>")[0] == 250
        code, text = client.command(b"RCPT TO:<soporte-a@mesa.example\rBcc: x@otro.example>")
        assert code in (501, 550, 553), text
        record("CR inside RCPT", "RCPT TO:<soporte-a@mesa.example\\rBcc: …>", text)
        # Unknown verbs: a few are answered, then the client is dropped.
        answers = []
        for verb in (b"FOO", b"\x00\xff", b"GET / HTTP/1.1", b"XYZZY", b"BAR", b"BAZ"):
            try:
                answers.append(client.command(verb))
            except Closed:
                break
        assert answers[-1][0] == 502 and client.wait_closed(3)
        record("unknown commands", "FOO, NUL/0xFF, GET / HTTP/1.1, …",
               f"{answers[0][1]} … then {answers[-1][1]}, closed")
    served(daemon)


def test_abuse_does_not_stop_others(daemon: Daemon) -> None:
    """While floods, idlers and a full peer table go on, a normal client is served."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def flood() -> None:
        while not stop.is_set():
            try:
                with RawClient(daemon.smtp_port, source="127.0.0.3") as client:
                    client.send(b"EHLO x\r\n" + b"NOOP\r\n" * 5_000)
                    client.drain_replies(timeout=3)
            except OSError:
                pass

    def idlers() -> None:
        socks = []
        try:
            for _ in range(PER_PEER + 3):
                socks.append(socket.create_connection(("127.0.0.1", daemon.smtp_port),
                                                      source_address=("127.0.0.4", 0)))
            stop.wait(10)
        finally:
            for s in socks:
                s.close()

    threads = [threading.Thread(target=flood) for _ in range(2)] + [threading.Thread(target=idlers)]
    for t in threads:
        t.start()
    try:
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            try:
                served(daemon)
            except BaseException as exc:
                errors.append(exc)
            latencies.append(time.monotonic() - started)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors
    assert max(latencies) < 3
    record("normal client during floods and idlers", "5 mails",
           f"all 250, slowest {max(latencies) * 1000:.0f} ms")
