"""`mailbridge archive`: closed cases' raw mail moves to the compressed cold table, and
every reader still gets the same bytes; nothing is lost or doubled by a crash."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, select, update

from mailbridge.archive import ArchiveReport, archive_closed_mail
from mailbridge.cli import main
from mailbridge.db import Database
from mailbridge.schema import upgrade
from mailbridge.settings import Settings
from mailbridge.spool import (
    BLOB_STREAM_MIN,
    STATE_DONE,
    STATE_QUARANTINED,
    InboundMail,
    InboundRaw,
    InboundRawArchive,
    new_inbound,
    store_inbound,
)
from mailbridge.tickets.models import STATUS_CLOSED, STATUS_OPEN, Ticket
from tests.pipeline.helpers import case, deliver
from tests.support.daemon import opening_mail
from tests.test_schema import _downgrade

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=200)
LATELY = NOW - timedelta(days=10)
_numbers = itertools.count(1000)


def message(n: int, size: int = 0) -> bytes:
    """A mail like the desk's: headers, a Spanish body; `size` pads it (big mail)."""
    body = ("Buenos días, el servicio de correo no responde desde las 08:00.\r\n" * 20
            + f"Caso de prueba {n}\r\n")
    raw = (f"From: ana@compensar.example\r\nTo: soporte-a@mesa.example\r\n"
           f"Subject: TEN-1001 prueba {n}\r\nMessage-ID: <{n}@compensar.example>\r\n\r\n{body}"
           ).encode()
    return raw + bytes(range(256)) * (size // 256) if size else raw


def mails(db: Database, raws: list[bytes], *, status: str | None = None,
          closed_at: datetime | None = None, received_at: datetime = LONG_AGO,
          state: str = STATE_DONE) -> list[int]:
    """Stored mails, processed into one case of `status` (none when status is None)."""
    ids = store_inbound(db, [new_inbound(r, channel="smtp") for r in raws])
    with db.transaction() as session:
        ticket_id = None
        if status is not None:
            ticket = Ticket(number=next(_numbers), priority="A", status=status, subject="x",
                            sender="ana@compensar.example", closed_at=closed_at)
            session.add(ticket)
            session.flush()
            ticket_id = ticket.id
        session.execute(update(InboundMail).where(InboundMail.id.in_(ids)).values(
            state=state, ticket_id=ticket_id, received_at=received_at))
    return ids


def hot(db: Database) -> set[int]:
    with db.reader() as session:
        return set(session.scalars(select(InboundRaw.inbound_id)))


def cold(db: Database) -> set[int]:
    with db.reader() as session:
        return set(session.scalars(select(InboundRawArchive.inbound_id)))


def read(db: Database, ids: list[int]) -> dict[int, bytes | None]:
    """Each mail's message as every reader gets it: InboundMail.raw."""
    with db.reader() as session:
        return {i: session.get(InboundMail, i).raw for i in ids}  # type: ignore[union-attr]


@pytest.fixture
def desk(db: Database) -> dict[str, Any]:
    """Mail of every kind: only `closed` and `caseless` are old and finished enough."""
    raws: dict[int, bytes] = {}
    groups: dict[str, list[int]] = {}
    counter = itertools.count(1)

    def add(name: str, count: int, **kwargs: Any) -> None:
        made = [message(next(counter)) for _ in range(count)]
        ids = mails(db, made, **kwargs)
        groups[name] = ids
        raws.update(zip(ids, made, strict=True))

    add("closed", 3, status=STATUS_CLOSED, closed_at=LONG_AGO)
    big = message(next(counter), size=BLOB_STREAM_MIN + 4096)  # written through a blob
    groups["closed"] += mails(db, [big], status=STATUS_CLOSED, closed_at=LONG_AGO)
    raws[groups["closed"][-1]] = big
    add("caseless", 2)  # refused senders, bounces: kept, never worked on again
    add("open", 2, status=STATUS_OPEN)
    add("recently_closed", 2, status=STATUS_CLOSED, closed_at=LATELY)
    add("reopened", 2, status=STATUS_OPEN, closed_at=LONG_AGO)  # closed_at stays on reopening
    add("late_reply", 1, status=STATUS_CLOSED, closed_at=LONG_AGO, received_at=LATELY)
    add("quarantined", 1, state=STATE_QUARANTINED)
    add("waiting", 1, state="new")
    add("recent_caseless", 1, received_at=LATELY)
    movable = groups["closed"] + groups["caseless"]
    return {"raws": raws, "groups": groups, "movable": movable,
            "staying": sorted(set(raws) - set(movable))}


def environment(monkeypatch: pytest.MonkeyPatch, settings: Settings, **env: str) -> None:
    """The settings of this test's desk, as the command line reads them."""
    monkeypatch.setenv("MAILBRIDGE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MAILBRIDGE_RULES", str(settings.rules))
    monkeypatch.setenv("MAILBRIDGE_DATABASE_URL", settings.resolved_database_url)
    for key, value in env.items():
        monkeypatch.setenv(f"MAILBRIDGE_{key.upper()}", value)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings,
        *args: str, **env: str) -> dict[str, Any]:
    """`mailbridge archive ARGS --json --now NOW` in this process; its JSON."""
    environment(monkeypatch, settings, **env)
    capsys.readouterr()
    assert main(["archive", *args, "--json", "--now", NOW.isoformat()]) == 0
    return json.loads(capsys.readouterr().out)


