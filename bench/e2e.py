"""End-to-end benchmark of mailbridge against a bare fsync-before-250 SMTP server.

    .venv/bin/python bench/e2e.py --mails 2000 --clients 8       # full run (~5 min)
    .venv/bin/python bench/e2e.py --quick                          # 200 mails, < 1 min

Phases, each on fresh processes and a fresh temporary data dir:
 1. reference: bench/reference_sink.py (append + fsync, then 250) takes the corpus
    from the same K client threads; its rate is the yardstick.
 2. burst: `mailbridge db upgrade`, `mailbridge run` with the relay sink
    (bench/reference_sink.py --mode relay, its own process); the clients send the
    N mails as fast as they are answered; replies go out when their case's ack
    arrived. Measures intake (250s/s), end to end (until the last ticket is
    committed and its ack delivered), 250 → ack latency, RSS, CPU, correctness.
 3. steady: the same daemon at half the end-to-end rate for --steady-seconds.
 4. memory: a fresh daemon takes one 25 MB mail; peak RSS increase over idle. Then,
    each on a fresh daemon, the text cases: a 10 MB and a --text-mb (30) MB plain-text
    mail, the big one as quoted-printable HTML and as base64 latin-1, and four at once.
 5. imap: APPEND into a private Dovecot and time until every mail is a ticket —
    only when `mailbridge run` starts IMAP pollers; skipped with the reason otherwise.
Optionally (--profile) py-spy samples the daemon during the burst.

With --postgres, phases 2-5 give way to workers (bench/workers.py): a private
PostgreSQL, then the same burst against 1 and --workers N `mailbridge run` processes
sharing one database (clients spread over their SMTP ports), in the same run.

Prints a table and a JSON document, saved as bench/results/e2e-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checks import ack_latencies, burst_end, correctness, wait_drained
from corpus import Corpus, Mail
from harness import (
    REPO,
    RESULTS,
    DaemonProcess,
    Profiler,
    Sampler,
    SinkProcess,
    bench_rules,
    cpu_by_thread,
    make_workdir,
    mono_now,
    prepare_tree,
    thread_names,
    wait_until,
)
from load import Sent, SmtpConn, Tracker, run_burst
from pyspy_summary import render as render_profile
from pyspy_summary import summarize as summarize_profile
from steady import steady_phase

MB = 1024 * 1024


def loadavg() -> float:
    """The 1-minute load average: others' tests on this machine skew every figure."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def log(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# --- the corpus ----------------------------------------------------------------------------


def build_corpus(args: argparse.Namespace) -> tuple[Corpus, list[Mail], dict[int, int], int]:
    corpus = Corpus(args.seed, attachment_ratio=args.attachment_ratio,
                    big_messages=args.big, domain_tag=f"e2e{int(time.time())}")
    slots = corpus.plan(args.mails, reply_ratio=args.reply_ratio)
    big = corpus.big_indexes(slots)
    t0 = time.perf_counter()
    openings = [corpus.opening(s.index, big=s.index in big) for s in slots if s.kind == "opening"]
    reply_plan = {s.reply_to: s.index for s in slots
                  if s.kind == "reply" and s.reply_to is not None}
    log(f"corpus: {len(openings)} openings + {len(reply_plan)} planned replies, "
        f"{sum(len(m.raw) for m in openings) / MB:.1f} MB, "
        f"built in {time.perf_counter() - t0:.1f}s")
    return corpus, openings, reply_plan, len(slots)


# --- 1. reference --------------------------------------------------------------------------


def reference_phase(args: argparse.Namespace, corpus: Corpus, openings: list[Mail],
                    reply_plan: dict[int, int]) -> dict[str, Any]:
    # The same mails; replies answer made-up acks since no mailbridge numbers the cases.
    by_index = {m.index: m for m in openings}
    replies = [corpus.reply(r, by_index[o], corpus.fake_ack(by_index[o], k + 1))
               for k, (o, r) in enumerate(sorted(reply_plan.items()))]
    mails = [*openings, *replies]
    workdir = make_workdir("reference", args.workdir)
    sink = SinkProcess("reference", workdir).start()
    try:
        tracker = Tracker(corpus, mails, wait_for_replies=False)
        cpu0 = sink.cpu_seconds()
        start, last = run_burst(tracker, sink.port, args.clients, args.timeout)
        cpu = sink.cpu_seconds() - cpu0
    finally:
        sink.stop()
        spool_size = sink.spool.stat().st_size if sink.spool.exists() else 0
        shutil.rmtree(workdir, ignore_errors=True)
    ok = tracker.ok_sent()
    seconds = max(1e-9, last - start)
    result = {
        "sent_250": len(ok),
        "failed": len(tracker.sent) - len(ok),
        "seconds": round(seconds, 3),
        "rate": round(len(ok) / seconds, 2),
        # What the least durable intake costs: mailbridge's CPU per mail against it.
        "cpu_ms_per_mail": round(1000 * cpu / max(1, len(ok)), 2),
        "spool_bytes": spool_size,
        **ack_latencies(tracker),
    }
    log(f"reference: {len(ok)} mails in {seconds:.2f}s = {result['rate']} msgs/s")
    return result


