"""Faults under a running daemon: database locked or gone, relay down, data dir full.

Each fault must give the sending MTA a 451 (never a 250 for mail not stored), leave
nothing half-written, and heal without a restart (same process id throughout).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from tests.hostile.helpers import hostile_rules, report
from tests.support.daemon import Daemon, free_port, opening_mail
from tests.support.postgres import PostgresServer, postgres_available
from tests.support.sink import SmtpSink

LOCK_HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS lock_holder (x)")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def send_code(daemon: Daemon, msg) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """The SMTP answer to DATA (250 or the refusal's code) and how long it took."""
    started = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as client:
            client.send_message(msg)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, time.monotonic() - started
    return 250, time.monotonic() - started


def rows_with(daemon: Daemon, message_id: str) -> int:
    needle = message_id.encode()
    return sum(needle in bytes(raw) for (raw,) in daemon.query("SELECT raw FROM inbound_raw"))


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's file lock")
def test_database_locked_by_another_process(make_daemon, sink, tmp_path: Path) -> None:
    db_path = tmp_path / "d" / "mailbridge.db"
    daemon = make_daemon(relay_port=sink.port,
                         database_url=f"sqlite:///{db_path}?timeout=1.5").start()
    pid = daemon.proc.pid
    assert send_code(daemon, opening_mail(subject="TEN-1001 Antes del bloqueo"))[0] == 250
    sink.wait_for(1)

    def hold_lock() -> subprocess.Popen[bytes]:
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db_path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        return holder

    def release(holder: subprocess.Popen[bytes]) -> None:
        assert holder.stdin is not None
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        holder.wait(10)

    # A lock shorter than the busy timeout: the client waits, then gets its 250.
    holder = hold_lock()
    short = opening_mail(subject="TEN-1001 Bloqueo corto", message_id="<corto@compensar.example>")
    import threading
    threading.Timer(0.7, release, args=(holder,)).start()
    code_short, waited_short = send_code(daemon, short)
    assert code_short == 250 and waited_short >= 0.5

    # A lock longer than the busy timeout: 451, and nothing of the mail is stored.
    holder = hold_lock()
    try:
        locked = opening_mail(subject="TEN-1001 Bloqueo largo",
                              message_id="<largo@compensar.example>")
        code, waited = send_code(daemon, locked)
        assert code == 451
        status, _ = daemon.http_get("/healthz")
        assert status == 200
    finally:
        release(holder)
    assert rows_with(daemon, "<largo@compensar.example>") == 0
    # The MTA retries: accepted by the same process, processed, acknowledged once.
    assert send_code(daemon, locked)[0] == 250
    sink.wait_for(3)
    daemon.settle()
    assert daemon.proc.pid == pid
    assert rows_with(daemon, "<largo@compensar.example>") == 1
    assert daemon.query("PRAGMA integrity_check") == [("ok",)]
    subjects = sorted(r.message["Subject"] for r in sink.received)
    assert len(subjects) == 3 and len({r.message["Message-ID"] for r in sink.received}) == 3
    report("database_locked", busy_timeout_s=1.5,
           short_lock=f"250 after {waited_short:.1f}s", long_lock=f"{code} after {waited:.1f}s",
           after_release="250, case and one ack", restarts=0, half_written=0)


@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not installed")
def test_postgresql_gone_then_back(make_daemon, sink) -> None:
    import psycopg

    server = PostgresServer().start()
    try:
        url = server.create_database()
        name = url.rsplit("/", 1)[1]
        daemon = make_daemon(relay_port=sink.port, database_url=url).start()
        pid = daemon.proc.pid
        assert send_code(daemon, opening_mail(subject="TEN-1001 Antes de la caída"))[0] == 250
        sink.wait_for(1)
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            gone = opening_mail(subject="TEN-1001 Durante la caída",
                                message_id="<caida@compensar.example>")
            codes = [send_code(daemon, gone)[0] for _ in range(2)]
            assert codes == [451, 451]
            assert daemon.http_get("/readyz")[0] == 503
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert send_code(daemon, gone)[0] == 250
        sink.wait_for(2)
        daemon.settle()
        assert daemon.proc.pid == pid
        assert rows_with(daemon, "<caida@compensar.example>") == 1
        assert len(sink.received) == 2
        daemon.stop()
    finally:
        server.stop()
    report("database_gone", backend="postgresql", while_gone=codes,
           readyz_while_gone=503, after_return="250, case and one ack", restarts=0)


def test_relay_down_for_an_hour_then_drains(make_daemon, tmp_path: Path) -> None:
    """An hour's outage at scale: backoff 0.2 s doubling to 1 s (the real 30 s → 3600 s)."""
    port = free_port()
    daemon = make_daemon(relay_port=port, rules=str(hostile_rules(tmp_path / "rules")),
                         outbox_retry_base="0.2", outbox_retry_max="1").start()
    mails = 10
    for n in range(mails):
        daemon.send(opening_mail(subject=f"TEN-1001 Sin relay {n}"))
    outage = 6.0
    time.sleep(outage)
    rows = daemon.query("SELECT state, attempts FROM outbox")
    assert len(rows) == mails and {s for s, _ in rows} == {"pending"}
    attempts = sum(a for _, a in rows)
    # One try per backoff step for the whole queue, not one per row: a dead relay is not
    # hammered (6 s at ≤ 1 s steps is at most ~10 tries, whatever the queue length).
    assert 2 <= attempts <= 15, attempts
    relay = SmtpSink(port=port).start()
    try:
        started = time.monotonic()
        relay.wait_for(mails, timeout=20)
        drained = time.monotonic() - started
        time.sleep(1.5)
        ids = [r.message["Message-ID"] for r in relay.received]
        assert len(ids) == mails and len(set(ids)) == mails
    finally:
        relay.stop()
    assert daemon.query("SELECT count(*) FROM outbox WHERE state = 'sent'") == [(mails,)]
    daemon.stop()
    report("relay_down", mails=mails, outage_s=outage, relay_attempts_during_outage=attempts,
           drained_in_s=round(drained, 1), delivered=len(ids), duplicated=len(ids) - len(set(ids)))


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                             str(path)], capture_output=True, check=False)
    return result.returncode == 0


