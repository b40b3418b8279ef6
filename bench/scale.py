"""Cost against size (issue 21.1): the daemon's cost per mail as the database grows.

    .venv/bin/python bench/scale.py --sizes 0,10000,100000 --backend both
    .venv/bin/python bench/scale.py --sizes 0,10000,100000,1000000 --backend both \\
        --plot bench/results/scale.png

For each backend (SQLite file, or a private PostgreSQL from bench/workers.py, durable
unless --pg-fast), one database is filled incrementally by bulk inserts through the
models' tables (bench/history.py `fill(..., full=True)`: cases of three years with their
messages, inbound rows and stored mail, events, SLA clocks, sent acks, closing attempts,
vendor references; 0.2 % open), and at each size, in the same run:

 1. a fresh `mailbridge run` on that database takes a burst of --mails mails (openings,
    and replies built from the acks, bench/load.py): end-to-end rate, CPU ms per mail
    (daemon; + the PostgreSQL server);
 2. steady load (bench/steady.py) at a fixed rate, half the first size's end-to-end rate
    (--steady-rate fixes it), for --steady-seconds: 250 -> ack p50/p99;
 3. the API's list/show over one keep-alive connection (as bench/api.py);
 4. the daemon's RSS (VmRSS, peak VmHWM) after the load; then it stops;
 5. two rounds of every SLA sweep, `status_report` and the CLI's `tickets list` /
    `tickets show` / `status` as processes (bench/history.py `measure`);
 6. the database's size on disk (SQLite file + WAL; `pg_database_size`).
Before the next fill the cases left open (the fill's and the load's) are closed, so
every size has the same open work. The first size (0: empty) is the reference: each
figure is also given against it. Prints the JSON report and a markdown table, saves the
JSON as bench/results/scale-<time>.json, and with --plot a PNG (matplotlib, optional:
`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from checks import ack_latencies, burst_end, wait_drained
from corpus import Corpus
from harness import (
    REPO,
    RESULTS,
    DaemonProcess,
    Sampler,
    SinkProcess,
    bench_rules,
    make_workdir,
    mono_now,
    prepare_tree,
)
from history import fill, measure
from load import Tracker, run_burst
from steady import steady_phase
from workers import postgres_cpu, postgres_settings, start_postgres

MB = 1e6
# Measured at 10k-100k cases (full fill): cases per second, and bytes on disk per case.
FILL_ESTIMATE = {"sqlite": (2_000, 10_500), "postgresql": (1_500, 7_700)}


def log(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


# --- the database ------------------------------------------------------------------------


def close_open(db: Any, now: datetime) -> int:
    """Closes the cases (and vendor references) left open by the last size's fill and load."""
    from sqlalchemy import func, update

    from mailbridge.tickets.models import Ticket, VendorReference

    t, v = Ticket.__table__, VendorReference.__table__
    with db.transaction() as session:
        closed = session.execute(update(t).where(t.c.status != "cerrado").values(
            status="cerrado", closed_at=now, updated_at=now,
            first_response_at=func.coalesce(t.c.first_response_at, now))).rowcount
        session.execute(update(v).where(v.c.state != "cerrado").values(
            state="cerrado", closed_at=now, awaiting_since=None))
    return int(closed or 0)


def counts(daemon: DaemonProcess) -> dict[str, int]:
    with daemon.db() as conn:
        return {table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("tickets", "ticket_messages", "inbound", "outbox",
                              "vendor_references")}


def db_size(daemon: DaemonProcess) -> int:
    if daemon.database_url:
        with daemon.db() as conn:
            return int(conn.execute(
                "SELECT pg_database_size(current_database())").fetchone()[0])
    path = daemon.db_path
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal"))
               if p.exists())


def postgres_server(tree: Path, durable: bool) -> Any:
    """bench/workers.py's private PostgreSQL (`durable`: fsync and synchronous commit
    on, checked with SHOW)."""
    return start_postgres(tree, durable=durable)


# --- the load ----------------------------------------------------------------------------