# --- 2. burst (and 3. steady on the same daemon) -----------------------------------------


def mailbridge_phase(args: argparse.Namespace, corpus: Corpus, openings: list[Mail],
                     reply_plan: dict[int, int], total: int) -> dict[str, Any]:
    workdir = make_workdir("burst", args.workdir)
    tracker = Tracker(corpus, openings, reply_plan, stall_seconds=args.stall)
    sink = SinkProcess("relay", workdir, on_event=tracker.on_sink_event).start()
    daemon = _daemon(args, workdir, sink.port)
    result: dict[str, Any] = {}
    profiler: Profiler | None = None
    try:
        daemon.upgrade()
        daemon.start()
        time.sleep(args.settle)
        idle = daemon.memory()
        result["idle_rss"] = idle.get("VmRSS")
        log(f"daemon pid {daemon.pid} smtp {daemon.smtp_port}; idle RSS "
            f"{(idle.get('VmRSS') or 0) / MB:.1f} MB")
        if args.profile:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            RESULTS.mkdir(parents=True, exist_ok=True)
            profiler = Profiler(daemon.pid, RESULTS / f"profile-{stamp}-{args.profile}.txt",
                                rate=args.profile_rate, gil=args.profile == "gil")
            profiler.start()
        cpu0 = daemon.cpu_seconds()
        threads0 = daemon.thread_cpu()
        reconnects0 = SmtpConn.reconnects
        sampler = Sampler(daemon).start()
        start, last_250 = run_burst(tracker, daemon.smtp_port, args.clients, args.timeout)
        log(f"burst: last 250 after {last_250 - start:.2f}s; waiting for the pipeline")
        drained = wait_drained(daemon, tracker, args.drain_timeout)
        cpu1 = daemon.cpu_seconds()
        threads1 = daemon.thread_cpu()
        result["queues"] = sampler.stop()
        result["client_reconnects"] = SmtpConn.reconnects - reconnects0
        if profiler is not None:
            profiler.stop()
        result["cpu_by_thread"] = cpu_by_thread(
            threads0, threads1,
            {tid: name if pid == daemon.pid else f"pipeline process: {name}"
             for pid in daemon.pids() for tid, name in thread_names(pid).items()})
        memory = daemon.memory()
        end = burst_end(daemon, tracker, last_250)
        ok = tracker.ok_sent()
        intake_seconds = max(1e-9, last_250 - start)
        e2e_seconds = max(1e-9, end - start)
        result.update({
            "mails_planned": total,
            "sent_250": len(ok),
            "intake_seconds": round(intake_seconds, 3),
            "intake_rate": round(len(ok) / intake_seconds, 2),
            "e2e_seconds": round(e2e_seconds, 3),
            "e2e_rate": round(len(ok) / e2e_seconds, 2),
            "drained": drained,
            "peak_rss": memory.get("VmHWM"),
            "rss_after": memory.get("VmRSS"),
            "daemon_cpu_seconds": round(cpu1 - cpu0, 2),
            "daemon_cpu_ms_per_mail": round(1000 * (cpu1 - cpu0) / max(1, len(ok)), 2),
            "daemon_cpu_share": round((cpu1 - cpu0) / e2e_seconds, 3),
            **ack_latencies(tracker),
        })
        log(f"burst: intake {result['intake_rate']} msgs/s, end to end {result['e2e_rate']} "
            f"msgs/s, drained={drained}")
        result["correctness"] = correctness(daemon, tracker)
        if profiler is not None:
            summary = summarize_profile(profiler.out)
            result["profile"] = {"file": str(profiler.out.relative_to(REPO)), **summary}
            (profiler.out.with_suffix(".summary.txt")).write_text(render_profile(summary))
        if args.steady_seconds > 0:
            rate = args.steady_rate or max(1.0, round(result["e2e_rate"] * args.steady_fraction, 1))
            log(f"steady: {rate} msgs/s for {args.steady_seconds:.0f}s")
            result["steady"] = steady_phase(
                daemon, sink, corpus, rate=rate, seconds=args.steady_seconds,
                clients=args.clients, start_index=total + 1000,
                drain_timeout=args.drain_timeout, check=True)
            result["steady"]["peak_rss"] = daemon.memory().get("VmHWM")
    finally:
        if profiler is not None:
            profiler.stop()
        result["exit_code"] = daemon.stop()
        sink.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            result["workdir"] = str(workdir)
    return result


