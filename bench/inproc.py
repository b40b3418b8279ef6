"""The pipeline alone, in this process: CPU milliseconds per mail, without SMTP or sockets.

    .venv/bin/python bench/inproc.py --mails 600            # ~20 s
    .venv/bin/python bench/inproc.py --mails 600 --cprofile # + the 25 heaviest functions

The corpus is bench/corpus.py's (openings; replies answer the case numbers the
pipeline will give, threaded by the `[Caso N]` token since their acks are made up).
Mails are stored first, then `Pipeline.process_pending` runs until the queue is empty;
CPU time (`time.process_time`) and wall time are reported per mail, with the parse,
render and classify costs measured apart on the same mails. Steadier than the end-to-end
run on a shared machine: use it to compare a change, the end-to-end run to report it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reply-ratio", type=float, default=0.2)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="skip the parse/classify/render parts measured apart (for "
                             "counting instructions: bench/README.md)")
    parser.add_argument("--no-pipeline", action="store_true",
                        help="build and store the corpus only (the fixed part of a count)")
    parser.add_argument("--tag", default="", help="the corpus's domain tag (default: from "
                        "the clock; bench/icount.py fixes it so that runs compare exactly)")
    parser.add_argument("--statements", action="store_true",
                        help="+ the SQL statements per mail, by kind (on stderr)")
    parser.add_argument("--tree", default=str(REPO), help="a mailbridge source tree")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best is reported")
    parser.add_argument("--batch", type=int, default=1,
                        help="mails per write transaction (the daemon's MAILBRIDGE_PIPELINE_BATCH)")
    parser.add_argument("--postgres", action="store_true",
                        help="on a private PostgreSQL (durable commits) instead of SQLite")
    args = parser.parse_args(argv)
    from repeat import report_best

    return report_best(args, run, "pipeline_cpu_ms_per_mail")


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    import yaml
    from corpus import Corpus

    import mailbridge.models  # noqa: F401  (every table known)
    from mailbridge.db import Database
    from mailbridge.outbound.render import Draft, render
    from mailbridge.parse.classify import classify
    from mailbridge.parse.mime import parse_mail
    from mailbridge.pipeline import Pipeline
    from mailbridge.rules import parse_rules
    from mailbridge.schema import upgrade
    from mailbridge.settings import Settings
    from mailbridge.spool import new_inbound, store_inbound

    workdir = Path(tempfile.mkdtemp(prefix="mailbridge-inproc-"))
    try:
        data = yaml.safe_load((Path(args.tree) / "rules.yaml").read_text(encoding="utf-8"))
        data["desk"].update(auto_reply_limit_per_hour=1_000_000, ack_limit_per_hour=1_000_000)
        rules = parse_rules(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
        if args.server is not None:
            url = args.server.create_database()
        else:
            url = f"sqlite:///{workdir / 'mailbridge.db'}"
            upgrade(url)
        settings = Settings(data_dir=workdir, database_url=url)
        db = Database(url)
        try:  # as the daemon does with no webhook target (older trees record every event)
            from mailbridge.outbound.webhooks import record_events
        except ImportError:
            pass
        else:
            record_events(db, [])
        corpus = Corpus(args.seed, domain_tag=args.tag or f"inproc{int(time.time())}")
        slots = corpus.plan(args.mails, reply_ratio=args.reply_ratio)
        openings = [corpus.opening(s.index) for s in slots if s.kind == "opening"]
        by_index = {m.index: m for m in openings}
        number = {m.index: k + 1 for k, m in enumerate(openings)}
        replies = [corpus.reply(s.index, by_index[s.reply_to],
                                corpus.fake_ack(by_index[s.reply_to], number[s.reply_to]))
                   for s in slots if s.kind == "reply" and s.reply_to in by_index]
        mails = [*openings, *replies]
        def store(batch: list) -> None:  # type: ignore[type-arg]
            for start in range(0, len(batch), 64):
                store_inbound(db, [new_inbound(m.raw, channel="smtp", mail_from=m.mail_from,
                                               rcpt_tos=m.rcpt_tos)
                                   for m in batch[start:start + 64]])

        # Openings first so the replies find their cases.
        store(openings)
        pipeline = Pipeline(db, settings, lambda: rules,
                            **({"batch_size": args.batch} if args.batch != 1 else {}))
        profiler = None
        if args.cprofile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        seen: dict[str, int] = {}
        if args.statements:
            from sqlalchemy import event

            def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
                key = " ".join(statement.split())[:90]
                seen[key] = seen.get(key, 0) + 1

            for engine in {db.engine, db.read_engine}:
                event.listen(engine, "before_cursor_execute", count)
            from sqlalchemy.orm import Session as OrmSession

            def flushed(session, context, instances):  # type: ignore[no-untyped-def]
                kinds = sorted({type(o).__name__ for o in [*session.dirty, *session.new]})
                key = f"(flush of {', '.join(kinds) or 'nothing'})"
                seen[key] = seen.get(key, 0) + 1

            event.listen(OrmSession, "before_flush", flushed)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        processed = 0
        while not args.no_pipeline and (batch := pipeline.process_pending()):
            processed += len(batch)
        store(replies)
        while not args.no_pipeline and (batch := pipeline.process_pending()):
            processed += len(batch)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        if seen:
            print(f"SQL statements per mail ({processed} mails): "
                  f"{sum(seen.values()) / max(1, processed):.2f}", file=sys.stderr)
            for key, n in sorted(seen.items(), key=lambda kv: -kv[1]):
                print(f"  {n / max(1, processed):6.2f}  {key}", file=sys.stderr)
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats(
                os.environ.get("MAILBRIDGE_BENCH_SORT", "cumulative")).print_stats(250)
        with db.reader() as session:
            from sqlalchemy import text

            outcomes = dict(session.execute(text(
                "SELECT outcome, count(*) FROM inbound GROUP BY outcome")).all())
            tickets = session.execute(text("SELECT count(*) FROM tickets")).scalar_one()
            outbox = session.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        if args.pipeline_only or args.no_pipeline:
            db.dispose()
            return {"mails": processed, "tickets": tickets, "outbox_rows": outbox,
                    "outcomes": json.dumps(outcomes, sort_keys=True),
                    "pipeline_cpu_ms_per_mail": round(
                        1000 * (cpu1 - cpu0) / max(1, processed), 3)}
        # Parts measured apart on the same mails.
        raws = [m.raw for m in mails]
        t0 = time.process_time()
        parsed = [parse_mail(r) for r in raws]
        parse_ms = 1000 * (time.process_time() - t0) / len(raws)
        t0 = time.process_time()
        for p in parsed:
            classify(p.message, own_addresses=rules.own_addresses, envelope_sender=None)
        classify_ms = 1000 * (time.process_time() - t0) / len(raws)
        draft = Draft(template="ack.txt.j2", context={
            "desk": rules.desk, "customer_name": "Ana Gómez", "priority_label": "Alta",
            "tenant": None, "missing": ["Evidencias"], "secret_kinds": [],
            "ticket": type("T", (), {"number": 7, "subject": "Caída", "priority": "A",
                                     "missing_fields": []})()},
            to=["ana@compensar.example"], cc=["luis@compensar.example"],
            subject="[Caso 7] TEN-1001 Caída del servicio – INC123",
            from_address="soporte@mesa.example", from_name="Mesa de Soporte",
            reply_to="soporte+7@mesa.example", in_reply_to="<a@b.example>",
            references=["<r1@b.example>", "<a@b.example>"])
        t0 = time.process_time()
        for _ in range(300):
            render(draft)
        render_ms = 1000 * (time.process_time() - t0) / 300
        db.dispose()
        return {
            "mails": processed,
            "tickets": tickets,
            "outbox_rows": outbox,
            "outcomes": json.dumps(outcomes, sort_keys=True),
            "pipeline_cpu_ms_per_mail": round(1000 * (cpu1 - cpu0) / max(1, processed), 3),
            "pipeline_wall_ms_per_mail": round(1000 * (wall1 - wall0) / max(1, processed), 3),
            "parse_cpu_ms_per_mail": round(parse_ms, 3),
            "classify_cpu_ms_per_mail": round(classify_ms, 3),
            "render_ack_cpu_ms": round(render_ms, 3),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