def _fill(path: Path) -> int:
    """Fill the file system under `path` to the last byte; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError:
                    break
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


@pytest.mark.skipif(BACKEND != "sqlite", reason="the data dir holds the SQLite database")
def test_data_dir_full(make_daemon, sink, tmp_path: Path) -> None:
    data = tmp_path / "full"
    mounted = _mount_tmpfs(data, "24m")
    try:
        if mounted:
            # The log lives outside the small file system, so it can still be read.
            (data / "daemon.log").symlink_to(tmp_path / "full.log")
        daemon = make_daemon(name="full", relay_port=sink.port,
                             rules=str(hostile_rules(tmp_path / "rules"))).start()
        pid = daemon.proc.pid
        assert send_code(daemon, opening_mail(subject="TEN-1001 Disco con espacio"))[0] == 250
        sink.wait_for(1)
        daemon.settle()
        big_body = "Registro del servidor de correo, línea de evidencia.\n" * 40_000  # ~2 MB
        big = opening_mail(subject="TEN-1001 Disco lleno", body=big_body,
                           message_id="<lleno@compensar.example>")
        if mounted:
            filler = data / "filler"
            filled = _fill(filler)
            how = f"tmpfs 24 MiB, filled with {filled >> 20} MiB"
        else:
            daemon.break_spool_inserts()
            how = "fault switch (trigger: 'database or disk is full'); mount not permitted"
        code, _ = send_code(daemon, big)
        assert code == 451
        small_codes = [send_code(daemon, opening_mail(subject=f"TEN-1001 Lleno {n}",
                                                      message_id=f"<lleno-{n}@compensar.example>"))[0]
                       for n in range(3)]
        assert set(small_codes) <= {250, 451}
        assert daemon.http_get("/healthz")[0] == 200
        if mounted:
            filler.unlink()
        else:
            daemon.break_spool_inserts(False)
        assert send_code(daemon, big)[0] == 250
        daemon.settle(timeout=30)
        assert daemon.proc.pid == pid
        assert daemon.query("PRAGMA integrity_check") == [("ok",)]
        assert rows_with(daemon, "<lleno@compensar.example>") == 1
        for n, c in enumerate(small_codes):
            assert rows_with(daemon, f"<lleno-{n}@compensar.example>") == (1 if c == 250 else 0)
        accepted = 2 + small_codes.count(250)
        sink.wait_for(accepted)
        time.sleep(0.5)
        assert len(sink.received) == accepted
        cases = daemon.query("SELECT count(*) FROM tickets")[0][0]
        assert cases == accepted
        daemon.stop()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(data)], check=False)
    report("data_dir_full", how=how, big_mail_while_full=code,
           small_mails_while_full=small_codes, after_freeing="250", integrity="ok",
           cases=cases, acks=accepted, restarts=0)
