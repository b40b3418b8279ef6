"""The command line; thin: each command calls into the packages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from mailbridge.settings import Settings

if TYPE_CHECKING:
    from datetime import datetime

log = logging.getLogger("mailbridge.cli")


def _settings() -> Settings:
    return Settings()


class SchemaBehind(SystemExit):
    pass


def _db(settings: Settings, *, behind_exit: int = 78):  # type: ignore[no-untyped-def]
    """The database, or exit with a clear sentence when its schema is not current."""
    import mailbridge.models  # noqa: F401  (every table known: see Database)
    from mailbridge.db import Database
    from mailbridge.schema import pending_revision

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        head = pending_revision(db.engine)
    except Exception as exc:  # unreachable database: say so, with the sysexits code
        print(f"error: database unavailable: {exc}", file=sys.stderr)
        raise SchemaBehind(75 if behind_exit == 75 else 69) from None
    if head is not None:
        print(f"error: the database schema is not at {head}: run `mailbridge db upgrade`",
              file=sys.stderr)
        raise SchemaBehind(behind_exit)
    return db


def _rules(settings: Settings):  # type: ignore[no-untyped-def]
    """The rules in force, or exit 78 (EX_CONFIG) listing every problem with its place."""
    from mailbridge.rules import RulesError, load_rules

    try:
        return load_rules(settings.rules)
    except RulesError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(78) from None


def _read_mail(source: str) -> bytes:
    """The raw mail from a file or `-` (stdin), or exit 66 (EX_NOINPUT) saying why."""
    from mailbridge.intake.pipe import EX_NOINPUT, read_input

    try:
        return read_input(source)
    except OSError as exc:
        print(f"error: cannot read {source}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(EX_NOINPUT) from None


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def cmd_run(args: argparse.Namespace) -> int:
    from mailbridge.intake.imap_config import ImapConfigError
    from mailbridge.outbound.webhooks import WebhookConfigError
    from mailbridge.rules import RulesError
    from mailbridge.service import SchemaOutdated, run

    settings = _settings()
    try:
        return run(settings)
    except (RulesError, ImapConfigError, WebhookConfigError) as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 78  # EX_CONFIG
    except SchemaOutdated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 78


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from mailbridge.schema import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, args.revision)
    print(f"database at {args.revision}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from mailbridge.intake.pipe import EX_OK, EX_TEMPFAIL, ingest_bytes
    from mailbridge.rules import RulesError, load_rules

    settings = _settings()
    raw = _read_mail(args.file)
    db = _db(settings, behind_exit=EX_TEMPFAIL)  # the MTA keeps the mail and retries
    code, inbound_id, reason = ingest_bytes(
        db,
        raw,
        source=f"pipe:{args.file}",
        mail_from=args.sender or "",
        rcpt_tos=args.recipient or [],
        max_size=settings.max_message_size,
    )
    if code != EX_OK or inbound_id is None:
        print(f"error: {reason}", file=sys.stderr)
        return code
    result: dict[str, Any] = {"stored": inbound_id}
    if not args.store_only:
        # Process right away; a failure here is the pipeline's business (the
        # mail is stored and will be retried or quarantined), not the MTA's.
        from mailbridge.pipeline import Pipeline

        try:
            rules = load_rules(settings.rules)
            processed = Pipeline(db, settings, lambda: rules).process(inbound_id)
        except RulesError as exc:
            print(f"warning: stored, not processed: {exc}", file=sys.stderr)
            processed = None
        except Exception as exc:  # the daemon will pick it up again
            print(f"warning: stored, not processed yet: {exc!r}", file=sys.stderr)
            processed = None
        if processed is not None:
            result.update(outcome=processed.outcome, case=processed.ticket_number)
    if args.json:
        _print_json(result)
    return EX_OK


def cmd_tickets_list(args: argparse.Namespace) -> int:
    from mailbridge.views import list_tickets, ticket_summary

    db = _db(_settings())
    with db.reader() as session:
        try:
            found = list_tickets(session, status=args.status, tenant_id=args.tenant,
                                 owner=args.owner, queue=args.queue, priority=args.priority,
                                 sla_state=args.sla, limit=args.limit)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 64
        tickets = [ticket_summary(t) for t in found]
    if args.json:
        _print_json(tickets)
    else:
        for t in tickets:
            print(
                f"{t['number']:>7}  {t['priority']}  {t['status']:<11} {t['tenant_id'] or '-':<10} "
                f"{t['sender']:<30} {t['subject'][:60]}"
            )
    return 0


def cmd_tickets_show(args: argparse.Namespace) -> int:
    from mailbridge.views import get_ticket, ticket_json

    db = _db(_settings())
    with db.reader() as session:
        ticket = get_ticket(session, args.number)
        if ticket is None:
            print(f"error: no case {args.number}", file=sys.stderr)
            return 1
        data = ticket_json(session, ticket)
    if args.json:
        _print_json(data)
    else:
        print(f"Caso {data['number']} [{data['priority']}] {data['status']}: {data['subject']}")
        print(f"  cliente: {data['tenant_id']}  remitente: {data['sender']}")
        for m in data["messages"]:
            print(f"  - {m['created_at']} {m['author_role']} {m['sender']}")
        for r in data.get("vendor_references", []):
            number = f" ticket #{r['vendor_ticket']}" if r["vendor_ticket"] else ""
            print(f"  escalado a {r['target']}{number}: {r['state']} (desde {r['created_at']})")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mailbridge.rules import RulesError, load_rules

    try:
        settings = _settings()
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"]:
                key = "MAILBRIDGE_" + "_".join(str(p) for p in err["loc"]).upper()
                print(f"environment: {key}: {err['msg']}", file=sys.stderr)
            else:  # a rule across settings: the message names them
                print(f"environment: {err['msg'].removeprefix('Value error, ')}",
                      file=sys.stderr)
        return 78
    from mailbridge.intake.imap_config import ImapConfigError, load_imap_accounts

    try:
        rules = load_rules(settings.rules)
        accounts = load_imap_accounts(settings.imap_accounts, path=settings.imap_accounts_file)
    except (RulesError, ImapConfigError) as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 78
    if settings.sender_auth == "authres" and not settings.trusted_authserv_id:
        print("environment: MAILBRIDGE_TRUSTED_AUTHSERV_ID: required when "
              "MAILBRIDGE_SENDER_AUTH=authres (whose Authentication-Results to trust)",
              file=sys.stderr)
        return 78
    if settings.relay and settings.relay_auth == "xoauth2":
        from mailbridge.oauth import relay_oauth_config

        try:
            oauth = relay_oauth_config(settings)
        except ValidationError as exc:
            for err in exc.errors():
                key = "_".join(str(p) for p in err["loc"]).upper()
                print(f"environment: MAILBRIDGE_RELAY_OAUTH{'_' + key if key else ''}: "
                      f"{err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
            return 78
        print(f"relay oauth: {oauth.provider}, {oauth.effective_grant} grant at {oauth.endpoint}")
    from mailbridge.outbound.webhooks import WebhookConfigError, load_webhook_targets

    try:
        targets = load_webhook_targets(settings.webhooks, path=settings.webhooks_file)
    except WebhookConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 78
    unsigned = []
    for target in targets:
        try:
            target.resolve_secret()
        except ValueError as exc:
            unsigned.append(str(exc))
        print(f"webhook: {target.name}: {target.url} ({len(target.events)} events)")
    for problem in unsigned:
        print(f"environment: {problem}", file=sys.stderr)
    if unsigned:
        return 78
    for account in accounts:
        print(f"imap: {account.name}: {account.username}@{account.host}:{account.effective_port} "
              f"({account.security}), folder {account.folder} → {account.queue_address}"
              + (f", oauth {account.oauth.provider} {account.oauth.effective_grant}"
                 if account.oauth else ""))
    print(
        f"{settings.rules}: ok ({len(rules.addresses)} support addresses, "
        f"{len(rules.tenants)} tenants)"
    )
    print(f"database: {_redacted_url(settings.resolved_database_url)}")
    print(f"smtp: {settings.smtp_listen}  http: {settings.http_listen}")
    if settings.smtp_tls_cert is not None:
        import ssl

        from mailbridge.intake.smtp import ServerTls

        try:
            ServerTls.from_settings(settings)
        except (OSError, ssl.SSLError) as exc:
            print(f"environment: MAILBRIDGE_SMTP_TLS_CERT: {settings.smtp_tls_cert}: cannot "
                  f"load it with its key: {exc}", file=sys.stderr)
            return 78
        print("smtp tls: STARTTLS " + ("required" if settings.smtp_require_tls else "offered"))
    if settings.lmtp_listen:
        print(f"lmtp: {settings.lmtp_listen}")
    relay = (f"{settings.relay} ({settings.relay_security}"
             + (", certificate and host name verified" if settings.relay_security != "none"
                else "") + ")"
             if settings.relay else f"none (outbound mail to {settings.outbound_maildir})")
    print(f"relay: {relay}")
    print(f"sender authentication: {settings.sender_auth}"
          + (f" (trusting {settings.trusted_authserv_id})" if settings.trusted_authserv_id else ""))
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    from mailbridge.inspect import describe_mail

    settings = _settings()
    raw = _read_mail(args.file)
    rules = _rules(settings)
    report = describe_mail(raw, rules)
    if args.json:
        _print_json(report)
        return 0
    for key in ("from", "subject", "classification", "tenant_id", "missing_fields", "defects"):
        print(f"{key}: {report[key]}")
    for key, value in report["fields"].items():
        print(f"  {key}: {value}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from mailbridge.status import status_report

    settings = _settings()
    db = _db(settings)
    with db.reader() as session:
        report = status_report(session)
    _add_oauth_status(report, settings)
    if args.json:
        _print_json(report)
        return 0
    inbound, outbox, acks = report["inbound"], report["outbox"], report["acks"]
    print(f"inbound waiting: {inbound['waiting']} (oldest {inbound['oldest_waiting_seconds']} s)")
    print(f"quarantined:     {inbound['quarantined']}")
    print(f"outbox pending:  {outbox['pending']} (oldest {outbox['oldest_pending_seconds']} s), "
          f"failed {outbox['failed']}")
    for failure in outbox["recent_failures"]:
        case = f"case {failure['case']}" if failure["case"] else "no case"
        print(f"OUTBOUND FAILED: #{failure['id']} {failure['kind']} ({case}) to "
              f"{', '.join(failure['rcpt_tos'])}: {failure['error']}")
    print(f"cases:           {report['tickets']['total']} {report['tickets']['by_status']}")
    oldest = acks["oldest_unacknowledged"]
    print(f"oldest unacknowledged case: {oldest['case']} ({oldest['age_seconds']} s)"
          if oldest else "every case acknowledged")
    for late in acks["overdue"]:
        print(f"ACK OVERDUE: case {late['case']} (due {late['due_at']})")
    for name, token in (report.get("oauth") or {}).items():
        print(f"oauth {name}: " + ("ok" if token["ok"] else
              f"RENEWAL FAILING since {token['failing_since']}: {token['last_error']}"))
    hooks = report["webhooks"]
    print(f"webhooks:        {hooks['pending']} pending (oldest "
          f"{hooks['oldest_pending_seconds']} s), failed {hooks['failed']}")
    for failure in hooks["recent_failures"]:
        case = f"case {failure['case']}" if failure["case"] else "no case"
        print(f"WEBHOOK FAILED: {failure['target']} {failure['event']} {failure['id']} ({case}) "
              f"after {failure['attempts']} attempts: {failure['error']}")
    return 0


def cmd_api_token(args: argparse.Namespace) -> int:
    """API tokens: `create NAME [--read-only]` prints the token once; `list`; `revoke NAME`."""
    from mailbridge.tokens import TokenError, create_token, list_tokens, revoke_token

    db = _db(_settings())
    if args.token_command == "create":
        try:
            with db.transaction() as session:
                token = create_token(session, args.name, read_only=args.read_only)
        except TokenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 65
        if args.json:
            _print_json({"name": args.name, "read_only": args.read_only, "token": token})
        else:
            print(token)
            print(f"token {args.name!r} ({'read-only' if args.read_only else 'read and write'})"
                  ": shown only now, store it safely", file=sys.stderr)
        return 0
    if args.token_command == "list":
        with db.reader() as session:
            tokens = list_tokens(session)
        if args.json:
            _print_json(tokens)
        else:
            for t in tokens:
                mode = "read-only" if t["read_only"] else "read-write"
                print(f"{t['name']:<24} {mode:<10} created {t['created_at'][:19]}  "
                      f"last used {(t['last_used_at'] or 'never')[:19]}")
        return 0
    with db.transaction() as session:
        gone = revoke_token(session, args.name)
    if not gone:
        print(f"error: no token {args.name!r}", file=sys.stderr)
        return 1
    print(f"token {args.name!r} revoked (its board sessions ended)")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from mailbridge.spool import STATE_QUARANTINED, InboundMail, release_for_replay
    from mailbridge.status import quarantine_entry, quarantine_list

    settings = _settings()
    db = _db(settings)
    if args.quarantine_command == "list":
        with db.reader() as session:
            entries = quarantine_list(session)
        if args.json:
            _print_json(entries)
        else:
            for e in entries:
                print(f"{e['id']:>7}  {e['received_at'][:19]}  {e['stage']:<10} {e['error'][:80]}")
        return 0
    with db.reader() as session:
        row = session.get(InboundMail, args.id)
        if row is None or row.state != STATE_QUARANTINED:
            print(f"error: no quarantined mail {args.id}", file=sys.stderr)
            return 1
        entry = quarantine_entry(row, full=True)
        raw = row.raw if args.quarantine_command == "show" and args.raw else b""
    if args.quarantine_command == "show":
        if args.raw:
            sys.stdout.buffer.write(raw)
        else:
            _print_json(entry)
        return 0
    if args.quarantine_command == "drop":
        from mailbridge.db import utcnow

        with db.transaction() as session:
            row = session.get(InboundMail, args.id)
            assert row is not None
            row.state, row.outcome, row.processed_at = "dropped", "dropped", utcnow()
        print(f"mail {args.id} dropped (its raw copy stays in the archive)")
        return 0
    # replay
    release_for_replay(db, args.id)
    from mailbridge.pipeline import Pipeline
    from mailbridge.pipeline.runner import wait_settled
    rules = _rules(settings)
    # A running daemon's workers may take the released mail first: report theirs.
    result = Pipeline(db, settings, lambda: rules).process(args.id) or wait_settled(db, args.id)
    outcome = result.outcome if result else "queued"
    print(f"mail {args.id} replayed: {outcome}")
    return 0 if outcome != "quarantined" else 1


def cmd_escalate(args: argparse.Namespace) -> int:
    """Send a case to Operations or a vendor; exit 65 (and nothing sent) when fields lack."""
    from mailbridge.db import utcnow
    from mailbridge.escalation.fields import UnknownField, values_from_pairs
    from mailbridge.escalation.service import MISSING, ORIGIN_CLI, SENT, escalate
    from mailbridge.views import get_ticket

    settings = _settings()
    rules = _rules(settings)
    target = rules.escalation_target(args.target)
    if target is None:
        known = ", ".join(sorted(rules.escalation_targets)) or "none configured"
        print(f"error: unknown target {args.target!r} (known: {known})", file=sys.stderr)
        return 64
    try:
        values = values_from_pairs(target, args.field or [])
    except UnknownField as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 64
    db = _db(settings)
    with db.transaction() as session:
        ticket = get_ticket(session, args.number)
        if ticket is None:
            print(f"error: no case {args.number}", file=sys.stderr)
            return 1
        result = escalate(
            session, rules, ticket, args.target, now=utcnow(),
            evidence_dir=settings.evidence_dir, origin=ORIGIN_CLI,
            requested_by=args.by.lower() if args.by else None, values=values,
        )
        data = {"case": args.number, "target": result.target, "status": result.status,
                "message": result.message, "missing": result.missing,
                "message_id": result.message_id}
    if args.json:
        _print_json(data)
    else:
        print(f"caso {args.number} → {result.target}: {result.message}")
        for label in result.missing:
            print(f"  falta: {label}   (--field '{label}=…')")
    if result.status == SENT:
        return 0
    return 65 if result.status == MISSING else 1


class _BadNow(ValueError):
    pass


def _now(args: argparse.Namespace) -> datetime:
    """`--now` as an aware datetime (UTC when it names no zone), else the current time;
    raises _BadNow (the caller prints it, exit 64) when it is not ISO 8601."""
    from datetime import UTC
    from datetime import datetime as _datetime

    from mailbridge.db import utcnow

    if not args.now:
        return utcnow()
    try:
        now = _datetime.fromisoformat(args.now)
    except ValueError:
        raise _BadNow(f"error: --now {args.now!r} is not an ISO 8601 time") from None
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def cmd_escalation_sweep(args: argparse.Namespace) -> int:
    """Remind targets whose answer is overdue and tell staff (cron; idempotent)."""
    from mailbridge.escalation.reminders import remind_overdue_vendors

    settings = _settings()
    rules = _rules(settings)
    try:
        now = _now(args)
    except _BadNow as exc:
        print(exc, file=sys.stderr)
        return 64
    done = remind_overdue_vendors(_db(settings), rules, now)
    if args.json:
        _print_json(done)
    else:
        for item in done:
            what = "reminded, staff told" if item["reminded"] else "staff told (no reminders left)"
            print(f"case {item['case']} {item['target']}: {what}")
        print(f"{len(done)} overdue escalation(s)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every scheduled sweep once at `--now` (the scheduler's own code; idempotent)."""
    from mailbridge.sla.sweep import sweep_all

    settings = _settings()
    rules = _rules(settings)
    try:
        now = _now(args)
    except _BadNow as exc:
        print(exc, file=sys.stderr)
        return 64
    results = sweep_all(_db(settings), rules, now)
    report = {"now": now.isoformat(), "sweeps": {k: r.done for k, r in results.items()}}
    if args.json:
        _print_json(report)
    else:
        for kind, done in report["sweeps"].items():
            figures = ", ".join(f"{k} {v}" for k, v in done.items()) or "nothing to do"
            print(f"{kind}: {figures}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    """Move closed cases' raw mail to the compressed archive (for a daily timer; idempotent)."""
    from mailbridge.archive import ArchiveReport, archive_closed_mail

    settings = _settings()
    try:
        now = _now(args)
    except _BadNow as exc:
        print(exc, file=sys.stderr)
        return 64
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 64
    if args.older_than is not None and args.older_than < 0:
        print("error: --older-than must not be negative", file=sys.stderr)
        return 64
    days = settings.archive_after_days if args.older_than is None else args.older_than

    def progress(report: ArchiveReport) -> None:
        log.info("archive chunk committed", extra={"moved": report.moved,
                                                   "bytes_raw": report.bytes_raw,
                                                   "bytes_stored": report.bytes_stored})

    report = archive_closed_mail(_db(settings), now=now, older_than_days=days, limit=args.limit,
                                 dry_run=args.dry_run, after_chunk=progress)
    if args.json:
        _print_json({"older_than_days": days, **report.as_json()})
    elif args.dry_run:
        print(f"would archive {report.moved} mail(s), {report.bytes_raw} bytes "
              f"(closed before {report.cutoff}); nothing changed")
    else:
        ratio = f", {report.bytes_raw / report.bytes_stored:.1f}x" if report.bytes_stored else ""
        print(f"archived {report.moved} mail(s) in {report.seconds} s: {report.bytes_raw} -> "
              f"{report.bytes_stored} bytes{ratio} (closed before {report.cutoff})")
    return 0


def _redacted_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon (SMTP, pipeline, sender, HTTP)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("ingest", help="store one message from FILE or - (stdin)")
    p.add_argument("file")
    p.add_argument("--sender", "-f", help="envelope sender")
    p.add_argument("--recipient", "-r", action="append", help="envelope recipient (repeatable)")
    p.add_argument("--store-only", action="store_true", help="store; let the daemon process it")
    p.add_argument("--json", action="store_true", help="print what happened as JSON")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("tickets", help="cases")
    tsub = p.add_subparsers(dest="tickets_command", required=True)
    ls = tsub.add_parser("list", help="list cases, newest first")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--status")
    ls.add_argument("--tenant")
    ls.add_argument("--owner", help="staff address; '-' for the cases nobody owns")
    ls.add_argument("--queue")
    ls.add_argument("--priority", choices=["A", "B", "C", "a", "b", "c"])
    ls.add_argument("--sla", choices=["a_tiempo", "en_riesgo", "vencido", "cumplido", "en_pausa"],
                    help="the response clock's state")
    ls.add_argument("--limit", type=int, default=100)
    ls.set_defaults(func=cmd_tickets_list)
    show = tsub.add_parser("show", help="one case")
    show.add_argument("number", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_tickets_show)

    p = sub.add_parser("parse", help="show what mailbridge reads from one mail (stores nothing)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("status", help="queues, oldest unacknowledged mail, overdue acks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("api-token", help="tokens for the HTTP API and the board")
    asub = p.add_subparsers(dest="token_command", required=True)
    t = asub.add_parser("create", help="make a token and print it (once)")
    t.add_argument("name", help="recorded on every write the token makes")
    t.add_argument("--read-only", action="store_true", help="it may read, never write")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_api_token)
    t = asub.add_parser("list", help="the tokens (never their value)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_api_token)
    t = asub.add_parser("revoke", help="remove a token and end its board sessions")
    t.add_argument("name")
    t.set_defaults(func=cmd_api_token)

    p = sub.add_parser("quarantine", help="mail whose processing failed")
    qsub = p.add_subparsers(dest="quarantine_command", required=True)
    q = qsub.add_parser("list", help="quarantined mail with stage and error")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quarantine)
    for name, text in (("show", "one mail with its traceback"), ("replay", "process it again"),
                       ("drop", "stop retrying it (the raw copy is kept)")):
        q = qsub.add_parser(name, help=text)
        q.add_argument("id", type=int)
        if name == "show":
            q.add_argument("--raw", action="store_true", help="print the raw message")
        q.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("escalate", help="send a case to Operations or a vendor (rules.yaml)")
    p.add_argument("number", type=int, help="case number")
    p.add_argument("target", help="escalation target, e.g. hibot, panda, operaciones")
    p.add_argument("--field", "-F", action="append", metavar="KEY=VALUE",
                   help="a field value (key or label), repeatable")
    p.add_argument("--by", metavar="ADDRESS", help="the staff member escalating (told of answers)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_escalate)

    p = sub.add_parser("escalation", help="escalations to Operations and vendors")
    esub = p.add_subparsers(dest="escalation_command", required=True)
    sw = esub.add_parser("sweep", help="remind overdue vendors and tell staff (for cron)")
    sw.add_argument("--now", help="ISO 8601 time to judge lateness at (default: now)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_escalation_sweep)

    p = sub.add_parser("sweep", help="run every scheduled sweep once (acks, response clock, "
                       "warnings, escalation, closing and chase, vendors)")
    p.add_argument("--now", help="ISO 8601 instant to run them at (default: now; no zone = UTC)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("archive", help="move closed cases' raw mail to the compressed archive "
                       "(MAILBRIDGE_ARCHIVE_AFTER_DAYS; reads stay the same)")
    p.add_argument("--dry-run", action="store_true", help="count the mails and bytes; move none")
    p.add_argument("--limit", type=int, metavar="N", help="move at most N mails this run")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="days since closing (default: MAILBRIDGE_ARCHIVE_AFTER_DAYS)")
    p.add_argument("--now", help="ISO 8601 instant to count the days from (default: now)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("check-config", help="validate settings and rules.yaml")
    p.set_defaults(func=cmd_check_config)
    _add_oauth_parser(sub)
    return parser


def _add_oauth_status(report: dict[str, Any], settings: Settings) -> None:
    """The daemon's token state (it writes run/oauth.json), when it has OAuth accounts."""
    from mailbridge.oauth import read_state_file

    state = read_state_file(settings.run_dir / "oauth.json")
    if state is not None:
        report["oauth"] = state["accounts"]


def cmd_oauth_test(args: argparse.Namespace) -> int:
    """Get a token for ACCOUNT ("relay" or an IMAP account name) and log in with it."""
    from mailbridge.oauth import TokenError

    settings = _settings()
    try:
        if args.account == "relay":
            source, login = _relay_oauth_login(settings)
        else:
            source, login = _imap_oauth_login(settings, args.account)
        if source is None:
            print(f"{args.account}: no built-in OAuth2 configured (auth: xoauth2 with oauth)",
                  file=sys.stderr)
            return 78
        source.token()
        state = source.state()
        print(f"{args.account}: token from {state['token_url']} ({state['grant']} grant), "
              f"valid for {state['expires_in']} s")
        where = login()
        print(f"{args.account}: logged in to {where} with XOAUTH2")
    except TokenError as exc:
        print(f"{args.account}: no token: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"{args.account}: login failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _relay_oauth_login(settings: Settings) -> tuple[Any, Any]:
    from mailbridge.oauth import relay_token_source
    from mailbridge.outbound.sender import RelayTransport

    if not settings.relay or settings.relay_auth != "xoauth2":
        return None, None

    def login() -> str:
        transport = RelayTransport(settings)
        transport.open()
        transport.close()
        return f"{settings.relay} as {settings.relay_user}"

    return relay_token_source(settings), login


def _imap_oauth_login(settings: Settings, name: str) -> tuple[Any, Any]:
    from mailbridge.intake.imap import connection
    from mailbridge.intake.imap_config import load_imap_accounts

    accounts = {a.name: a for a in load_imap_accounts(settings.imap_accounts,
                                                       path=settings.imap_accounts_file)}
    if name not in accounts:
        raise SystemExit(f"no IMAP account {name!r} (known: relay, {', '.join(accounts)})")
    account = accounts[name]

    def login() -> str:
        client = connection.open_client(account)
        try:
            connection.log_in(client, account, connection.secret_of(account))
            client.logout()
        finally:
            connection.shutdown(client)
        return f"{account.host}:{account.effective_port} as {account.username}"

    return account.token_source(), login


def _add_oauth_parser(sub: Any) -> None:
    p = sub.add_parser("oauth", help="OAuth2 tokens of the relay and IMAP accounts")
    osub = p.add_subparsers(dest="oauth_command", required=True)
    t = osub.add_parser("test", help="get a token for ACCOUNT and log in with it")
    t.add_argument("account", help="'relay' or an IMAP account name")
    t.set_defaults(func=cmd_oauth_test)


def main(argv: list[str] | None = None) -> int:
    from mailbridge.logs import setup_logging

    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        setup_logging(settings.log_level, settings.log_format)
    except Exception:
        setup_logging()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
