"""Bare aiosmtpd servers for the benchmarks, each run as its own process.

`--mode reference`: the baseline. Appends every message to one spool file and
fsyncs it before answering 250 — the least any durable SMTP intake must do. The
benchmark drives it with the same clients and corpus as mailbridge and reports
mailbridge's rates as ratios to it.

`--mode relay`: mailbridge's outbound relay. Answers 250 at once and prints one
JSON line per message on stdout (arrival time on the shared CLOCK_MONOTONIC,
Message-ID, In-Reply-To, References, Subject, Date and the text body), which the
benchmark reads to time acknowledgements and to build replies to them.

Both print `LISTENING <port>` first, listen on 127.0.0.1 with a port the OS
chose, and stop on SIGTERM, when stdin is closed (the benchmark is gone) or
after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import os
import signal
import sys
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class ReferenceHandler:
    """Append + fsync, then 250: nothing else."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        head = f"From {envelope.mail_from or 'MAILER-DAEMON'} {time.time():.6f} {len(raw)}\n"
        os.write(self.fd, head.encode() + raw + b"\n")
        os.fsync(self.fd)
        self.count += 1
        return f"250 2.0.0 OK stored {self.count}"


class RelayHandler:
    """Report each message on stdout as one JSON line, then 250."""

    def __init__(self) -> None:
        self.out = sys.stdout

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        arrived = time.monotonic()
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        self.out.write(json.dumps(describe(raw, arrived, envelope), ensure_ascii=False) + "\n")
        self.out.flush()
        return "250 2.0.0 OK relayed"


def describe(raw: bytes, arrived: float, envelope: Envelope) -> dict[str, Any]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    text = ""
    try:
        body = msg.get_body(("plain",))
        if body is not None:
            text = str(body.get_content())[:4000]
    except (LookupError, ValueError, AttributeError):
        pass

    def header(name: str) -> str:
        value = msg.get(name)
        return " ".join(str(value).split()) if value is not None else ""

    return {
        "t": arrived,
        "mail_from": envelope.mail_from or "",
        "rcpt_tos": list(envelope.rcpt_tos),
        "size": len(raw),
        "message_id": header("Message-ID"),
        "in_reply_to": header("In-Reply-To"),
        "references": header("References").split(),
        "subject": header("Subject"),
        "date": header("Date"),
        "auto_submitted": header("Auto-Submitted"),
        "text": text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("reference", "relay"), required=True)
    parser.add_argument("--spool", help="reference mode: the file to append to")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--max-size", type=int, default=64 * 1024 * 1024)
    args = parser.parse_args(argv)

    handler: ReferenceHandler | RelayHandler
    if args.mode == "reference":
        if not args.spool:
            parser.error("--spool is required in reference mode")
        handler = ReferenceHandler(args.spool)
    else:
        handler = RelayHandler()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="sink.example", data_size_limit=args.max_size,
                     decode_data=False, enable_SMTPUTF8=True),
        host="127.0.0.1", port=0,
    ))
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"LISTENING {port}\n")
    sys.stdout.flush()

    stop = loop.stop
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    loop.call_later(args.max_seconds, stop)

    def stdin_readable() -> None:
        # The benchmark holds our stdin open; EOF means it is gone.
        if not os.read(stdin_fd, 4096):
            loop.remove_reader(stdin_fd)
            stop()

    stdin_fd = sys.stdin.fileno()
    loop.add_reader(stdin_fd, stdin_readable)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
