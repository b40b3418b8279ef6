"""Steady load: a fixed rate of mail for a fixed time, and the 250 → ack latency it gets.

`bench/e2e.py` runs this at half the measured end-to-end maximum on the daemon it
already started. Alone it starts its own daemon and relay sink:

    .venv/bin/python bench/steady.py --rate 20 --seconds 60 --clients 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from checks import ack_latencies, correctness, wait_drained
from corpus import Corpus
from harness import (
    RESULTS,
    DaemonProcess,
    Sampler,
    SinkProcess,
    bench_rules,
    make_workdir,
    mono_now,
    prepare_tree,
)
from load import SmtpConn, Tracker, run_paced


def steady_phase(
    daemon: DaemonProcess,
    sink: SinkProcess,
    corpus: Corpus,
    *,
    rate: float,
    seconds: float,
    clients: int,
    start_index: int,
    drain_timeout: float = 120.0,
    check: bool = False,
) -> dict[str, Any]:
    """Paced load at `rate` mails/s for `seconds` on a running daemon."""
    total = max(1, int(rate * seconds))
    slots = corpus.plan(total, start=start_index)
    openings = [corpus.opening(s.index) for s in slots if s.kind == "opening"]
    # Paced load sends whatever is ready: replies when their ack came, openings otherwise,
    # so keep enough openings for every tick.
    extra = total - len(openings)
    openings += [corpus.opening(start_index + total + k) for k in range(extra)]
    reply_plan = {s.reply_to: s.index for s in slots
                  if s.kind == "reply" and s.reply_to is not None}
    tracker = Tracker(corpus, openings, reply_plan, wait_for_replies=False)
    sink.on_event = tracker.on_sink_event
    cpu0 = daemon.cpu_seconds()
    reconnects0 = SmtpConn.reconnects
    sampler = Sampler(daemon).start()
    start, last_250 = run_paced(tracker, daemon.smtp_port, clients, rate, total,
                                timeout=seconds * 3 + 30)
    drained = wait_drained(daemon, tracker, drain_timeout)
    cpu1 = daemon.cpu_seconds()
    queues = sampler.stop()
    ok = tracker.ok_sent()
    elapsed = max(1e-9, last_250 - start)
    result: dict[str, Any] = {
        "rate_target": rate,
        "seconds_target": seconds,
        "sent_250": len(ok),
        "replies_250": sum(1 for s in ok if s.mail.kind == "reply"),
        "rate_achieved": round(len(ok) / elapsed, 2),
        "drained": drained,
        "daemon_cpu_share": round((cpu1 - cpu0) / max(1e-9, mono_now() - start), 3),
        "client_reconnects": SmtpConn.reconnects - reconnects0,
        **ack_latencies(tracker),
        "slow_acks": slow_acks(tracker, start),
        "queues": queues,
    }
    if check:
        result["correctness"] = correctness(daemon, tracker)
    return result


def slow_acks(tracker: Tracker, start: float, threshold: float = 0.5,
              limit: int = 60) -> list[list[float]]:
    """[seconds into the run, 250 -> ack seconds] of the acks slower than `threshold`:
    stalls that come in waves point at something periodic (sweeps, checkpoints)."""
    out = []
    with tracker.cond:
        for mid, times in tracker.acks.items():
            sent = tracker.sent.get(mid)
            if sent is not None and sent.ok and min(times) - sent.t_done > threshold:
                out.append([round(sent.t_done - start, 2), round(min(times) - sent.t_done, 3)])
    out.sort()
    return out[:: max(1, len(out) // limit)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="mails per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tree", default="working",
                        help="'working', a git revision, or a source directory (see e2e.py)")
    parser.add_argument("--auto-reply-limit", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    args = parser.parse_args(argv)

    workdir = make_workdir("steady")
    tree = prepare_tree(args.tree, workdir)
    rules, note = bench_rules(tree, workdir, {"auto_reply_limit_per_hour": args.auto_reply_limit,
                                              "ack_limit_per_hour": args.auto_reply_limit})
    corpus = Corpus(args.seed, domain_tag=f"steady{int(time.time())}")
    sink = SinkProcess("relay", workdir).start()
    daemon = DaemonProcess(workdir / "data", sink.port, tree=tree, rules=rules)
    try:
        daemon.upgrade()
        daemon.start()
        time.sleep(1.0)
        result = steady_phase(daemon, sink, corpus, rate=args.rate, seconds=args.seconds,
                              clients=args.clients, start_index=0, check=True)
        result["memory"] = daemon.memory()
        result["rules"] = note
    finally:
        daemon.stop()
        sink.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"steady-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write(f"\nsaved {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
