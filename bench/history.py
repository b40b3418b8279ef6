"""The SLA sweeps and `mailbridge status` on a database with years of closed cases.

    .venv/bin/python bench/history.py --cases 1000000        # SQLite, ~3.5 min fill, 3.7 GB
    .venv/bin/python bench/history.py --cases 100000 --keep  # keep the data dir

A part of issue 21.1 only: this fills a fresh SQLite database by bulk inserts (Core,
20,000 cases a transaction) with `--cases` cases of the past three years — 99.8 % closed,
acknowledged and answered in time, two messages, three events and a sent ack each, a
closing attempt on one in ten — and the last 0.2 % open in every status. Then, in this
process, it times two rounds of every sweep kind (the second is the steady state: what
the daemon pays every minute), `status_report`, and the CLI's `tickets list` / `tickets
show` / `status` as processes. It does not run the daemon, SMTP or the API (bench/e2e.py,
bench/api.py do, on a small database).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH = 20_000


def fill(db: Any, cases: int, now: datetime) -> float:
    from sqlalchemy import insert

    from mailbridge.outbound.outbox import OutboxMail
    from mailbridge.tickets.models import CaseAction, Ticket, TicketEvent, TicketMessage

    tables = [model.__table__ for model in (Ticket, TicketMessage, TicketEvent, OutboxMail,
                                            CaseAction)]
    start = now - timedelta(days=3 * 365)
    span = (now - start).total_seconds()
    rnd = random.Random(1)
    opened_from = cases - max(50, cases // 500)
    began = time.perf_counter()
    for base in range(0, cases, BATCH):
        rows: list[list[dict[str, Any]]] = [[], [], [], [], []]
        for i in range(base, min(cases, base + BATCH)):
            tid, created = i + 1, start + timedelta(seconds=span * i / cases)
            is_open = i >= opened_from
            acked = created + timedelta(seconds=rnd.uniform(0.1, 2))
            rows[0].append(dict(
                id=tid, number=tid, tenant_id=rnd.choice(["TEN-1001", "TEN-2002"]),
                priority="B", severity="MEDIA", queue="soporte",
                status=(rnd.choice(["abierto", "en_progreso", "esperando_cliente", "resuelto",
                                    "incompleto"]) if is_open else "cerrado"),
                subject=f"TEN-1001 Falla {tid}", subject_key=f"falla {tid}",
                sender="ana@compensar.example", sender_name="Ana", cc=[], cc_held=[],
                fields={}, fields_raw={}, missing_fields=[], created_at=created,
                updated_at=created, ack_due_at=created + timedelta(minutes=15), acked_at=acked,
                first_response_at=None if is_open else created + timedelta(hours=1),
                closed_at=None if is_open else created + timedelta(days=3),
                response_started_at=created, response_at_risk_at=created + timedelta(hours=3),
                response_due_at=created + timedelta(hours=4)))
            for k, role in enumerate(("customer", "staff")):
                rows[1].append(dict(
                    ticket_id=tid, direction="in", author_role=role,
                    message_id=f"<m{tid}.{k}@cliente.example>", sender="ana@compensar.example",
                    subject="Falla", body="Texto del mensaje del caso. " * 12,
                    created_at=created + timedelta(hours=k)))
            rows[2] += [dict(ticket_id=tid, kind=kind, at=created, data={})
                        for kind in ("created", "acked", "closed")]
            rows[3].append(dict(
                created_at=created, kind="ack", ticket_id=tid, trigger_received_at=created,
                mail_from="soporte-a@mesa.example", rcpt_tos=["ana@compensar.example"],
                message_id=f"<ack{tid}@mesa.example>", subject=f"[Caso {tid}]",
                raw=b"x" * 1500, state="sent", attempts=1, next_attempt_at=created,
                sent_at=acked))
            if i % 10 == 0:
                rows[4].append(dict(ticket_id=tid, kind="closing_attempt", seq=1, at=created,
                                    data={}))
        with db.transaction() as session:
            for table, batch in zip(tables, rows, strict=True):
                if batch:
                    session.execute(insert(table), batch)
    return time.perf_counter() - began


def measure(db: Any, rules: Any, now: datetime, env: dict[str, str]) -> dict[str, Any]:
    from mailbridge.sla.sweep import SWEEP_KINDS, run_sweep
    from mailbridge.status import status_report

    result: dict[str, Any] = {}
    for round_ in ("first_round", "steady_round"):
        kinds = {}
        for kind in SWEEP_KINDS:
            wall, cpu = time.perf_counter(), time.process_time()
            run_sweep(kind, db, rules, now)
            kinds[kind] = {"wall_ms": round(1000 * (time.perf_counter() - wall), 1),
                           "cpu_ms": round(1000 * (time.process_time() - cpu), 1)}
        kinds["total_wall_ms"] = round(sum(k["wall_ms"] for k in kinds.values()), 1)
        result[round_] = kinds
    for counts in (True, False):
        wall = time.perf_counter()
        with db.reader() as session:
            status_report(session, counts=counts)
        result[f"status_report{'' if counts else '_gauges'}_ms"] = round(
            1000 * (time.perf_counter() - wall), 1)
    command = [str(REPO / ".venv" / "bin" / "mailbridge")]
    for name, args in (("cli_tickets_list", ["tickets", "list", "--json"]),
                       ("cli_tickets_show", ["tickets", "show", "1"]),
                       ("cli_status", ["status", "--json"]), ("cli_help", ["--help"])):
        wall = time.perf_counter()
        subprocess.run([*command, *args], env=env, capture_output=True, check=True)
        result[f"{name}_ms"] = round(1000 * (time.perf_counter() - wall), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    data_dir = Path(tempfile.mkdtemp(prefix="mailbridge-history-"))
    env = {**os.environ, "MAILBRIDGE_DATA_DIR": str(data_dir),
           "MAILBRIDGE_RULES": str(REPO / "rules.yaml")}
    os.environ.update(env)
    try:
        import mailbridge.models  # noqa: F401
        from mailbridge.db import Database
        from mailbridge.rules import load_rules
        from mailbridge.schema import upgrade
        from mailbridge.settings import Settings

        settings = Settings()
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        now = datetime.now(UTC)
        seconds = fill(db, args.cases, now)
        db_file = data_dir / "mailbridge.db"
        report = {"cases": args.cases, "fill_seconds": round(seconds, 1),
                  "fill_cases_per_second": round(args.cases / seconds),
                  "database_mb": round(db_file.stat().st_size / 1e6, 1),
                  **measure(db, load_rules(settings.rules), now + timedelta(minutes=1), env)}
        db.dispose()
        print(json.dumps(report, indent=2))
    finally:
        if args.keep:
            print(f"kept {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