def burst(daemon: DaemonProcess, sink: SinkProcess, corpus: Corpus, args: argparse.Namespace,
          pg_data: Path | None) -> dict[str, Any]:
    """As bench/e2e.py's burst: openings and replies built from the acks, K clients."""
    slots = corpus.plan(args.mails, reply_ratio=args.reply_ratio)
    openings = [corpus.opening(s.index) for s in slots if s.kind == "opening"]
    reply_plan = {s.reply_to: s.index for s in slots
                  if s.kind == "reply" and s.reply_to is not None}
    tracker = Tracker(corpus, openings, reply_plan, stall_seconds=30)
    sink.on_event = tracker.on_sink_event
    with daemon.db() as conn:
        messages_before = int(conn.execute(
            "SELECT coalesce(max(id), 0) FROM ticket_messages").fetchone()[0])
    cpu0 = daemon.cpu_seconds()
    pg0 = postgres_cpu(pg_data) if pg_data else 0.0
    sampler = Sampler(daemon).start()
    start, last_250 = run_burst(tracker, daemon.smtp_port, args.clients, timeout=600)
    drained = wait_drained(daemon, tracker, timeout=300)
    cpu1 = daemon.cpu_seconds()
    pg1 = postgres_cpu(pg_data) if pg_data else 0.0
    queues = sampler.stop()
    end = burst_end(daemon, tracker, last_250)
    ok = tracker.ok_sent()
    seconds = max(1e-9, end - start)
    out: dict[str, Any] = {
        "sent_250": len(ok),
        "openings_250": sum(1 for s in ok if s.mail.kind == "opening"),
        "replies_250": sum(1 for s in ok if s.mail.kind == "reply"),
        "intake_rate": round(len(ok) / max(1e-9, last_250 - start), 2),
        "e2e_seconds": round(seconds, 3),
        "e2e_rate": round(len(ok) / seconds, 2),
        "drained": drained,
        "daemon_cpu_ms_per_mail": round(1000 * (cpu1 - cpu0) / max(1, len(ok)), 2),
        "max_inbound_new": queues.get("max_inbound_new"),
        "max_outbox_pending": queues.get("max_outbox_pending"),
        **{k: v for k, v in ack_latencies(tracker).items() if k == "ack_after_250"},
    }
    if pg_data:
        out["postgres_cpu_ms_per_mail"] = round(1000 * (pg1 - pg0) / max(1, len(ok)), 2)
    out.update(light_check(daemon, tracker, messages_before))
    return out


def light_check(daemon: DaemonProcess, tracker: Tracker, messages_before: int) -> dict[str, Any]:
    """Duplicates (openings acked twice) and losses (250'd mails without a message), read
    from the messages written since the burst began: bench/checks.py's `correctness`
    lists every case through the CLI, too slow at a million."""
    with daemon.db() as conn:
        stored = {str(mid).strip().strip("<>") for (mid,) in conn.execute(
            f"SELECT message_id FROM ticket_messages WHERE id > {messages_before} "
            "AND direction = 'in'")}
    with tracker.cond:
        acks = {mid: len(times) for mid, times in tracker.acks.items()}
    ok = tracker.ok_sent()
    return {"duplicates": sum(1 for n in acks.values() if n > 1),
            "lost": sum(1 for s in ok if s.mail.message_id.strip("<>") not in stored),
            "threaded_replies": sum(1 for s in ok if s.mail.kind == "reply"
                                    and s.mail.message_id.strip("<>") in stored)}


