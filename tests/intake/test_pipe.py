"""`mailbridge ingest`: the pipe for MTAs and replays, with sysexits codes."""

from __future__ import annotations

from tests.support.daemon import opening_mail


def test_ingest_from_stdin_makes_a_case(make_daemon) -> None:
    daemon = make_daemon()
    raw = opening_mail(to="soporte-b@mesa.example").as_bytes()
    result = daemon.cli("ingest", "-", "--json", input=raw)
    assert result.returncode == 0
    ticket = daemon.cli_json("tickets", "show", "1")
    assert ticket["priority"] == "B"
    assert ticket["tenant_id"] == "TEN-1001"
    # The acknowledgement waits in the outbox for the daemon's sender.
    assert ticket["outbound"][0]["kind"] == "ack"
    assert ticket["outbound"][0]["state"] == "pending"


def test_ingest_from_file_with_envelope_recipient(make_daemon, tmp_path) -> None:
    daemon = make_daemon()
    path = tmp_path / "mail.eml"
    path.write_bytes(opening_mail(to="lista@compensar.example").as_bytes())
    daemon.cli("ingest", str(path), "--recipient", "soporte-c@mesa.example")
    assert daemon.cli_json("tickets", "show", "1")["priority"] == "C"


def test_ingest_empty_input_is_65(make_daemon) -> None:
    daemon = make_daemon()
    result = daemon.cli("ingest", "-", input=b"", check=False)
    assert result.returncode == 65
    assert b"empty input" in result.stderr


def test_ingest_missing_file_is_66(make_daemon) -> None:
    daemon = make_daemon()
    result = daemon.cli("ingest", "/nonexistent/mail.eml", check=False)
    assert result.returncode == 66


def test_ingest_storage_failure_is_75(make_daemon) -> None:
    daemon = make_daemon()
    daemon.break_spool_inserts()
    result = daemon.cli("ingest", "-", input=opening_mail().as_bytes(), check=False)
    assert result.returncode == 75
    assert b"could not store" in result.stderr


def test_same_message_twice_makes_one_case(make_daemon) -> None:
    daemon = make_daemon()
    raw = opening_mail(message_id="<dos-veces@compensar.example>").as_bytes()
    daemon.cli("ingest", "-", input=raw)
    daemon.cli("ingest", "-", input=raw)
    assert len(daemon.cli_json("tickets", "list")) == 1


def test_ingest_into_an_unmigrated_database_is_75(tmp_path) -> None:
    from tests.support.daemon import Daemon

    daemon = Daemon(tmp_path / "new")
    daemon.data_dir.mkdir(parents=True)
    result = daemon.cli("ingest", "-", input=opening_mail().as_bytes(), check=False)
    assert result.returncode == 75  # the MTA keeps the mail and retries
    assert b"mailbridge db upgrade" in result.stderr
    listed = daemon.cli("tickets", "list", check=False)
    assert listed.returncode == 78 and b"mailbridge db upgrade" in listed.stderr
