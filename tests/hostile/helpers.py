"""Tools for the hostile suite: a raw SMTP client, memory readings, the figures report."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tests.support.rules import quiet_desk_text

REPO = Path(__file__).resolve().parents[2]


class Closed(Exception):
    """The server hung up."""


class RawClient:
    """A byte-level SMTP client: sends exactly what it is given, reads whole replies."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply line in {timeout}s (have {self.buffer[:200]!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed(self.buffer.decode(errors="replace"))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self, timeout: float = 10.0) -> tuple[int, str]:
        """One complete (possibly multi-line) reply: its code and its text."""
        lines = []
        while True:
            line = self._line(timeout)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def command(self, line: bytes | str, timeout: float = 10.0) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply(timeout)

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True when the server closes the connection within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.buffer += chunk
        return False

    def drain_replies(self, timeout: float = 10.0) -> list[tuple[int, str]]:
        """Every reply until the server hangs up (or `timeout`)."""
        out: list[tuple[int, str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(self.reply(max(0.05, deadline - time.monotonic())))
            except (Closed, TimeoutError):
                break
        return out


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a live process (VmHWM in /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def hostile_rules(directory: Path) -> Path:
    """The demo rules with a rate limit that lets hundreds of acks go to one contact."""
    text = quiet_desk_text()
    assert "\ndesk:\n" in text
    from mailbridge.rules import Desk

    limits = "".join(f"  {name}: 100000\n" for name in ("auto_reply_limit_per_hour",
                                                       "ack_limit_per_hour")
                     if name in Desk.model_fields)
    text = text.replace("\ndesk:\n", "\ndesk:\n" + limits, 1)
    path = directory / "rules.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def report(test: str, **figures: Any) -> None:
    """Print a test's figures; append them to $MAILBRIDGE_HOSTILE_REPORT (JSON lines) if set."""
    line = json.dumps({"test": test, **figures}, ensure_ascii=False, default=str)
    print(f"\nFIGURES {line}")
    target = os.environ.get("MAILBRIDGE_HOSTILE_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