def _daemon(args: argparse.Namespace, workdir: Path, relay_port: int,
            env: dict[str, str] | None = None) -> DaemonProcess:
    return DaemonProcess(workdir / "data", relay_port, env=env or _daemon_env(args),
                         tree=args.tree_path, rules=args.rules_path)


def _daemon_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"MAILBRIDGE_LOG_LEVEL": args.log_level}
    for item in args.daemon_env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


# --- 4. one 25 MB mail ---------------------------------------------------------------------


def memory_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The 25 MB attachment mail (the keys at the top), then the text cases in `texts`."""
    corpus = Corpus(args.seed + 1, domain_tag=f"mem{int(time.time())}")
    big = corpus.opening(0, big=True)
    result = _memory_case(args, corpus, "attachment", [big])
    result["attachment_bytes"] = big.attachment_bytes
    if not args.no_text_memory:
        result["texts"] = [
            _memory_case(args, corpus, label, mails)
            for label, mails in _text_cases(corpus, args.text_mb * 1_000_000)
        ]
    return result


# What each encoding adds to the text: the mails come out just under the size asked for.
_GROWTH = {"8bit": 1.0, "quoted-printable": 1.1, "base64": 1.38}


def _text_cases(corpus: Corpus, size: int) -> list[tuple[str, list[Mail]]]:
    def text(index: int, target: int, layout: str = "plain", cte: str = "8bit",
             charset: str = "utf-8") -> Mail:
        return corpus.big_text(index, int(target / _GROWTH[cte]), layout=layout, cte=cte,
                               charset=charset)

    return [
        ("text 10 MB plain 8bit", [text(1, 10_000_000)]),
        (f"text {size // 1_000_000} MB plain 8bit", [text(2, size)]),
        (f"text {size // 1_000_000} MB html quoted-printable",
         [text(3, size, "html", "quoted-printable")]),
        (f"text {size // 1_000_000} MB plain base64 latin-1",
         [text(4, size, cte="base64", charset="iso-8859-1")]),
        (f"4 x text {size // 1_000_000} MB at once", [text(10 + k, size) for k in range(4)]),
    ]


def _memory_case(args: argparse.Namespace, corpus: Corpus, label: str,
                 mails: list[Mail]) -> dict[str, Any]:
    """A fresh daemon, warmed with three small mails, takes `mails` (each on its own
    SMTP connection, at once): its peak RSS over what it had before, against their size."""
    import threading

    warm = [corpus.opening(k) for k in range(1, 4)]
    workdir = make_workdir("memory", args.workdir)
    tracker = Tracker(corpus, [*warm, *mails], wait_for_replies=False)
    sink = SinkProcess("relay", workdir, on_event=tracker.on_sink_event).start()
    daemon = _daemon(args, workdir, sink.port)
    size = sum(len(m.raw) for m in mails)
    result: dict[str, Any] = {"case": label, "mails": len(mails), "message_bytes": size,
                              "shape": mails[0].shape}
    try:
        daemon.upgrade()
        daemon.start()
        time.sleep(args.settle)
        result["idle_rss"] = daemon.memory().get("VmRSS")
        conn = SmtpConn("127.0.0.1", daemon.smtp_port)
        for mail in warm:  # imports and caches that any first mail loads
            tracker.record(conn.send(mail))
        conn.close()
        wait_until(lambda: tracker.acked_count() >= len(warm), 30)
        time.sleep(0.5)
        before = daemon.memory()
        result["rss_before"] = before.get("VmRSS")
        result["hwm_before"] = before.get("VmHWM")
        t0 = mono_now()
        sent: list[Sent] = []

        def send(mail: Mail) -> None:
            client = SmtpConn("127.0.0.1", daemon.smtp_port)
            try:
                sent.append(client.send(mail))
            finally:
                client.close()

        threads = [threading.Thread(target=send, args=(m,)) for m in mails]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for item in sent:
            tracker.record(item)
        result["smtp_codes"] = sorted(item.code for item in sent)
        last_250 = max(item.t_done for item in sent)
        result["smtp_seconds"] = round(last_250 - t0, 3)
        acked = wait_until(lambda: tracker.acked_count() >= len(warm) + len(mails),
                           args.drain_timeout)
        result["acked"] = acked
        if acked:
            last_ack = max(min(tracker.acks[m.message_id]) for m in mails)
            result["last_ack_seconds_after_last_250"] = round(last_ack - last_250, 3)
        result["total_seconds"] = round(mono_now() - t0, 3)
        after = daemon.memory()
        result["hwm_after"] = after.get("VmHWM")
        result["rss_after"] = after.get("VmRSS")
        base = result["rss_before"] or 0
        result["peak_increase"] = (after.get("VmHWM") or 0) - base
        result["increase_over_size"] = round(result["peak_increase"] / size, 2)
        result["correctness"] = correctness(daemon, tracker)
    finally:
        result["exit_code"] = daemon.stop()
        sink.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"memory: {label} ({size / MB:.1f} MB) raised peak RSS by "
        f"{result.get('peak_increase', 0) / MB:.1f} MB ({result.get('increase_over_size')}x)")
    return result


# --- 5. IMAP ---------------------------------------------------------------------------------


def imap_skip_reason(tree: Path) -> str | None:
    intake = tree / "mailbridge" / "intake"
    if not (intake / "imap.py").exists() and not (intake / "imap" / "__init__.py").exists():
        return "mailbridge/intake/imap (the IMAP poller) does not exist"
    dovecot_py = tree / "tests" / "support" / "dovecot.py"
    if not dovecot_py.exists() or "class DovecotServer" not in dovecot_py.read_text():
        return "tests/support/dovecot.py offers no DovecotServer fixture"
    if not shutil.which("dovecot") and not Path("/usr/sbin/dovecot").exists():
        return "dovecot is not installed (scripts/install-test-deps.sh installs it)"
    service = (tree / "mailbridge" / "service.py").read_text()
    if not re.search(r"imap", service, re.IGNORECASE):
        return ("`mailbridge run` does not start IMAP pollers yet (mailbridge/service.py "
                "never mentions imap), so there is no daemon IMAP path to time")
    return None


def imap_phase(args: argparse.Namespace) -> dict[str, Any]:
    reason = imap_skip_reason(args.tree_path)
    if reason is not None:
        log(f"imap: skipped: {reason}")
        return {"skipped": reason}
    sys.path.insert(0, str(args.tree_path))
    from tests.support.dovecot import DovecotServer  # type: ignore[import-not-found]

    count = min(args.mails, args.imap_mails)
    corpus = Corpus(args.seed + 2, domain_tag=f"imap{int(time.time())}")
    mails = [corpus.opening(k) for k in range(count)]
    workdir = make_workdir("imap", args.workdir)
    result: dict[str, Any] = {"mails": count}
    server = DovecotServer()
    tracker = Tracker(corpus, mails, wait_for_replies=False)
    sink = SinkProcess("relay", workdir, on_event=tracker.on_sink_event).start()
    daemon: DaemonProcess | None = None
    try:
        server.start()
        account = {
            "name": "bench", "host": "127.0.0.1", "port": server.port, "security": "none",
            "username": server.user, "password": server.password,
            "queue_address": "soporte-b@mesa.example", "poll_interval": 1.0,
            "initial_sync": "all",
        }
        env = {**_daemon_env(args), "MAILBRIDGE_IMAP_ACCOUNTS": json.dumps([account])}
        daemon = _daemon(args, workdir, sink.port, env)
        daemon.upgrade()
        daemon.start()
        time.sleep(args.settle)
        wanted = {m.message_id.strip("<>") for m in mails}
        t0 = mono_now()
        with server.client() as client:
            for mail in mails:
                t_mail = mono_now()
                client.append("INBOX", mail.raw)
                # the APPEND's OK stands in for the 250: latency is APPEND → ack
                tracker.record(Sent(mail, t_mail, mono_now(), 250, "APPEND"))
        t_appended = mono_now()

        def ticketed() -> int:
            try:
                with daemon.db() as conn:  # type: ignore[union-attr]
                    rows = conn.execute(
                        "SELECT message_id FROM ticket_messages WHERE direction = 'in'")
                    return sum(1 for (mid,) in rows if (mid or "").strip("<>") in wanted)
            except Exception:
                return 0

        done = wait_until(lambda: ticketed() >= count, args.drain_timeout, interval=0.2)
        t_end = mono_now()
        acked = wait_until(lambda: tracker.acked_count() >= count, 30)
        acks = [min(t) for t in tracker.acks.values()]
        result.update({
            "append_seconds": round(t_appended - t0, 3),
            "all_tickets": done,
            "tickets": ticketed(),
            "seconds_to_all_tickets": round(t_end - t0, 3),
            "rate": round(count / max(1e-9, t_end - t0), 2),
            "all_acked": acked,
            "acks": len(acks),
            "seconds_to_all_acks": round(max(acks) - t0, 3) if acks else None,
            "append_to_ack": ack_latencies(tracker)["ack_after_250"],
            "duplicates": sum(1 for t in tracker.acks.values() if len(t) > 1),
        })
        log(f"imap: {count} mails APPENDed → {result['tickets']} tickets in "
            f"{result['seconds_to_all_tickets']}s")
    except Exception as exc:
        result["error"] = repr(exc)
        if daemon is not None:
            result["daemon_log"] = daemon.log_tail(10)
        log(f"imap: failed: {exc!r}")
    finally:
        if daemon is not None:
            daemon.stop()
        sink.stop()
        server.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --- report ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f} MB"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def table(report: dict[str, Any]) -> str:
    ref = report.get("reference", {})
    mb = report.get("mailbridge", {})
    corr = mb.get("correctness", {})
    steady = mb.get("steady", {})
    mem = report.get("memory", {})
    lat = mb.get("ack_after_250", {})
    slat = steady.get("ack_after_250", {})
    ratios = report.get("ratios", {})
    rows: list[tuple[str, str, str]] = []
    if "error" in mb:
        rows.append(("mailbridge", "FAILED", mb["error"].strip().splitlines()[-1][:100]))

    def row(name: str, value: str, target: str = "") -> None:
        rows.append((name, value, target))

    row("reference intake (append+fsync, 250)", f"{ref.get('rate', '-')} msgs/s")
    row("mailbridge intake (250s per second)", f"{mb.get('intake_rate', '-')} msgs/s",
        f"{ratios.get('intake', '-')}x reference")
    e2e_ok = ratios.get("e2e") is not None and ratios["e2e"] >= 0.6
    row("mailbridge end to end (ticket + ack)", f"{mb.get('e2e_rate', '-')} msgs/s",
        f"{ratios.get('e2e', '-')}x reference (target >= 0.6x) {_verdict(e2e_ok)}")
    queues = mb.get("queues", {})
    row("burst 250 -> ack p50 / p95 / p99 / max",
        " / ".join(_ms(lat.get(k)) for k in ("p50", "p95", "p99", "max")),
        f"backlog: max {queues.get('max_inbound_new', '-')} unprocessed, "
        f"{queues.get('max_outbox_pending', '-')} unsent")
    smtp = mb.get("smtp_transaction", {})
    row("burst SMTP transaction (MAIL..250) p50 / p99",
        " / ".join(_ms(smtp.get(k)) for k in ("p50", "p99")),
        f"reference p99 {_ms(ref.get('smtp_transaction', {}).get('p99'))}")
    if steady:
        p99 = steady.get("ack_after_250", {}).get("p99")
        row(f"steady {steady.get('rate_target')} msgs/s x {steady.get('seconds_target'):.0f}s "
            "250 -> ack p50 / p95 / p99 / max",
            " / ".join(_ms(slat.get(k)) for k in ("p50", "p95", "p99", "max")),
            f"p99 < 1 s {_verdict(p99 is not None and p99 < 1.0)}")
        sched = steady.get("ack_after_scheduled", {})
        row("steady scheduled -> ack p99", _ms(sched.get("p99")),
            f"achieved {steady.get('rate_achieved')} msgs/s")
    idle = mb.get("idle_rss")
    row("idle RSS", _mb(idle), f"< 100 MB {_verdict(idle is not None and idle < 100 * MB)}")
    row("peak RSS (burst)", _mb(mb.get("peak_rss")))
    if mem.get("message_bytes"):
        inc = mem.get("increase_over_size")
        row(f"one {mem['message_bytes'] / 1e6:.0f} MB mail: peak RSS increase",
            f"{_mb(mem.get('peak_increase'))} = {inc}x size",
            f"< 4x {_verdict(inc is not None and inc < 4)}")
    for case in mem.get("texts", []):
        inc = case.get("increase_over_size")
        lag = case.get("last_ack_seconds_after_last_250")
        row(f"{case['case']}: peak RSS increase",
            f"{_mb(case.get('peak_increase'))} = {inc}x size",
            f"< 4x {_verdict(inc is not None and inc < 4)}; last ack +{lag} s after its 250")
    threads = ", ".join(f"{k} {v:.1f}s" for k, v in list(mb.get("cpu_by_thread", {}).items())[:4])
    row("daemon CPU per mail (burst)", f"{mb.get('daemon_cpu_ms_per_mail', '-')} ms",
        f"CPU share {mb.get('daemon_cpu_share', '-')} of a core; {threads}")
    if ref.get("cpu_ms_per_mail") is not None:
        ratio = (round(mb["daemon_cpu_ms_per_mail"] / ref["cpu_ms_per_mail"], 2)
                 if mb.get("daemon_cpu_ms_per_mail") and ref["cpu_ms_per_mail"] else "-")
        row("reference CPU per mail (burst)", f"{ref['cpu_ms_per_mail']} ms",
            f"mailbridge {ratio}x")
    row("250'd / tickets (cli, db) / acked openings",
        f"{corr.get('sent_250', '-')} / {corr.get('tickets_cli', '-')}, "
        f"{corr.get('tickets_db', '-')} / {corr.get('acked_openings', '-')}"
        f" of {corr.get('openings_250', '-')}")
    row("threaded replies", f"{corr.get('threaded_replies', '-')} of "
        f"{corr.get('replies_250', '-')} "
        f"(no-token: {corr.get('replies_without_token_threaded', '-')})")
    dup, lost = corr.get("duplicates"), corr.get("lost")
    row("duplicates (acks with same In-Reply-To > 1)", str(dup), f"0 {_verdict(dup == 0)}")
    row("losses (250'd, no ticket message)", str(lost), f"0 {_verdict(lost == 0)}")
    if steady.get("correctness"):
        sc = steady["correctness"]
        row("steady duplicates / losses", f"{sc.get('duplicates')} / {sc.get('lost')}",
            _verdict(sc.get("duplicates") == 0 and sc.get("lost") == 0))
    imap = report.get("imap", {})
    if "skipped" in imap:
        row("imap", "skipped", imap["skipped"][:70])
    elif "error" in imap:
        row("imap", "failed", str(imap["error"])[:70])
    elif imap:
        row("imap APPEND -> all tickets", f"{imap.get('rate', '-')} msgs/s",
            f"{imap.get('tickets')} of {imap.get('mails')} in "
            f"{imap.get('seconds_to_all_tickets')}s; all acked after "
            f"{imap.get('seconds_to_all_acks')}s")
        alat = imap.get("append_to_ack", {})
        row("imap APPEND -> ack p50 / p99 / max",
            " / ".join(_ms(alat.get(k)) for k in ("p50", "p99", "max")),
            f"duplicates {imap.get('duplicates')}")
    loads = [report.get(k, {}).get("loadavg_before_after") for k in
             ("reference", "mailbridge", "memory", "imap")]
    busy = [x for pair in loads if pair for x in pair]
    if busy:
        row("load average seen (1 min)", f"max {max(busy):.2f}",
            "other work on this 2-core machine skews the figures" if max(busy) > 2.5 else "")
    if not mb:  # --memory-only: the memory rows alone
        rows = [r for r in rows if "peak RSS increase" in r[0]] or rows
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:<{vwidth}}  {c}".rstrip() for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--mails", type=int, default=2000, help="mails in the burst (N)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent SMTP clients (K)")
    parser.add_argument("--quick", action="store_true",
                        help="--mails 200 --steady-seconds 10: under a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reply-ratio", type=float, default=0.20)
    parser.add_argument("--attachment-ratio", type=float, default=0.10)
    parser.add_argument("--big", type=int, default=0,
                        help="how many 25 MB mails to mix into the burst")
    parser.add_argument("--steady-seconds", type=float, default=None,
                        help="steady-load duration (default 60; 0 skips it)")
    parser.add_argument("--steady-fraction", type=float, default=0.5,
                        help="steady rate as a fraction of the burst's end-to-end rate")
    parser.add_argument("--steady-rate", type=float, default=None,
                        help="a fixed steady rate (mails/s) instead of the fraction")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory phase")
    parser.add_argument("--memory-only", action="store_true",
                        help="run the memory phase alone (e.g. with --tree REF to compare)")
    parser.add_argument("--no-text-memory", action="store_true",
                        help="memory phase: the 25 MB attachment only, no text cases")
    parser.add_argument("--text-mb", type=int, default=30,
                        help="size of the big text mails of the memory phase, MB")
    parser.add_argument("--no-imap", action="store_true")
    parser.add_argument("--imap-mails", type=int, default=300)
    parser.add_argument("--profile", nargs="?", const="gil", choices=("gil", "all"),
                        help="py-spy the daemon during the burst: 'gil' (default) samples "
                             "the thread holding the GIL, 'all' every busy thread")
    parser.add_argument("--profile-rate", type=int, default=100)
    parser.add_argument("--log-level", default="INFO", help="the daemon's MAILBRIDGE_LOG_LEVEL")
    parser.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the daemon (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="sending deadline, s")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--stall", type=float, default=60.0,
                        help="stop waiting for acks to reply to after this long without one")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds after start")
    parser.add_argument("--tree", default="working",
                        help="what to benchmark: 'working' (the work tree as it is), a git "
                             "revision such as HEAD (exported with git archive), or a "
                             "directory holding a mailbridge source tree")
    parser.add_argument("--auto-reply-limit", type=int, default=1_000_000,
                        help="desk.auto_reply_limit_per_hour and ack_limit_per_hour in the "
                             "bench rules (3 contacts send thousands of mails an hour; the "
                             "shipped limits would drop acks)")
    parser.add_argument("--workdir", default=None, help="where temporary data dirs go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    parser.add_argument("--label", default="", help="free text saved with the results")
    parser.add_argument("--postgres", action="store_true",
                        help="workers on one PostgreSQL database instead of the SQLite "
                             "phases: the burst against 1 and --workers daemons")
    parser.add_argument("--workers", type=int, default=2,
                        help="with --postgres: the most workers to run (1 and this)")
    parser.add_argument("--worker-rounds", type=int, default=1,
                        help="with --postgres: alternate 1 and N workers this many times "
                             "(the best of each is compared)")
    parser.add_argument("--pg-fast", action="store_true",
                        help="with --postgres: keep the test server's fsync=off and "
                             "synchronous_commit=off (default: durable commits)")
    args = parser.parse_args(argv)
    if args.quick:
        args.mails = 200 if args.mails == 2000 else args.mails
        if args.steady_seconds is None:
            args.steady_seconds = 10.0
    if args.steady_seconds is None:
        args.steady_seconds = 60.0

    started = datetime.now(UTC)
    t0 = mono_now()
    rundir = make_workdir("run", args.workdir)
    try:
        return _run(args, argv, started, t0, rundir)
    finally:
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)


def _run(args: argparse.Namespace, argv: list[str] | None, started: datetime, t0: float,
         rundir: Path) -> int:
    args.tree_path = prepare_tree(args.tree, rundir)
    args.rules_path, rules_note = bench_rules(
        args.tree_path, rundir, {"auto_reply_limit_per_hour": args.auto_reply_limit,
                                 "ack_limit_per_hour": args.auto_reply_limit})
    log(f"tree: {args.tree_path}; {rules_note}")
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "label": args.label,
        "command": " ".join([".venv/bin/python", "bench/e2e.py", *(argv or sys.argv[1:])]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "git": _git_head(),
        "tree": args.tree,
        "rules": rules_note,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if args.memory_only:
        report["memory"] = memory_phase(args)
        report["seconds"] = round(mono_now() - t0, 1)
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n\n"
                         + table(report) + "\n")
        return 0
    corpus, openings, reply_plan, total = build_corpus(args)
    if not args.no_reference:
        load_before = loadavg()
        report["reference"] = reference_phase(args, corpus, openings, reply_plan)
        report["reference"]["loadavg_before_after"] = [load_before, loadavg()]
    if args.postgres:
        return _workers_report(args, report, corpus, openings, reply_plan, total, t0)
    load_before = loadavg()
    try:
        report["mailbridge"] = mailbridge_phase(args, corpus, openings, reply_plan, total)
    except RuntimeError as exc:  # the daemon did not start: say so, keep the report
        log(f"mailbridge: failed: {exc}")
        report["mailbridge"] = {"error": str(exc)[-2000:]}
    report["mailbridge"]["loadavg_before_after"] = [load_before, loadavg()]
    if not args.no_memory and "error" not in report["mailbridge"]:
        load_before = loadavg()
        report["memory"] = memory_phase(args)
        report["memory"]["loadavg_before_after"] = [load_before, loadavg()]
    if not args.no_imap and "error" not in report["mailbridge"]:
        load_before = loadavg()
        report["imap"] = imap_phase(args)
        report["imap"]["loadavg_before_after"] = [load_before, loadavg()]
    ref_rate = report.get("reference", {}).get("rate")
    mb = report["mailbridge"]
    if ref_rate and "e2e_rate" in mb:
        report["ratios"] = {"intake": round(mb["intake_rate"] / ref_rate, 3),
                            "e2e": round(mb["e2e_rate"] / ref_rate, 3)}
    report["seconds"] = round(mono_now() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"e2e-{started:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    text = table(report)
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n\n" + text + "\n")
    if "profile" in mb:
        sys.stdout.write("\n" + render_profile(mb["profile"], 15) + "\n")
    sys.stdout.write(f"\nsaved {path.relative_to(REPO)} ({report['seconds']}s)\n")
    return 0


def _workers_report(args: argparse.Namespace, report: dict[str, Any], corpus: Corpus,
                    openings: list[Mail], reply_plan: dict[int, int], total: int,
                    t0: float) -> int:
    from workers import workers_phase

    load_before = loadavg()
    try:
        report["workers"] = workers_phase(
            counts=sorted({1, max(1, args.workers)}), rounds=max(1, args.worker_rounds),
            durable=not args.pg_fast, tree=args.tree_path, corpus=corpus, openings=openings,
            reply_plan=reply_plan, total=total, clients=args.clients, rules=args.rules_path,
            daemon_env=_daemon_env(args), settle=args.settle, timeout=args.timeout,
            drain_timeout=args.drain_timeout, stall=args.stall, base=args.workdir,
            keep=args.keep)
    except RuntimeError as exc:
        log(f"workers: failed: {exc}")
        report["workers"] = {"error": str(exc)[-2000:]}
    report["workers"]["loadavg_before_after"] = [load_before, loadavg()]
    ref_rate = report.get("reference", {}).get("rate")
    for item in report["workers"].get("runs", []):
        if ref_rate and item.get("e2e_rate") is not None:
            item["ratios"] = {"intake": round(item["intake_rate"] / ref_rate, 3),
                              "e2e": round(item["e2e_rate"] / ref_rate, 3)}
    report["seconds"] = round(mono_now() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = datetime.fromisoformat(report["started"])
    path = RESULTS / f"e2e-{started:%Y%m%dT%H%M%S}-workers.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n\n"
                     + workers_table(report) + "\n")
    sys.stdout.write(f"\nsaved {path.relative_to(REPO)} ({report['seconds']}s)\n")
    return 0


def workers_table(report: dict[str, Any]) -> str:
    ref = report.get("reference", {})
    work = report.get("workers", {})
    if "error" in work:
        return f"workers: FAILED: {work['error'].strip().splitlines()[-1][:200]}"
    rows = [("", "reference", *[f"{r['workers']} worker(s)" for r in work.get("runs", [])])]

    def row(name: str, ref_value: str, pick: Any) -> None:
        values = []
        for item in work.get("runs", []):
            try:
                values.append(pick(item))
            except (KeyError, TypeError, IndexError):
                values.append("-")
        rows.append((name, ref_value, *values))

    rate = ref.get("rate")
    row("intake msgs/s (x reference)", f"{rate}",
        lambda r: f"{r['intake_rate']} ({r.get('ratios', {}).get('intake', '-')}x)")
    row("end to end msgs/s (x reference)", "",
        lambda r: f"{r['e2e_rate']} ({r.get('ratios', {}).get('e2e', '-')}x)")
    row("250 -> ack p50 / p99", "",
        lambda r: f"{_ms(r['ack_after_250']['p50'])} / {_ms(r['ack_after_250']['p99'])}")
    row("SMTP transaction p50 / p99", _ms(ref.get("smtp_transaction", {}).get("p99")),
        lambda r: f"{_ms(r['smtp_transaction']['p50'])} / {_ms(r['smtp_transaction']['p99'])}")
    row("CPU ms per mail: daemons + PostgreSQL", "",
        lambda r: f"{r['daemon_cpu_ms_per_mail']} + {r['postgres_cpu_ms_per_mail']}")
    row("CPU s: per daemon; load harness; cores busy", "",
        lambda r: f"{r['daemon_cpu_seconds']}; {r.get('harness_cpu_seconds', '-')}; "
                  f"{r['cpu_cores_busy']}")
    row("CPU s by thread (first daemon, top 4)", "",
        lambda r: ", ".join(f"{k} {v:.1f}" for k, v in list(r['cpu_by_thread'][0].items())[:4]))
    row("max unprocessed / unsent", "",
        lambda r: f"{r['queues']['max_inbound_new']} / {r['queues']['max_outbox_pending']}")
    row("250'd / tickets / acked openings", "",
        lambda r: f"{r['correctness']['sent_250']} / {r['correctness']['tickets_db']} / "
                  f"{r['correctness']['acked_openings']}")
    row("threaded replies", "", lambda r: f"{r['correctness']['threaded_replies']} of "
                                          f"{r['correctness']['replies_250']}")
    row("duplicates / losses", "", lambda r: f"{r['correctness']['duplicates']} / "
                                             f"{r['correctness']['lost']}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(f"{c!s:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
    speed = work.get("speedup_e2e")
    if speed:
        text += (f"\nend to end, N workers / 1 worker: {speed}; intake: "
                 f"{work.get('speedup_intake')}  (PostgreSQL: {work.get('postgres')})")
    return text


def _git_head() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    raise SystemExit(main())
