"""`MAILBRIDGE_PIPELINE_PROCESSES=N`: the pipeline in child processes of `mailbridge run`."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.support.daemon import opening_mail
from tests.support.rules import quiet_desk_text

REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _opening(k: int):  # type: ignore[no-untyped-def]
    # Distinct subjects: the same subject twice would join the open case as a look-alike.
    return opening_mail(subject=f"TEN-1001 Caída del servicio de correo – INC{1000 + k}")


def test_two_pipeline_processes_open_every_case_once_and_ack_it(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port, pipeline_processes="2").start()
    assert daemon.proc is not None
    children = _children(daemon.proc.pid)
    assert len(children) == 2, daemon.log_tail()

    for k in range(12):
        daemon.send(_opening(k))
    sink.wait_for(12)
    daemon.settle()

    assert sorted(daemon.outcomes()) == ["ticket"] * 12
    numbers = sorted(r[0] for r in daemon.query("SELECT number FROM tickets"))
    assert numbers == list(range(1, 13))
    acked = sorted(str(m.message["Subject"]).split("]")[0] for m in sink.received)
    assert acked == sorted(f"[Caso {n}" for n in range(1, 13))
    # Both children took their share (ids are dealt out modulo 2).
    processes = {json.loads(line).get("pipeline_process")
                 for line in daemon.log_tail(400).splitlines()
                 if '"mail processed"' in line}
    assert processes == {0, 1}

    status, body = daemon.http_get("/readyz")
    assert status == 200
    assert json.loads(body)["checks"]["pipeline"] == {"ok": True, "processes": 2, "alive": 2}
    _, metrics = daemon.http_get("/metrics")
    text = metrics.decode()
    assert 'mailbridge_mails_processed_total{outcome="ticket"} 12.0' in text
    assert 'mailbridge_tickets_created_total{priority="A"} 12.0' in text
    assert 'mailbridge_outbound_total{kind="ack",outcome="sent"} 12.0' in text

    assert daemon.stop() == 0
    assert not any(_alive(pid) for pid in children)


def test_a_killed_pipeline_process_is_restarted_and_nothing_is_lost(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port, pipeline_processes="1").start()
    assert daemon.proc is not None
    (child,) = _children(daemon.proc.pid)
    os.kill(child, signal.SIGKILL)
    # Mail stored while the child is down waits; the restarted child takes it.
    for k in range(5):
        daemon.send(_opening(k))
    assert _wait(lambda: len(_children(daemon.proc.pid)) == 1
                 and _children(daemon.proc.pid) != [child])
    sink.wait_for(5)
    daemon.settle()
    assert sorted(daemon.outcomes()) == ["ticket"] * 5
    assert "pipeline process died; restarting" in daemon.log_tail(200)
    status, _ = daemon.http_get("/readyz")
    assert status == 200
    assert daemon.stop() == 0


def test_children_leave_with_a_killed_parent(make_daemon) -> None:
    daemon = make_daemon(pipeline_processes="2").start()
    assert daemon.proc is not None
    children = _children(daemon.proc.pid)
    assert len(children) == 2
    daemon.proc.kill()
    daemon.proc.wait(10)
    # No orphan keeps processing mail for a daemon that is gone.
    assert _wait(lambda: not any(_alive(pid) for pid in children), timeout=15)


def test_sighup_reaches_the_pipeline_processes(make_daemon, sink, tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    original = quiet_desk_text()
    rules.write_text(original, encoding="utf-8")
    daemon = make_daemon(relay_port=sink.port, rules=str(rules), pipeline_processes="1").start()
    daemon.send(_opening(1))
    (first,) = sink.wait_for(1)
    # The signature of the acknowledgement comes from the rules the child holds.
    assert "Mesa de Ayuda Pruebas" not in first.message.get_content()
    rules.write_text(_renamed_desk(original), encoding="utf-8")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    # The parent reloads and tells the child, which reloads too.
    assert _wait(lambda: daemon.log_tail(100).count("rules reloaded") >= 2), daemon.log_tail()
    daemon.send(_opening(2))
    second = sink.wait_for(2)[1]
    assert "Atentamente,\nMesa de Ayuda Pruebas" in second.message.get_content().replace("\r\n", "\n")
    assert daemon.stop() == 0


def _renamed_desk(text: str) -> str:
    import yaml

    data = yaml.safe_load(text)
    data["desk"]["from_name"] = "Mesa de Ayuda Pruebas"
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def test_a_writer_stuck_in_another_process_costs_a_locked_error_not_a_hang(tmp_path) -> None:
    """The cross-process write lock gives up after the busy timeout, like SQLite."""
    import subprocess
    import sys

    from sqlalchemy.exc import OperationalError

    from mailbridge.db import Database
    from mailbridge.schema import upgrade

    url = f"sqlite:///{tmp_path / 'mailbridge.db'}?timeout=0.5"
    upgrade(url)
    lock_file = tmp_path / "mailbridge.db.writelock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        db = Database(url)
        started = time.monotonic()
        try:
            with db.transaction():
                raise AssertionError("the lock was taken while another process held it")
        except OperationalError as exc:
            assert "database is locked" in str(exc)
        waited = time.monotonic() - started
        assert 0.5 <= waited < 5
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone the lock is free again.
    with db.transaction():
        pass
    db.dispose()
