"""The outbound sender alone, in this process: CPU milliseconds per mail it sends.

    .venv/bin/python bench/sender_cpu.py --mails 1000 --repeat 3   # ~20 s
    .venv/bin/python bench/sender_cpu.py --mails 1000 --trickle 2  # woken every 2 acks
    .venv/bin/python bench/sender_cpu.py --mails 1000 --cprofile   # + the heaviest functions
    .venv/bin/python bench/sender_cpu.py --postgres                 # on a private PostgreSQL

A fresh database gets N cases, each with one pending acknowledgement in the outbox (a
real rendered ack); then `OutboxSender.send_due` runs in this thread until the outbox
is empty, sending to an aiosmtpd sink in a thread of this process. With `--trickle K`
the acks are queued K at a time and the sender is woken for each group (its passes
until one sends nothing, then `_idle_wait`), which is what the daemon sees while the
pipeline queues one ack per mail. Only the sending thread's CPU (`time.thread_time`)
around the sender's calls is counted: neither the sink's work nor the queueing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best is reported")
    parser.add_argument("--trickle", type=int, default=0, metavar="K",
                        help="queue K mails at a time and wake the sender for each group, "
                             "as the daemon does when the pipeline queues acks one by one "
                             "(default 0: all queued at once)")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="cProfile order (tottime, cumulative)")
    parser.add_argument("--tree", default=str(REPO), help="a mailbridge source tree")
    parser.add_argument("--postgres", action="store_true",
                        help="on a private PostgreSQL (durable commits) instead of SQLite")
    args = parser.parse_args(argv)
    from repeat import report_best

    return report_best(args, run, "sender_cpu_ms_per_mail")


def make_cases(db: Any, count: int) -> list[dict[str, Any]]:
    """`count` cases; returns one pending ack row each (rendered like the pipeline's)."""
    from sqlalchemy import insert

    import mailbridge.models  # noqa: F401  (every table known)
    from mailbridge.db import utcnow
    from mailbridge.outbound.outbox import _row_values
    from mailbridge.outbound.render import Draft
    from mailbridge.rules import load_rules
    from mailbridge.tickets.models import Ticket

    desk = load_rules(REPO / "rules.yaml").desk
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for start in range(0, count, 200):
        numbers = range(start + 1, min(count, start + 200) + 1)
        with db.transaction() as session:
            ids = session.execute(insert(Ticket.__table__).returning(Ticket.__table__.c.id), [{
                "number": n, "tenant_id": "TEN-1001", "priority": "A", "severity": "ALTA",
                "status": "abierto", "subject": f"TEN-1001 Caída {n}", "subject_key": f"k{n}",
                "sender": "ana@compensar.example", "cc": [], "fields": {}, "fields_raw": {},
                "missing_fields": [], "created_at": now, "updated_at": now, "ack_due_at": now,
            } for n in numbers]).scalars().all()
        for number, ticket_id in zip(numbers, sorted(ids), strict=True):
            draft = Draft(
                template="ack.txt.j2",
                context={"desk": desk, "customer_name": "Ana Gómez", "tenant": None,
                         "priority_label": "Alta", "missing": [], "secret_kinds": [],
                         "ticket": type("T", (), {"number": number, "priority": "A",
                                                  "subject": f"Caída {number}",
                                                  "missing_fields": []})()},
                to=["ana@compensar.example"], cc=["luis@compensar.example"],
                subject=f"[Caso {number}] TEN-1001 Caída {number}",
                from_address="soporte@mesa.example", from_name="Mesa de Soporte",
                reply_to=f"soporte+{number}@mesa.example",
                in_reply_to=f"<in-{number}@compensar.example>", references=[])
            rows.append(_row_values(draft, kind="ack", ticket_id=ticket_id, inbound_id=None,
                                    trigger_received_at=now, envelope_from=None,
                                    templates_dir=None))
    return rows


def queue(db: Any, rows: list[dict[str, Any]]) -> None:
    """Put the rows in the outbox, due now."""
    from sqlalchemy import insert

    from mailbridge.db import utcnow
    from mailbridge.outbound.outbox import OutboxMail

    now = utcnow()
    with db.transaction() as session:
        session.execute(insert(OutboxMail.__table__),
                        [{**r, "created_at": now, "next_attempt_at": now} for r in rows])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import text

    from mailbridge.db import Database
    from mailbridge.outbound.sender import OutboxSender
    from mailbridge.schema import upgrade
    from mailbridge.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="mailbridge-sender-"))
    from tests.support.sink import SmtpSink  # the tests' relay sink, in a thread here

    sink = SmtpSink().start()
    try:
        if args.server is not None:
            url = args.server.create_database()
        else:
            url = f"sqlite:///{workdir / 'mailbridge.db'}"
            upgrade(url)
        settings = Settings(data_dir=workdir, database_url=url, relay=f"127.0.0.1:{sink.port}",
                            _env_file=None)
        db = Database(url)
        rows = make_cases(db, args.mails)
        sender = OutboxSender(db, settings)
        profiler = None
        if args.cprofile:
            import cProfile

            profiler = cProfile.Profile()
        group = args.trickle or args.mails
        cpu = wall = 0.0
        sent = 0
        for start in range(0, args.mails, group):
            queue(db, rows[start:start + group])
            if profiler is not None:
                profiler.enable()
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            # What the sender's loop does when woken: passes until one sends
            # nothing, then it looks up when to wake next.
            for _ in range(args.mails):  # bounded: each pass but the last sends some
                result = sender.send_due()
                sent += result.sent
                if not result.sent:
                    break
            sender._idle_wait()
            cpu += time.thread_time() - cpu0
            wall += time.perf_counter() - wall0
            if profiler is not None:
                profiler.disable()
        if profiler is not None:
            import pstats

            pstats.Stats(profiler, stream=sys.stderr).sort_stats(args.sort).print_stats(40)
        with db.reader() as session:
            states = dict(session.execute(text(
                "SELECT state, count(*) FROM outbox GROUP BY state")).all())
            acked = session.execute(text(
                "SELECT count(*) FROM tickets WHERE acked_at IS NOT NULL")).scalar_one()
        db.dispose()
        if sent != args.mails or len(sink.received) != args.mails or acked != args.mails:
            raise RuntimeError(f"sent {sent}, sink {len(sink.received)}, acked {acked}, {states}")
        return {
            "backend": "postgresql" if args.server is not None else "sqlite",
            "mails": sent,
            "trickle": args.trickle,
            "outbox_states": json.dumps(states, sort_keys=True),
            "sender_cpu_ms_per_mail": round(1000 * cpu / max(1, sent), 3),
            "sender_wall_ms_per_mail": round(1000 * wall / max(1, sent), 3),
        }
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