def test_archive_moves_closed_cases_mail_and_reads_stay_the_same(
        db, settings, desk, monkeypatch, capsys) -> None:
    report = cli(monkeypatch, capsys, settings)
    assert report["moved"] == len(desk["movable"]) == 6
    assert report["older_than_days"] == 90 and report["dry_run"] is False
    assert report["bytes_raw"] == sum(len(desk["raws"][i]) for i in desk["movable"])
    assert 0 < report["bytes_stored"] < report["bytes_raw"] / 3
    assert cold(db) == set(desk["movable"])
    assert hot(db) == set(desk["staying"])  # open, recent, reopened, quarantined, waiting
    assert read(db, list(desk["raws"])) == desk["raws"]
    with db.engine.connect() as connection:  # compressed at rest, with its codec
        codecs = connection.execute(sa.text("SELECT DISTINCT codec FROM inbound_raw_archive"))
        assert codecs.scalars().all() == ["zlib"]


def test_dry_run_counts_and_changes_nothing(db, settings, desk, monkeypatch, capsys) -> None:
    before = hot(db)
    report = cli(monkeypatch, capsys, settings, "--dry-run")
    assert report["dry_run"] is True and report["moved"] == 6
    assert report["bytes_raw"] == sum(len(desk["raws"][i]) for i in desk["movable"])
    assert hot(db) == before and cold(db) == set()


def test_limit_is_honoured_and_reruns_finish_then_do_nothing(
        db, settings, desk, monkeypatch, capsys) -> None:
    assert cli(monkeypatch, capsys, settings, "--limit", "4")["moved"] == 4
    assert cold(db) == set(sorted(desk["movable"])[:4])
    assert cli(monkeypatch, capsys, settings)["moved"] == 2
    again = cli(monkeypatch, capsys, settings)
    assert again["moved"] == 0 and again["bytes_raw"] == 0
    assert cold(db) == set(desk["movable"]) and hot(db) == set(desk["staying"])
    assert read(db, list(desk["raws"])) == desk["raws"]


def test_the_setting_and_older_than_choose_the_cutoff(
        db, settings, desk, monkeypatch, capsys) -> None:
    assert cli(monkeypatch, capsys, settings, archive_after_days="365")["moved"] == 0
    report = cli(monkeypatch, capsys, settings, "--older-than", "5", archive_after_days="365")
    # 5 days: the recently closed case, the late reply and the recent caseless mail too
    assert report["older_than_days"] == 5 and report["moved"] == 6 + 2 + 1 + 1
    assert hot(db) == set(desk["groups"]["open"] + desk["groups"]["reopened"]
                          + desk["groups"]["quarantined"] + desk["groups"]["waiting"])


