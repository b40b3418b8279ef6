"""Workers on one PostgreSQL database: does a second `mailbridge run` add throughput?

`e2e.py --postgres [--workers N]` runs this instead of the SQLite burst: a private
PostgreSQL (tests/support/postgres.py's `PostgresServer`, made durable again unless
`--pg-fast`), then for 1 and N workers in turn a fresh database cloned from the migrated
template, N `mailbridge run` processes on it (each its own data dir and SMTP port, one
relay sink), and the same burst as the SQLite run with client k talking to worker
k mod N. Reported per worker count: intake and end-to-end rates, 250 -> ack latency,
CPU of the daemons and of PostgreSQL per mail, correctness (duplicates and losses must
be 0), and the ratio of N workers to one.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from checks import ack_latencies, burst_end, correctness, wait_drained
from corpus import Corpus, Mail
from harness import (
    DaemonProcess,
    Sampler,
    SinkProcess,
    cpu_by_thread,
    make_workdir,
    mono_now,
    thread_names,
)
from load import SmtpConn, Tracker, run_burst


def _log(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def _cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime + stime (and the reaped children's, for the postmaster) of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    used = int(fields[11]) + int(fields[12])
    if with_children:
        used += int(fields[13]) + int(fields[14])
    return used / ticks


def postgres_cpu(data_dir: Path) -> float:
    """CPU seconds of the whole PostgreSQL server so far: the postmaster with the backends
    it reaped, plus the live backends (children of the postmaster)."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = _cpu_seconds(postmaster, with_children=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += _cpu_seconds(int(entry))
    return total


def start_postgres(tree: Path, durable: bool) -> Any:
    """The tests' private PostgreSQL; with `durable`, fsync and synchronous commit on again
    (the test server turns them off), so a commit costs what it costs in production."""
    sys.path.insert(0, str(tree))
    from tests.support.postgres import PostgresServer, postgres_available

    if not postgres_available():
        raise RuntimeError("PostgreSQL server binaries not found "
                           "(scripts/install-test-deps.sh installs them)")
    server = PostgresServer().start()
    if durable:
        # Restarted without the test server's `-c fsync=off -c synchronous_commit=off -c
        # full_page_writes=off`: options on the command line win over ALTER SYSTEM (used
        # here until 2026-12-03, SHOW fsync stayed off: the earlier "durable" figures
        # were not).
        options = (f"-p {server.port} -k {server.base} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=300")
        done = server._run(str(server.bin / "pg_ctl"), "-D", str(server.data), "-l",
                           str(server.base / "log"), "-o", options, "-w", "-t", "60",
                           "restart")
        if done.returncode != 0:
            server.stop()
            raise RuntimeError(f"pg_ctl restart failed: {done.stderr}")
        settings = postgres_settings(server.url())
        if "fsync=on" not in settings or "synchronous_commit=on" not in settings:
            server.stop()
            raise RuntimeError(f"PostgreSQL is not durable: {settings}")
    return server


