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


RAW = (  # one customer mail as it arrived (inbound_raw.raw), ~2 KB with the case's text
    "Return-Path: <ana@compensar.example>\r\nReceived: from mx.compensar.example "
    "(mx.compensar.example [192.0.2.10]) by mesa.example with ESMTPS; {date}\r\n"
    "From: Ana <ana@compensar.example>\r\nTo: soporte-a@mesa.example\r\n"
    "Cc: luis@compensar.example\r\nSubject: TEN-1001 Falla {tid}\r\nDate: {date}\r\n"
    "Message-ID: {mid}\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Buenos días, el servicio presenta intermitencia desde esta mañana. " * 22
    + "\r\n\r\nNombre: Ana\r\nTeléfono: 300 000 0000\r\n")


def _next_ids(db: Any) -> tuple[int, int, int]:
    """Cases already on file, and the next free ticket id/number and inbound id base."""
    from sqlalchemy import func, select

    from mailbridge.spool import InboundMail
    from mailbridge.tickets.models import Counter, Ticket

    with db.reader() as session:
        count = session.scalar(select(func.count()).select_from(Ticket)) or 0
        base = max(session.scalar(select(func.max(Ticket.id))) or 0,
                   session.scalar(select(func.max(Ticket.number))) or 0,
                   session.scalar(select(func.max(Counter.value))) or 0)
        inbound = session.scalar(select(func.max(InboundMail.id))) or 0
    return count, base, inbound


def _after_fill(db: Any) -> None:
    """The case-number counter past the filled numbers; on PostgreSQL, the id sequences
    past the explicit ids (else the daemon's inserts collide), vacuumed, fresh statistics."""
    from sqlalchemy import delete, func, insert, select, text

    from mailbridge.tickets.models import Counter, Ticket
    from mailbridge.tickets.numbering import CASE_COUNTER

    with db.transaction() as session:
        top = session.scalar(select(func.max(Ticket.number))) or 0
        session.execute(delete(Counter.__table__).where(Counter.name == CASE_COUNTER))
        session.execute(insert(Counter.__table__).values(name=CASE_COUNTER, value=top))
        if not db.is_sqlite:
            for table in ("tickets", "inbound", "ticket_messages", "ticket_events", "outbox",
                          "case_actions", "vendor_references"):
                session.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"coalesce(max(id), 0) + 1, false) FROM {table}"))
    if not db.is_sqlite:
        # VACUUM too: autovacuum's first pass over the new rows would otherwise run during
        # the next measurement (the 100k point's p99 of 791 ms, bench/README.md).
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE)"))


def fill(db: Any, cases: int, now: datetime, *, total: int | None = None,
         full: bool = False) -> float:
    """Adds `cases` cases after those on file (ids, numbers and inbound ids past the
    highest), spread over three years as if `total` (default `cases`) were the last size.

    `full` (bench/scale.py) also writes each message's `inbound` row and stored mail
    (`inbound_raw`, ~2 KB), a vendor reference on one case in twenty (closed with its
    case; open ones waiting on the vendor), and puts the open cases in the last half
    hour (acknowledged, clock running, nothing due yet) so the daemon's first sweep has
    nothing to tell. SQLite and PostgreSQL (`insert(table)` with lists of dicts on both).
    """
    from sqlalchemy import insert

    from mailbridge.outbound.outbox import OutboxMail
    from mailbridge.spool import InboundMail, InboundRaw
    from mailbridge.tickets.models import (
        CaseAction,
        Ticket,
        TicketEvent,
        TicketMessage,
        VendorReference,
    )

    models = (Ticket, InboundMail, InboundRaw, TicketMessage, TicketEvent, OutboxMail,
              CaseAction, VendorReference)
    tables = [model.__table__ for model in models]
    existing, base_id, base_inbound = _next_ids(db)
    total = max(total or 0, existing + cases)
    start = now - timedelta(days=3 * 365)
    span = (now - start).total_seconds()
    rnd = random.Random(base_id + 1)
    opened_from = cases - max(50, (existing + cases) // 500)
    began = time.perf_counter()
    for batch_start in range(0, cases, BATCH):
        rows: list[list[dict[str, Any]]] = [[] for _ in tables]
        for i in range(batch_start, min(cases, batch_start + BATCH)):
            tid = base_id + i + 1
            created = start + timedelta(seconds=span * (existing + i) / total)
            is_open = i >= opened_from
            if is_open and full:
                created = now - timedelta(seconds=rnd.uniform(60, 1800))
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
                mid = f"<m{tid}.{k}@cliente.example>"
                inbound_id = None
                if full:
                    inbound_id = base_inbound + 2 * (i + 1) - 1 + k
                    at = created + timedelta(hours=k)
                    raw = RAW.format(date=at.strftime("%a, %d %b %Y %H:%M:%S +0000"),
                                     tid=tid, mid=mid).encode()
                    rows[1].append(dict(
                        id=inbound_id, received_at=at, channel="smtp", source="127.0.0.1",
                        mail_from="ana@compensar.example", rcpt_tos=["soporte-a@mesa.example"],
                        size=len(raw), sha256=f"{tid:032x}{k:032x}", state="done",
                        outcome="ticket" if k == 0 else "reply", ticket_id=tid,
                        message_id=mid, attempts=1, processed_at=at))
                    rows[2].append(dict(inbound_id=inbound_id, raw=raw))
                rows[3].append(dict(
                    ticket_id=tid, direction="in", author_role=role, message_id=mid,
                    sender="ana@compensar.example", inbound_id=inbound_id,
                    subject="Falla", body="Texto del mensaje del caso. " * 12,
                    created_at=created + timedelta(hours=k)))
            rows[4] += [dict(ticket_id=tid, kind=kind, at=created, data={})
                        for kind in ("created", "acked", "closed")]
            rows[5].append(dict(
                created_at=created, kind="ack", ticket_id=tid, trigger_received_at=created,
                mail_from="soporte-a@mesa.example", rcpt_tos=["ana@compensar.example"],
                message_id=f"<ack{tid}@mesa.example>", subject=f"[Caso {tid}]",
                raw=b"x" * 1500, state="sent", attempts=1, next_attempt_at=created,
                sent_at=acked))
            if i % 10 == 0:
                rows[6].append(dict(ticket_id=tid, kind="closing_attempt", seq=1, at=created,
                                    data={}))
            if full and i % 20 == 0:
                sent = created + timedelta(minutes=20)
                rows[7].append(dict(
                    ticket_id=tid, target="hibot", kind="ticketing_vendor",
                    address="soporte@hibot.example",
                    state="registrado" if is_open else "cerrado", vendor_ticket=f"HB-{tid}",
                    message_id=f"<esc{tid}@mesa.example>", requested_by="staff@mesa.example",
                    origin="staff", fields={}, missing_fields=[], created_at=sent,
                    updated_at=sent, sent_at=sent, registered_at=sent,
                    awaiting_since=sent if is_open else None,
                    closed_at=None if is_open else created + timedelta(days=3)))
        with db.transaction() as session:
            for table, batch in zip(tables, rows, strict=True):
                if batch:
                    session.execute(insert(table), batch)
    _after_fill(db)
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
