"""Mail bombs and malformed MIME through the real daemon: stored or quarantined, memory bounded.

Big inputs are built at test time (tests/hostile/bombs.py); the small hostile fixtures are
files in tests/messages/hostile/. Every mail goes in over SMTP, except the 10 MB single
line, which SMTP refuses (500, RFC 5321 line limit) and which comes in through
`mailbridge ingest --store-only` (as a pipe or IMAP would bring it) for the daemon to process.
The daemon's peak memory is read from /proc/<pid>/status (VmHWM).
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile import bombs
from tests.hostile.helpers import hostile_rules, report, vm_hwm_kib
from tests.support.daemon import Daemon, opening_mail
from tests.support.sink import SmtpSink

# Generous on purpose: it catches a bomb that is expanded or copied without bound
# (a 2 GiB zip, 256 MiB gzip), not a few copies of a 10 MB mail.
PEAK_LIMIT_MIB = 700

RCPT = "soporte-a@mesa.example"
SENDER = "ana@compensar.example"


@pytest.fixture(scope="module")
def bomb_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, SmtpSink]]:
    root = tmp_path_factory.mktemp("bombs")
    sink = SmtpSink().start()
    daemon = Daemon(root / "d", {
        "MAILBRIDGE_RELAY": f"127.0.0.1:{sink.port}",
        "MAILBRIDGE_RULES": str(hostile_rules(root / "rules")),
    })
    daemon.upgrade()
    daemon.start()
    yield daemon, sink
    daemon.stop()
    sink.stop()


def _wait_processed(daemon: Daemon, inbound_ids: set[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = daemon.query("SELECT id, state FROM inbound")
        if all(state != "new" for i, state in rows if i in inbound_ids) and \
                inbound_ids <= {i for i, _ in rows}:
            return
        time.sleep(0.1)
    raise AssertionError(f"not processed in {timeout}s: {daemon.log_tail()}")


def _last_id(daemon: Daemon) -> int:
    return int(daemon.query("SELECT coalesce(max(id), 0) FROM inbound")[0][0])


def test_mail_bombs_are_stored_or_quarantined_with_bounded_memory(bomb_site) -> None:
    daemon, sink = bomb_site
    assert daemon.proc is not None
    pid = daemon.proc.pid
    daemon.send(opening_mail(subject="TEN-1001 Calentamiento"))
    sink.wait_for(1)
    baseline = vm_hwm_kib(pid)

    cases: dict[str, bytes] = {name: build() for name, build in bombs.BIG.items()}
    cases.update({name: (bombs.HOSTILE_DIR / name).read_bytes() for name in bombs.SMALL})
    results = []
    for name, raw in cases.items():
        before = _last_id(daemon)
        started = time.monotonic()
        try:
            with daemon.smtp() as client:
                client.sendmail(SENDER, [RCPT], raw)
            answer = "250"
        except smtplib.SMTPDataError as exc:
            answer = f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
        if answer != "250":
            # Only the 10 MB line may be refused, and only for its line length.
            assert name == "single_line_10MB" and answer.startswith("500"), (name, answer)
            daemon.cli("ingest", "-", "--recipient", RCPT, "--sender", SENDER, "--store-only",
                       input=raw)
            answer += "; then `mailbridge ingest --store-only`: stored"
        (inbound_id,) = [i for (i,) in daemon.query("SELECT id FROM inbound WHERE id > :b",
                                                     b=before)]
        _wait_processed(daemon, {inbound_id})
        seconds = time.monotonic() - started
        state, outcome, stage, error, ticket_id = daemon.query(
            "SELECT state, outcome, stage, error, ticket_id FROM inbound WHERE id = :i",
            i=inbound_id)[0]
        assert state in ("done", "quarantined"), (name, state)
        reason = outcome if state == "done" else f"{stage}: {(error or '').splitlines()[-1]}"
        assert reason, name
        assert daemon.proc.poll() is None, f"the daemon died on {name}"
        results.append({"mail": name, "bytes": len(raw), "smtp": answer[:60], "state": state,
                        "reason": reason[:120], "case": ticket_id,
                        "seconds": round(seconds, 2), "peak_mib": vm_hwm_kib(pid) // 1024})

    peak = vm_hwm_kib(pid)
    # Still serving: a normal mail after the bombs is answered.
    daemon.send(opening_mail(subject="TEN-1001 Después de las bombas"))
    daemon.settle(timeout=60)
    report("mail_bombs", baseline_mib=baseline // 1024, peak_mib=peak // 1024, results=results)
    assert peak // 1024 < PEAK_LIMIT_MIB, f"peak {peak // 1024} MiB"

    # Every answer that went out has clean, ASCII-only headers (8-bit and control
    # characters of the bombs' subjects and names are encoded or gone).
    for received in sink.received:
        head = received.raw.split(b"\r\n\r\n", 1)[0]
        assert head.isascii() and b"\x00" not in head
        assert all(line[:1] in b" \t" or b":" in line for line in head.split(b"\r\n"))

    by_name = {r["mail"]: r for r in results}
    assert by_name["nested_multipart_1000"]["case"] is not None
    nested_subject = daemon.query("SELECT subject FROM tickets WHERE id = :t",
                                  t=by_name["nested_multipart_1000"]["case"])[0][0]
    assert nested_subject == "TEN-1001 Anidado 1000 niveles"  # the headers survive the bomb
    # Attachments are evidence as they came: the zip bomb is kept compressed, never expanded.
    bomb_case = by_name["zip_gzip_png_bombs"]["case"]
    assert bomb_case is not None
    sizes = dict(daemon.query("SELECT filename, size FROM attachments WHERE ticket_id = :t",
                              t=bomb_case))
    assert set(sizes) == {"evidencias.zip", "registro.log.gz", "captura.png"}
    assert max(sizes.values()) < 3 * 1024 * 1024


def test_hostile_attachment_names_stay_in_the_evidence_store(bomb_site) -> None:
    daemon, _sink = bomb_site
    rows = daemon.query(
        "SELECT a.filename, a.sha256, a.stored FROM attachments a JOIN ticket_messages m "
        "ON a.message_pk = m.id WHERE m.message_id = '<bomb-names@compensar.example>'")
    if not rows:  # the bombs test has not run in this module run: deliver it now
        with daemon.smtp() as client:
            client.sendmail(SENDER, [RCPT], (bombs.HOSTILE_DIR
                                             / "attachment_names_traversal.eml").read_bytes())
        daemon.settle()
        rows = daemon.query(
            "SELECT a.filename, a.sha256, a.stored FROM attachments a JOIN ticket_messages m "
            "ON a.message_pk = m.id WHERE m.message_id = '<bomb-names@compensar.example>'")
    names = [name for name, _, _ in rows]
    assert len(names) == 10
    for name in names:
        assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
        assert all(ch.isprintable() for ch in name), repr(name)
        assert "\u202e" not in name
        assert len(name.encode()) <= 255
    evidence = daemon.data_dir / "evidence"
    for _, digest, stored in rows:
        assert stored and (evidence / digest[:2] / digest[2:4] / digest).is_file()
    # Nothing was written anywhere but the evidence store.
    assert not Path("/etc/cron.d/mailbridge").exists()
    outside = [p for p in daemon.data_dir.rglob("*") if p.is_file()
               and evidence not in p.parents and p.parent != daemon.data_dir
               and p.parent.name not in ("run", "new", "tmp", "cur")]
    assert outside == [], outside
    report("attachment_names", stored_names=names)