def postgres_settings(url: str) -> str:
    """fsync, synchronous_commit and full_page_writes as the server says (SHOW)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=30) as conn:
        return ", ".join(f"{name}={conn.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
                         for name in ("fsync", "synchronous_commit", "full_page_writes"))


def workers_run(
    *, workers: int, server: Any, corpus: Corpus, openings: list[Mail],
    reply_plan: dict[int, int], total: int, clients: int, tree: Path, rules: Path,
    daemon_env: dict[str, str], settle: float, timeout: float, drain_timeout: float,
    stall: float, base: str | None = None, keep: bool = False,
) -> dict[str, Any]:
    """One burst against `workers` daemons sharing a fresh database."""
    url = server.create_database()
    workdir = make_workdir(f"workers{workers}", base)
    tracker = Tracker(corpus, openings, reply_plan, stall_seconds=stall)
    sink = SinkProcess("relay", workdir, on_event=tracker.on_sink_event).start()
    daemons = [DaemonProcess(workdir / f"worker{k + 1}", sink.port, env=daemon_env, tree=tree,
                             rules=rules, database_url=url) for k in range(workers)]
    result: dict[str, Any] = {"workers": workers}
    try:
        for daemon in daemons:
            daemon.upgrade()
        for daemon in daemons:
            daemon.start()
        time.sleep(settle)
        result["idle_rss"] = [daemon.memory().get("VmRSS") for daemon in daemons]
        _log(f"{workers} worker(s) on one PostgreSQL database: smtp ports "
             f"{[d.smtp_port for d in daemons]}")
        cpu0 = [daemon.cpu_seconds() for daemon in daemons]
        threads0 = [daemon.thread_cpu() for daemon in daemons]
        pg0 = postgres_cpu(server.data)
        # The load's own share of the two cores: client threads here, the relay sink.
        harness0 = time.process_time() + _cpu_seconds(sink.proc.pid)  # type: ignore[union-attr]
        reconnects0 = SmtpConn.reconnects
        sampler = Sampler(daemons[0]).start()
        start, last_250 = run_burst(tracker, [d.smtp_port for d in daemons], clients, timeout)
        drained = wait_drained(daemons[0], tracker, drain_timeout)
        cpu1 = [daemon.cpu_seconds() for daemon in daemons]
        threads1 = [daemon.thread_cpu() for daemon in daemons]
        pg1 = postgres_cpu(server.data)
        # Where each daemon's CPU went (intake on the main thread's loop, the pipeline,
        # the sender, ...): what a worker more or less would change.
        result["cpu_by_thread"] = [
            cpu_by_thread(before, after, thread_names(daemon.pid))
            for daemon, before, after in zip(daemons, threads0, threads1, strict=True)]
        harness = time.process_time() + _cpu_seconds(sink.proc.pid) - harness0  # type: ignore[union-attr]
        result["queues"] = sampler.stop()
        end = burst_end(daemons[0], tracker, last_250)
        ok = tracker.ok_sent()
        daemon_cpu = [round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)]
        e2e_seconds = max(1e-9, end - start)
        result.update({
            "mails_planned": total,
            "sent_250": len(ok),
            "client_reconnects": SmtpConn.reconnects - reconnects0,
            "intake_seconds": round(last_250 - start, 3),
            "intake_rate": round(len(ok) / max(1e-9, last_250 - start), 2),
            "e2e_seconds": round(e2e_seconds, 3),
            "e2e_rate": round(len(ok) / e2e_seconds, 2),
            "drained": drained,
            "daemon_cpu_seconds": daemon_cpu,
            "daemon_cpu_ms_per_mail": round(1000 * sum(daemon_cpu) / max(1, len(ok)), 2),
            "postgres_cpu_seconds": round(pg1 - pg0, 2),
            "postgres_cpu_ms_per_mail": round(1000 * (pg1 - pg0) / max(1, len(ok)), 2),
            "harness_cpu_seconds": round(harness, 2),
            "cpu_cores_busy": round((sum(daemon_cpu) + pg1 - pg0 + harness) / e2e_seconds, 2),
            "peak_rss": [daemon.memory().get("VmHWM") for daemon in daemons],
            **ack_latencies(tracker),
        })
        _log(f"{workers} worker(s): intake {result['intake_rate']} msgs/s, end to end "
             f"{result['e2e_rate']} msgs/s, drained={drained}, CPU daemons "
             f"{result['daemon_cpu_ms_per_mail']} + PostgreSQL "
             f"{result['postgres_cpu_ms_per_mail']} ms per mail")
        result["correctness"] = correctness(daemons[0], tracker)
    finally:
        result["exit_codes"] = [daemon.stop() for daemon in daemons]
        sink.stop()
        if keep:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def workers_phase(
    *, counts: list[int], rounds: int, durable: bool, tree: Path, **run: Any,
) -> dict[str, Any]:
    """Runs for each worker count (1 first), `rounds` times, alternating; one server."""
    out: dict[str, Any] = {"counts": counts, "rounds": rounds,
                           "postgres": "durable (fsync, synchronous_commit on)" if durable
                           else "test settings (fsync off, synchronous_commit off)"}
    t0 = mono_now()
    server = start_postgres(tree, durable)
    try:
        runs: list[dict[str, Any]] = []
        for _round in range(rounds):
            for count in counts:
                runs.append(workers_run(workers=count, server=server, tree=tree, **run))
        out["runs"] = runs
    finally:
        server.stop()
    best: dict[int, dict[str, Any]] = {}
    for item in out["runs"]:
        if item.get("e2e_rate") is None:
            continue
        if item["workers"] not in best or item["e2e_rate"] > best[item["workers"]]["e2e_rate"]:
            best[item["workers"]] = item
    if 1 in best:
        one = best[1]["e2e_rate"]
        out["speedup_e2e"] = {str(n): round(r["e2e_rate"] / one, 2) for n, r in best.items()}
        out["speedup_intake"] = {str(n): round(r["intake_rate"] / best[1]["intake_rate"], 2)
                                 for n, r in best.items()}
    out["seconds"] = round(mono_now() - t0, 1)
    return out