def api_phase(daemon: DaemonProcess, token: str, number: int, requests: int) -> dict[str, Any]:
    """bench/api.py's calls, on one keep-alive connection: p50 / p99 ms."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    calls = {"list": "/api/v1/cases?limit=50",
             "list_filtered": "/api/v1/cases?sla_state=a_tiempo&tenant=TEN-1001",
             "show": f"/api/v1/cases/{number}"}
    out: dict[str, Any] = {"show_number": number}
    try:
        for name, path in calls.items():
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                times.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status}")
            times.sort()
            out[name] = {"p50_ms": round(statistics.median(times), 2),
                         "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 2)}
    finally:
        conn.close()
    return out


# --- one size ----------------------------------------------------------------------------


def at_size(size: int, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    db, daemon, sink = ctx["db"], ctx["daemon"], ctx["sink"]
    pg_data = ctx.get("pg_data")
    row: dict[str, Any] = {"cases_target": size, "loadavg_before": loadavg()}
    have = counts(daemon)["tickets"]
    if size > have:
        row["closed_before_fill"] = close_open(db, datetime.now(UTC))
        seconds = fill(db, size - have, datetime.now(UTC), total=ctx["largest"], full=True)
        row["fill_seconds"] = round(seconds, 1)
        row["fill_cases_per_second"] = round((size - have) / max(seconds, 1e-9))
        ctx["fill_rate"] = row["fill_cases_per_second"]
        if db.is_sqlite:  # the fill's WAL is the bulk load's, not the daemon's
            import sqlite3

            conn = sqlite3.connect(daemon.db_path, isolation_level=None, timeout=60)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        log(f"{ctx['backend']}: filled {have:,} -> {size:,} cases in {seconds:.1f}s "
            f"({row['fill_cases_per_second']:,}/s)")
    row["rows_at_start"] = counts(daemon)
    row["db_bytes_at_start"] = db_size(daemon)
    daemon.start()
    try:
        time.sleep(args.settle)
        row["rss_idle"] = daemon.memory().get("VmRSS")
        corpus = Corpus(args.seed + size, attachment_ratio=args.attachment_ratio,
                        domain_tag=f"scale{size}t{int(time.time())}")
        row["burst"] = burst(daemon, sink, corpus, args, pg_data)
        b = row["burst"]
        log(f"{ctx['backend']} {size:,}: e2e {b['e2e_rate']} msgs/s, CPU "
            f"{b['daemon_cpu_ms_per_mail']} ms/mail"
            + (f" + PostgreSQL {b['postgres_cpu_ms_per_mail']}" if pg_data else "")
            + f", duplicates {b['duplicates']} lost {b['lost']}")
        if ctx.get("steady_rate") is None:
            ctx["steady_rate"] = args.steady_rate or max(
                1.0, round(b["e2e_rate"] * args.steady_fraction, 1))
        if args.steady_seconds > 0:
            cpu0 = daemon.cpu_seconds()
            steady = steady_phase(daemon, sink, corpus, rate=ctx["steady_rate"],
                                  seconds=args.steady_seconds, clients=args.clients,
                                  start_index=args.mails + 1000, drain_timeout=120)
            row["steady"] = {k: steady[k] for k in ("rate_target", "rate_achieved",
                                                    "sent_250", "drained", "daemon_cpu_share",
                                                    "ack_after_250", "slow_acks")}
            row["steady"]["daemon_cpu_ms_per_mail"] = round(
                1000 * (daemon.cpu_seconds() - cpu0) / max(1, steady["sent_250"]), 2)
            a = steady["ack_after_250"]
            log(f"{ctx['backend']} {size:,}: steady {ctx['steady_rate']} msgs/s: 250->ack "
                f"p50 {1000 * (a['p50'] or 0):.0f} ms p99 {1000 * (a['p99'] or 0):.0f} ms")
        if ctx.get("token") is None:
            made = daemon.cli("api-token", "create", "bench-scale")
            if made.returncode != 0:
                raise RuntimeError(f"api-token create: {made.stderr.decode()[-500:]}")
            ctx["token"] = made.stdout.decode().strip()
        with daemon.db() as conn:
            top = int(conn.execute("SELECT max(number) FROM tickets").fetchone()[0])
        row["api"] = api_phase(daemon, ctx["token"], max(1, top // 2), args.api_requests)
        row["memory"] = daemon.memory()
    finally:
        row["exit_code"] = daemon.stop()
    now = datetime.now(UTC)
    row["sweeps"] = measure(db, ctx["rules"], now, daemon.env)
    row["rows"] = counts(daemon)
    row["cases"] = row["rows"]["tickets"]
    row["db_bytes"] = db_size(daemon)
    if not daemon.database_url:
        wal = daemon.db_path.with_name(daemon.db_path.name + "-wal")
        row["db_wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    row["loadavg_after"] = loadavg()
    log(f"{ctx['backend']} {size:,}: steady sweep round "
        f"{row['sweeps']['steady_round']['total_wall_ms']} ms, API show "
        f"{row['api']['show']['p50_ms']} ms, DB {row['db_bytes'] / MB:.0f} MB, peak RSS "
        f"{(row['memory'].get('VmHWM') or 0) / MB:.0f} MB")
    return row


def run_backend(backend: str, sizes: list[int], args: argparse.Namespace,
                rules: Path) -> dict[str, Any]:
    import mailbridge.models  # noqa: F401
    from mailbridge.db import Database
    from mailbridge.rules import load_rules

    workdir = make_workdir(f"scale-{backend}", args.workdir)
    server = None
    out: dict[str, Any] = {"backend": backend, "sizes": []}
    sink = SinkProcess("relay", workdir, max_seconds=86400).start()
    try:
        url = None
        if backend == "postgresql":
            server = postgres_server(args.tree_path, durable=not args.pg_fast)
            url = server.create_database()
            out["postgres"] = postgres_settings(server.url())
            log(f"postgresql: {out['postgres']}")
        daemon = DaemonProcess(workdir / "data", sink.port, rules=rules, database_url=url,
                               env={"MAILBRIDGE_LOG_LEVEL": "WARNING"}, tree=args.tree_path)
        daemon.upgrade()
        env = dict(daemon.env)
        os.environ.update({k: v for k, v in env.items() if k.startswith("MAILBRIDGE_")})
        db = Database(url or f"sqlite:///{daemon.db_path}")
        ctx: dict[str, Any] = {"backend": backend, "db": db, "daemon": daemon, "sink": sink,
                               "rules": load_rules(rules), "largest": max(sizes),
                               "pg_data": server.data if server else None}
        try:
            for size in sizes:
                out["sizes"].append(at_size(size, ctx, args))
                left = [s for s in sizes if s > size]
                if left and ctx.get("fill_rate"):
                    log(f"{backend}: filling to {left[-1]:,} will take about "
                        f"{(left[-1] - size) / ctx['fill_rate'] / 60:.1f} min at "
                        f"{ctx['fill_rate']:,} cases/s, plus the load at each size")
        finally:
            db.dispose()
        out["steady_rate"] = ctx.get("steady_rate")
    finally:
        sink.stop()
        if server is not None:
            server.stop()
        if args.keep:
            out["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


# --- the report --------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def table(report: dict[str, Any]) -> str:
    head = ["backend", "cases filled", "fill s", "e2e msgs/s", "CPU ms/mail (x empty)",
            "steady 250→ack p50 / p99 ms", "sweep round ms (first)", "status ms",
            "CLI list / show ms", "API list / filtered list / show p50 ms", "DB MB",
            "RSS idle / peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in report["runs"]:
        base = None
        for row in run["sizes"]:
            b, s, sw = row["burst"], row.get("steady", {}), row["sweeps"]
            cpu = b["daemon_cpu_ms_per_mail"] + b.get("postgres_cpu_ms_per_mail", 0)
            base = base or cpu
            cpu_text = (f"{b['daemon_cpu_ms_per_mail']}"
                        + (f" + {b['postgres_cpu_ms_per_mail']}" if "postgres_cpu_ms_per_mail"
                           in b else "") + f" ({cpu / base:.2f})")
            lat = s.get("ack_after_250", {})
            mem = row.get("memory", {})
            lines.append("| " + " | ".join([
                run["backend"], f"{row['cases_target']:,}", str(row.get("fill_seconds", "-")),
                str(b["e2e_rate"]), cpu_text, f"{_ms(lat.get('p50'))} / {_ms(lat.get('p99'))}",
                f"{sw['steady_round']['total_wall_ms']} ({sw['first_round']['total_wall_ms']})",
                str(sw["status_report_ms"]),
                f"{sw['cli_tickets_list_ms']:.0f} / {sw['cli_tickets_show_ms']:.0f}",
                f"{row['api']['list']['p50_ms']} / {row['api']['list_filtered']['p50_ms']} / "
                f"{row['api']['show']['p50_ms']}",
                f"{row['db_bytes'] / MB:,.0f}",
                f"{(row.get('rss_idle') or 0) / MB:.0f} / {(mem.get('VmHWM') or 0) / MB:.0f}",
            ]) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (.venv/bin/pip install -e '.[bench]')"
    panels = [
        ("CPU ms per mail (daemon + PostgreSQL)",
         lambda r: r["burst"]["daemon_cpu_ms_per_mail"]
         + r["burst"].get("postgres_cpu_ms_per_mail", 0)),
        ("steady 250 → ack p99, ms",
         lambda r: 1000 * (r.get("steady", {}).get("ack_after_250", {}).get("p99") or 0)),
        ("one steady round of every sweep, ms",
         lambda r: r["sweeps"]["steady_round"]["total_wall_ms"]),
        ("API p50, ms: GET /api/v1/cases/{n} (o), ?sla_state&tenant (x)",
         lambda r: r["api"]["show"]["p50_ms"]),
    ]
    extra = {3: lambda r: r["api"]["list_filtered"]["p50_ms"]}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for index, (ax, (title, pick)) in enumerate(zip(axes.flat, panels, strict=True)):
        for k, run in enumerate(report["runs"]):
            color = f"C{k}"
            if index in extra:
                more = [(r["cases"], extra[index](r)) for r in run["sizes"]
                        if r["cases_target"] > 0]
                if more:
                    ax.plot(*zip(*more, strict=True), "x:", color=color)
            points = [(r["cases"], pick(r)) for r in run["sizes"] if r["cases_target"] > 0]
            empty = [pick(r) for r in run["sizes"] if r["cases_target"] == 0]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=color, label=run["backend"])
            if empty:
                ax.axhline(empty[0], color=color, linestyle="--", linewidth=0.8,
                           label=f"{run['backend']}, empty")
        ax.set_xscale("log")
        ax.set_xlabel("cases on file")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"mailbridge cost against size ({report['started'][:16]}, "
                 f"{report['machine']['cores']} cores, git {report['git']})", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot saved to {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", default="0,10000,100000",
                        help="comma-separated case counts, filled in turn (0 = empty)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--mails", type=int, default=300, help="mails in each size's burst")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--reply-ratio", type=float, default=0.20)
    parser.add_argument("--attachment-ratio", type=float, default=0.10)
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument("--steady-fraction", type=float, default=0.5,
                        help="steady rate: this fraction of the first size's e2e rate")
    parser.add_argument("--steady-rate", type=float, default=None)
    parser.add_argument("--api-requests", type=int, default=100)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-fast", action="store_true",
                        help="PostgreSQL with the test server's fsync, synchronous_commit and "
                             "full_page_writes off (default: on, the server's defaults)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write")
    parser.add_argument("--auto-reply-limit", type=int, default=1_000_000)
    parser.add_argument("--tree", default="working",
                        help="'working' (the work tree), a git revision such as HEAD, or a "
                             "source directory (as bench/e2e.py): others edit the work tree")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    started = datetime.now(UTC)
    t0 = mono_now()
    from e2e import _git_head

    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/scale.py", *(argv or sys.argv[1:])]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "git": _git_head(), "sizes": sizes, "mails": args.mails, "clients": args.clients,
        "runs": [],
    }
    rundir = make_workdir("scale-run", args.workdir)
    try:
        # The daemon, the CLI and this process's fill and sweeps all run this tree.
        args.tree_path = prepare_tree(args.tree, rundir)
        sys.path.insert(0, str(args.tree_path))
        report["tree"] = args.tree
        rules, note = bench_rules(args.tree_path, rundir, {
            "auto_reply_limit_per_hour": args.auto_reply_limit,
            "ack_limit_per_hour": args.auto_reply_limit})
        report["rules"] = note
        for backend in backends:
            rate, per_case = FILL_ESTIMATE[backend]
            free = shutil.disk_usage(args.workdir or tempfile.gettempdir()).free
            log(f"{backend}: sizes {sizes}; filling to {max(sizes):,} cases takes about "
                f"{max(sizes) / rate / 60:.1f} min and {max(sizes) * per_case / 1e9:.1f} GB "
                f"(2-core machine, 2026-12-03), plus about 1.5 min of load at each size"
                + (f"; only {free / 1e9:.0f} GB free" if free < max(sizes) * per_case * 1.2
                   else ""))
            report["runs"].append(run_backend(backend, sizes, args, rules))
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    report["seconds"] = round(mono_now() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale-{started:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n\n" + table(report) + "\n")
    if args.plot:
        sys.stdout.write(plot(report, args.plot) + "\n")
    sys.stdout.write(f"saved {path.relative_to(REPO)} ({report['seconds']}s)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