def test_a_crash_between_chunks_loses_and_doubles_nothing(db, desk) -> None:
    def crash_after_two(report: ArchiveReport) -> None:
        if report.chunks == 2:
            raise KeyboardInterrupt  # the process is killed: nothing after this runs

    with pytest.raises(KeyboardInterrupt):
        archive_closed_mail(db, now=NOW, older_than_days=90, chunk_rows=2,
                            after_chunk=crash_after_two)
    assert len(cold(db)) == 4 and hot(db) & cold(db) == set()
    assert hot(db) | cold(db) == set(desk["raws"])  # each mail in exactly one table
    assert read(db, list(desk["raws"])) == desk["raws"]
    rerun = archive_closed_mail(db, now=NOW, older_than_days=90, chunk_rows=2)
    assert rerun.moved == 2 and cold(db) == set(desk["movable"])
    assert read(db, list(desk["raws"])) == desk["raws"]


def test_a_crash_inside_a_chunk_rolls_the_chunk_back(db, desk) -> None:
    deletes = 0

    def fail_second_delete(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal deletes
        if statement.lstrip().upper().startswith("DELETE FROM INBOUND_RAW"):
            deletes += 1
            if deletes == 2:  # the chunk's copies are inserted, its hot rows not yet gone
                raise RuntimeError("disk gone")

    event.listen(db.engine, "before_cursor_execute", fail_second_delete)
    try:
        with pytest.raises(Exception, match="disk gone"):
            archive_closed_mail(db, now=NOW, older_than_days=90, chunk_rows=2)
    finally:
        event.remove(db.engine, "before_cursor_execute", fail_second_delete)
    assert cold(db) == set(sorted(desk["movable"])[:2]) and hot(db) & cold(db) == set()
    assert read(db, list(desk["raws"])) == desk["raws"]
    assert archive_closed_mail(db, now=NOW, older_than_days=90).moved == 4
    assert cold(db) == set(desk["movable"]) and hot(db) & cold(db) == set()
    assert read(db, list(desk["raws"])) == desk["raws"]


@pytest.mark.parametrize(("window_rows", "chunk_rows"), [(3, 2), (3, 5), (1, 1)])
def test_small_windows_and_chunks_move_the_same_mails(db, desk, window_rows, chunk_rows) -> None:
    report = archive_closed_mail(db, now=NOW, older_than_days=90, window_rows=window_rows,
                                 chunk_rows=chunk_rows)
    assert report.moved == 6 and cold(db) == set(desk["movable"])
    assert hot(db) == set(desk["staying"])
    assert read(db, list(desk["raws"])) == desk["raws"]
    dry = archive_closed_mail(db, now=NOW, older_than_days=5, dry_run=True,
                              window_rows=window_rows, chunk_rows=chunk_rows)
    assert dry.moved == 4  # recently closed (2), the late reply, the recent caseless mail


def test_a_chunk_stops_at_its_byte_budget(db, desk) -> None:
    report = archive_closed_mail(db, now=NOW, older_than_days=90, chunk_bytes=1)
    assert report.moved == 6 and report.chunks == 6  # one mail per chunk, never none
    assert read(db, list(desk["raws"])) == desk["raws"]


def test_quarantined_mail_stays_hot_and_showable(
        db, settings, desk, monkeypatch, capsysbinary) -> None:
    archive_closed_mail(db, now=NOW, older_than_days=90)
    (quarantined,) = desk["groups"]["quarantined"]
    environment(monkeypatch, settings)
    capsysbinary.readouterr()
    assert main(["quarantine", "show", str(quarantined), "--raw"]) == 0
    assert capsysbinary.readouterr().out == desk["raws"][quarantined]
    assert quarantined in hot(db)


def test_dropped_mail_is_archived_and_still_read(db) -> None:
    (dropped,) = mails(db, [message(1)], state="dropped")
    assert archive_closed_mail(db, now=NOW, older_than_days=90).moved == 1
    assert cold(db) == {dropped} and read(db, [dropped]) == {dropped: message(1)}


def test_writing_an_archived_mail_keeps_one_copy_hot(db) -> None:
    (mail_id,) = mails(db, [message(1)])
    archive_closed_mail(db, now=NOW, older_than_days=90)
    with db.transaction() as session:
        mail = session.get(InboundMail, mail_id)
        assert mail is not None and mail.raw == message(1)
        mail.raw = message(2)  # only redaction writes raw, on hot mail: still, never two
    assert hot(db) == {mail_id} and cold(db) == set()
    assert read(db, [mail_id]) == {mail_id: message(2)}


def test_a_closed_case_keeps_working_after_its_mail_is_archived(db, settings, rules) -> None:
    opening = opening_mail().as_bytes()
    result = deliver(db, settings, rules, opening)
    number = result.ticket_number
    assert number is not None
    with db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        ticket.status, ticket.closed_at = STATUS_CLOSED, LONG_AGO
        session.execute(update(InboundMail).values(received_at=LONG_AGO))
    assert archive_closed_mail(db, now=NOW, older_than_days=90).moved == 1
    assert hot(db) == set()
    assert case(db, number)["status"] == STATUS_CLOSED
    with db.reader() as session:
        (first,) = session.scalars(select(InboundMail)).all()
        assert first.raw == opening

    reply = opening_mail(subject=f"RE: [Caso {number}] Caída", body="Sigue fallando.").as_bytes()
    assert deliver(db, settings, rules, reply).outcome == "reply:closed-case"
    with db.transaction() as session:  # staff reopen it; the customer writes again
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        ticket.status = STATUS_OPEN
    again = opening_mail(subject=f"RE: [Caso {number}] Caída", body="Ahora no entra nadie.")
    assert deliver(db, settings, rules, again.as_bytes()).ticket_number == number
    # New mail is hot until it is old and its case closed long enough, whatever the clock.
    assert archive_closed_mail(db, now=NOW + timedelta(days=365), older_than_days=90).moved == 0
    assert len(hot(db)) == 2 and cold(db) == {first.id}


def test_downgrading_0007_puts_archived_mail_back(db, settings) -> None:
    (mail_id,) = mails(db, [message(7)])
    archive_closed_mail(db, now=NOW, older_than_days=90)
    assert cold(db) == {mail_id}
    url = settings.resolved_database_url
    db.dispose()
    _downgrade(url, "0006_scale_indexes")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            assert not sa.inspect(connection).has_table("inbound_raw_archive")
            raw = connection.execute(sa.text("SELECT raw FROM inbound_raw")).scalar_one()
    finally:
        engine.dispose()
    assert bytes(raw) == message(7)
    upgrade(url)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_archive_units_verify(tmp_path) -> None:
    for name in ("mailbridge-archive.service", "mailbridge-archive.timer"):
        unit = (REPO / "deploy" / name).read_text()
        unit = unit.replace("/opt/mailbridge/.venv/bin/mailbridge", f"{sys.executable} -m mailbridge")
        (tmp_path / name).write_text(unit)
    service = (tmp_path / "mailbridge-archive.service").read_text()
    assert " archive" in service and "User=mailbridge" in service
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "mailbridge-archive.timer"),
                             str(tmp_path / "mailbridge-archive.service")],
                            capture_output=True, text=True, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "mailbridge-archive" in line and "not executable" not in line]
    assert problems == [], result.stderr


@pytest.mark.parametrize("command", [["archive"], ["sweep"], ["escalation", "sweep"]])
def test_a_bad_now_is_refused_before_anything_moves(
        db, settings, desk, monkeypatch, capsys, command: list[str]) -> None:
    """The timed commands share one `--now` reader: not ISO 8601 is exit 64 and a line
    on stderr, with nothing archived or swept."""
    environment(monkeypatch, settings)
    before = hot(db)
    assert main([*command, "--now", "mañana"]) == 64
    assert "is not an ISO 8601 time" in capsys.readouterr().err
    assert hot(db) == before
