"""The SLA sweeps alone, in this process: time of one sweep over N open cases.

    .venv/bin/python bench/sweep_cpu.py --cases 2000 --repeat 3      # ~30 s
    .venv/bin/python bench/sweep_cpu.py --cases 2000 --at-hours 30   # escalations due
    .venv/bin/python bench/sweep_cpu.py --cases 2000 --cprofile      # + the heaviest functions

The cases are what a bench burst leaves: bench/corpus.py's openings through the real
pipeline (SQLite), their acks recorded as sent two seconds after the case opened. Then
every sweep kind runs at `now` = one minute later (`--at-hours H`: H hours later, when
the response targets are missed and the high-severity cases are due for escalation),
as the scheduler runs them every 60 s. Reported per kind and for the whole round: CPU
(`time.thread_time`) and wall time, the number of write transactions, and the longest
one — how long the sweep held SQLite's write lock at a stretch, which is what stalls
the pipeline and intake. `--repeat R` runs the round R times on the same database
(sweeps are idempotent: later rounds find nothing new to do); the first round and the
best later round are reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every sweep kind")
    parser.add_argument("--at-hours", type=float, default=0.0,
                        help="sweep this many hours after the burst (default: one minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--tree", default=str(REPO), help="a mailbridge source tree")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(args.tree).resolve()))
    sys.path.insert(1, str(REPO / "bench"))
    sys.stdout.write(json.dumps(run(args), indent=2) + "\n")
    return 0


class LockTimer:
    """Times every write transaction (`Database.transaction`) while it is installed."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0

    @contextlib.contextmanager
    def installed(self, db: Any) -> Iterator[None]:
        original = db.transaction

        @contextlib.contextmanager
        def timed() -> Iterator[Any]:
            started = time.perf_counter()
            try:
                with original() as session:
                    yield session
            finally:
                self.count += 1
                self.longest = max(self.longest, time.perf_counter() - started)

        db.transaction = timed
        try:
            yield
        finally:
            db.transaction = original


def make_cases(args: argparse.Namespace, db: Any, settings: Any, rules: Any) -> dict[str, int]:
    """The burst's cases through the real pipeline; acks recorded as sent."""
    from corpus import Corpus
    from sqlalchemy import text

    from mailbridge.pipeline import Pipeline
    from mailbridge.spool import new_inbound, store_inbound

    corpus = Corpus(args.seed, domain_tag=f"sweep{int(time.time())}")
    slots = corpus.plan(args.cases, reply_ratio=0.0)
    mails = [corpus.opening(s.index) for s in slots if s.kind == "opening"]
    for start in range(0, len(mails), 64):
        store_inbound(db, [new_inbound(m.raw, channel="smtp", mail_from=m.mail_from,
                                       rcpt_tos=m.rcpt_tos) for m in mails[start:start + 64]])
    pipeline = Pipeline(db, settings, lambda: rules)
    for _ in range(args.cases):  # bounded: each pass processes up to 100
        if not pipeline.process_pending():
            break
    with db.transaction() as session:
        # SQLite keeps the UTC instants as text; julianday arithmetic would change their form.
        for ticket_id, created in session.execute(text(
                "SELECT id, created_at FROM tickets")).all():
            session.execute(text("UPDATE tickets SET acked_at = :at WHERE id = :id"),
                            {"at": created, "id": ticket_id})
        session.execute(text("UPDATE outbox SET state = 'sent', attempts = 1"))
    with db.reader() as session:
        counts = dict(session.execute(text(
            "SELECT severity, count(*) FROM tickets GROUP BY severity")).all())
    return {str(k): int(v) for k, v in counts.items()}


def sweep_round(db: Any, rules: Any, now: Any) -> dict[str, dict[str, Any]]:
    from mailbridge.sla.sweep import SWEEP_KINDS, run_sweep

    out: dict[str, dict[str, Any]] = {}
    for kind in SWEEP_KINDS:
        timer = LockTimer()
        with timer.installed(db):
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            result = run_sweep(kind, db, rules, now)
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        out[kind] = {"cpu_ms": round(1000 * cpu, 1), "wall_ms": round(1000 * wall, 1),
                     "write_transactions": timer.count,
                     "longest_write_ms": round(1000 * timer.longest, 1),
                     "done": {k: v for k, v in result.done.items() if v}}
    out["all"] = {
        "cpu_ms": round(sum(r["cpu_ms"] for r in out.values()), 1),
        "wall_ms": round(sum(r["wall_ms"] for r in out.values()), 1),
        "write_transactions": sum(r["write_transactions"] for r in out.values()),
        "longest_write_ms": max(r["longest_write_ms"] for r in out.values()),
    }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    import mailbridge.models  # noqa: F401  (every table known)
    from mailbridge.db import Database, utcnow
    from mailbridge.rules import parse_rules
    from mailbridge.schema import upgrade
    from mailbridge.settings import Settings

    # A line per escalation and breach would be the bench's output; the daemon logs them.
    logging.getLogger("mailbridge").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="mailbridge-sweep-"))
    try:
        data = yaml.safe_load((Path(args.tree) / "rules.yaml").read_text(encoding="utf-8"))
        data["desk"].update(auto_reply_limit_per_hour=1_000_000, ack_limit_per_hour=1_000_000)
        rules = parse_rules(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
        url = f"sqlite:///{workdir / 'mailbridge.db'}"
        upgrade(url)
        settings = Settings(data_dir=workdir, database_url=url, _env_file=None)
        db = Database(url)
        severities = make_cases(args, db, settings, rules)
        now = utcnow() + (timedelta(hours=args.at_hours) if args.at_hours
                          else timedelta(minutes=1))
        profiler = None
        if args.cprofile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        rounds = [sweep_round(db, rules, now) for _ in range(max(1, args.repeat))]
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        db.dispose()
        later = rounds[1:] or rounds
        best = min(later, key=lambda r: r["all"]["cpu_ms"])
        return {
            "cases": sum(severities.values()),
            "severities": severities,
            "sweep_at": f"+{args.at_hours} h" if args.at_hours else "+1 min",
            "first_round": rounds[0],
            "best_later_round": best if len(rounds) > 1 else None,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
