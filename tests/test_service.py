"""Running as a service: systemd notifications, the unit file, SIGHUP reloads."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.rules import quiet_desk_text

REPO = Path(__file__).resolve().parent.parent


def test_daemon_tells_systemd_ready_and_stopping(make_daemon, tmp_path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    try:
        daemon = make_daemon()
        daemon.env["NOTIFY_SOCKET"] = str(path)
        daemon.env["WATCHDOG_USEC"] = "400000"
        daemon.start()
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("WATCHDOG=1" in s for s in seen):
            seen.append(sock.recv(4096).decode())
        assert any("READY=1" in s for s in seen)
        assert any("WATCHDOG=1" in s for s in seen)
        assert daemon.stop() == 0
        while not any("STOPPING=1" in s for s in seen):
            seen.append(sock.recv(4096).decode())
    finally:
        sock.close()


def test_sighup_reloads_rules_and_refuses_a_bad_file(make_daemon, tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(quiet_desk_text(), encoding="utf-8")
    daemon = make_daemon(rules=str(rules)).start()
    with daemon.smtp() as client:
        client.ehlo("x.example")
        client.mail("ana@compensar.example")
        assert client.rcpt("soporte-d@mesa.example")[0] == 550

    # A broken file is refused and the old rules stay in force.
    rules.write_text("desk: [\n", encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "rules reload refused" not in daemon.log_tail(50) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "rules reload refused" in daemon.log_tail(50)
    with daemon.smtp() as client:
        client.ehlo("x.example")
        client.mail("ana@compensar.example")
        assert client.rcpt("soporte-a@mesa.example")[0] == 250

    # A good file with a new address takes effect without a restart.
    text = quiet_desk_text().replace(
        "  - address: soporte-c@mesa.example",
        "  - address: soporte-d@mesa.example\n    priority: C\n    queue: minima\n"
        "  - address: soporte-c@mesa.example",
    )
    rules.write_text(text, encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "rules reloaded" not in daemon.log_tail(50) and time.monotonic() < deadline:
        time.sleep(0.05)
    with daemon.smtp() as client:
        client.ehlo("x.example")
        client.mail("ana@compensar.example")
        assert client.rcpt("soporte-d@mesa.example")[0] == 250
    assert daemon.stop() == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path) -> None:
    unit = (REPO / "deploy" / "mailbridge.service").read_text()
    # Point the unit at this checkout's interpreter so verify can check the commands.
    unit = unit.replace("/opt/mailbridge/.venv/bin/mailbridge", f"{sys.executable} -m mailbridge")
    path = tmp_path / "mailbridge.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "mailbridge.service" in line and "not executable" not in line]
    assert problems == [], result.stderr
    assert "Type=notify" in unit and "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit


def test_metrics_count_what_happened(make_daemon, sink) -> None:
    from tests.support.daemon import opening_mail

    daemon = make_daemon(relay_port=sink.port).start()
    daemon.send(opening_mail())
    daemon.send(opening_mail(sender="pedro@desconocido.example", subject="hola"))
    sink.wait_for(2)
    daemon.settle()
    status, body = daemon.http_get("/metrics")
    text = body.decode()
    assert status == 200
    assert 'mailbridge_mails_received_total{channel="smtp",outcome="stored"} 2.0' in text
    assert 'mailbridge_tickets_created_total{priority="A"} 1.0' in text
    assert 'mailbridge_mails_processed_total{outcome="refused"} 1.0' in text
    assert 'mailbridge_outbound_total{kind="ack",outcome="sent"} 1.0' in text
    assert 'mailbridge_ack_latency_seconds_count{kind="ack"} 1.0' in text
    assert "mailbridge_outbox_depth 0.0" in text
    assert "mailbridge_quarantine_size 0.0" in text
    assert "mailbridge_inbound_waiting 0.0" in text
    daemon.stop()


def test_db_upgrade_command_and_run_refuses_an_old_schema(tmp_path) -> None:
    from tests.support.daemon import Daemon

    daemon = Daemon(tmp_path / "fresh")
    daemon.data_dir.mkdir(parents=True)
    refused = daemon.cli("run", check=False)
    assert refused.returncode == 78
    assert b"mailbridge db upgrade" in refused.stderr
    done = daemon.cli("db", "upgrade")
    assert b"database at head" in done.stdout
    daemon.start()
    assert daemon.stop() == 0
