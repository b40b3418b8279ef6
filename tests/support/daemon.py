"""Start the real `mailbridge run` as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tests.support.rules import DEMO_RULES, write_quiet_desk


def free_port() -> int:
    """A port nothing listens on right now (for a relay that is 'down')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """One mailbridge instance with its own data dir and database."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, *,
                 desk_notices: bool = False) -> None:
        """`desk_notices`: the demo rules as shipped, whose queues' people hear of every
        case; by default the quiet desk (tests/support/rules.py)."""
        self.data_dir = data_dir
        # The developer's own MAILBRIDGE_* settings must not leak into a test.
        base = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
        self.env = {
            **base,
            "MAILBRIDGE_DATA_DIR": str(data_dir),
            "MAILBRIDGE_RULES": str(DEMO_RULES if desk_notices
                                    else write_quiet_desk(data_dir.parent / f"{data_dir.name}-rules")),
            "MAILBRIDGE_SMTP_LISTEN": "127.0.0.1:0",
            "MAILBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
            "MAILBRIDGE_WORKER_POLL_INTERVAL": "0.5",
            "MAILBRIDGE_OUTBOX_RETRY_BASE": "0.2",
            "MAILBRIDGE_OUTBOX_RETRY_MAX": "1",
            "MAILBRIDGE_DRAIN_TIMEOUT": "10",
            # `MAILBRIDGE_TEST_PIPELINE_PROCESSES=N pytest …` runs every daemon with
            # its pipeline in N child processes (the default is the in-process thread).
            **({"MAILBRIDGE_PIPELINE_PROCESSES": os.environ["MAILBRIDGE_TEST_PIPELINE_PROCESSES"]}
               if os.environ.get("MAILBRIDGE_TEST_PIPELINE_PROCESSES") else {}),
            **(env or {}),
        }
        if not (env and "MAILBRIDGE_RELAY" in env):
            self.env.pop("MAILBRIDGE_RELAY", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.smtp_port = 0
        self.http_port = 0
        self.lmtp_where: Any = None  # [host, port] or a unix socket path
        self.log_path = data_dir / "daemon.log"

    def cli(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [sys.executable, "-m", "mailbridge", *args],
            env=self.env, input=input, capture_output=True, timeout=60, check=False,
            cwd=self.data_dir,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"mailbridge {' '.join(args)} → {result.returncode}: {result.stderr.decode()}")
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def upgrade(self) -> None:
        """Migrate the daemon's database (in this process: `db upgrade` has its own test)."""
        from mailbridge.schema import upgrade

        self.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(self.database_url)

    def start(self, timeout: float = 20.0) -> Daemon:
        listen = self.data_dir / "run" / "listen.json"
        listen.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailbridge", "run"],
            env=self.env, stdout=log, stderr=log, cwd=self.data_dir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log_tail()}")
            if listen.exists():
                data = json.loads(listen.read_text())
                if data["pid"] == self.proc.pid:
                    self.smtp_port = data["smtp"][1]
                    self.http_port = data["http"][1]
                    self.lmtp_where = data.get("lmtp")
                    return self
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start in {timeout}s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon ignored signal {sig}: {self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def http_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)

    def lmtp(self) -> smtplib.LMTP:
        """A client for the LMTP listener (MAILBRIDGE_LMTP_LISTEN), TCP or unix socket."""
        where = self.lmtp_where
        assert where is not None, "the daemon has no LMTP listener"
        if isinstance(where, str):
            return smtplib.LMTP(where, timeout=30)
        return smtplib.LMTP(where[0], where[1], timeout=30)

    def send(self, msg: EmailMessage, *, rcpt: list[str] | None = None) -> None:
        with self.smtp() as client:
            client.send_message(msg, to_addrs=rcpt)

    @property
    def database_url(self) -> str:
        return self.env.get("MAILBRIDGE_DATABASE_URL") or f"sqlite:///{self.data_dir / 'mailbridge.db'}"

    def query(self, sql: str, **params: object) -> list[tuple[Any, ...]]:
        """Run SQL on the daemon's database directly (tests only; SQLite or PostgreSQL)."""
        from sqlalchemy import text

        from mailbridge.db import make_engine

        engine = make_engine(self.database_url, immediate=False)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(sql), params)
                return [tuple(r) for r in result.fetchall()] if result.returns_rows else []
        finally:
            engine.dispose()

    def break_spool_inserts(self, broken: bool = True) -> None:
        """A real database fault: every insert into the spool aborts (or works again)."""
        if "postgresql" in self.database_url:
            if broken:
                self.query("CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left'; END $$")
                self.query("CREATE TRIGGER disk_full BEFORE INSERT ON inbound "
                           "FOR EACH ROW EXECUTE FUNCTION disk_full()")
            else:
                self.query("DROP TRIGGER disk_full ON inbound")
                self.query("DROP FUNCTION disk_full()")
        elif broken:
            self.query("CREATE TRIGGER disk_full BEFORE INSERT ON inbound "
                       "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        else:
            self.query("DROP TRIGGER disk_full")

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until every stored mail is processed and nothing due waits in the outbox."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = self.query("SELECT count(*) FROM inbound WHERE state = 'new'")[0][0]
            pending = self.query("SELECT count(*) FROM outbox WHERE state = 'pending'")[0][0]
            if not waiting and not pending:
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon did not settle in {timeout}s: {self.log_tail()}")

    def outcomes(self) -> list[str]:
        return [r[0] for r in self.query("SELECT outcome FROM inbound ORDER BY id")]

    def wait_ticket(self, number: int, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.cli("tickets", "show", str(number), "--json", check=False)
            if result.returncode == 0:
                return json.loads(result.stdout)  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"case {number} never appeared: {self.log_tail()}")


COMPLETE_BODY = """Buenos días:

Explicación detallada del incidente: desde las 8:00 los usuarios no reciben correos
externos; los internos sí llegan.
Fecha y hora de la detección del incidente: 12/03/2026 08:15 hora Colombia
Evidencias: adjunto el registro del servidor.
Nombre del Cliente: Compensar
País/Región del Cliente: Colombia
Impacto a la Operación del Cliente: 300 agentes sin correo externo.
Justificación de la Urgencia: campaña de cobranza en curso.
Producto(s) Involucrado(s): EMAIL, INBOUND
Redes sociales involucradas: ninguna
Datos de Contacto del LCCD responsable del caso: Ana Gómez – ana@compensar.example – +57 300 123 4567

Saludos,
Ana
"""


def opening_mail(
    *,
    sender: str = "ana@compensar.example",
    to: str = "soporte-a@mesa.example",
    subject: str = "TEN-1001 Caída del servicio de correo",
    body: str = COMPLETE_BODY,
    message_id: str | None = None,
    **headers: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Ana Gómez <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<{time.time_ns()}.{os.getpid()}@compensar.example>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def http_request(daemon: Daemon, method: str, path: str, body: Any = None, *,
                 token: str | None = None, headers: dict[str, str] | None = None,
                 raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    """One HTTP request to the daemon: (status, the JSON body or the bytes, headers)."""
    sent = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{path}",
                                     data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, payload, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, payload, got = exc.code, exc.read(), dict(exc.headers)
    if got.get("content-type", got.get("Content-Type", "")).startswith("application/json"):
        return status, json.loads(payload), got
    return status, payload, got
