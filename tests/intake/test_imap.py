"""IMAP intake against a real Dovecot: store once, settle after commit, survive crashes."""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import CapabilityError, LoginError
from pydantic import ValidationError
from sqlalchemy import func, select, update

from mailbridge.db import Database
from mailbridge.intake.imap import (
    SERVER_FLAGGED,
    SERVER_MOVED,
    SERVER_OVERSIZE,
    SERVER_STORED,
    ImapCursor,
    ImapMessage,
    ImapPoller,
    ImapPollers,
    envelope_from_headers,
)
from mailbridge.intake.imap_config import (
    CredentialError,
    ImapAccount,
    ImapConfigError,
    load_imap_accounts,
)
from mailbridge.spool import STATE_DONE, STATE_QUARANTINED, InboundMail, release_for_replay
from tests.support.dovecot import DovecotServer, free_port, skip_unless_dovecot

from .conftest import QUEUE_ADDRESS

MakeAccount = Callable[..., ImapAccount]


def mail(n: int, *, extra: str = "", body: str = "Hola, el correo no funciona.") -> bytes:
    return (
        f"Return-Path: <cliente{n}@tenant.example>\r\n"
        f"{extra}"
        f"From: Cliente {n} <cliente{n}@tenant.example>\r\n"
        f"To: {QUEUE_ADDRESS}\r\n"
        f"Subject: TEN-1001 Caida del servicio {n}\r\n"
        f"Message-ID: <m{n}@tenant.example>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def inbound_rows(db: Database) -> list[InboundMail]:
    with db.reader() as session:
        return list(session.scalars(select(InboundMail).order_by(InboundMail.id)))


def inbound_count(db: Database) -> int:
    with db.reader() as session:
        return int(session.scalar(select(func.count(InboundMail.id))) or 0)


def raw_of(db: Database, inbound_id: int) -> bytes:
    with db.reader() as session:
        return bytes(session.scalar(select(InboundMail.raw).where(InboundMail.id == inbound_id)))


def message_ids(db: Database) -> list[str]:
    return sorted(str(r.message_id) for r in imap_rows(db) if r.server_state != SERVER_OVERSIZE)


def imap_rows(db: Database) -> list[ImapMessage]:
    with db.reader() as session:
        return list(session.scalars(select(ImapMessage).order_by(ImapMessage.id)))


def finish(db: Database, state: str, ids: list[int] | None = None) -> None:
    """What the pipeline does when it is done with a mail."""
    with db.transaction() as session:
        stmt = update(InboundMail).values(state=state)
        if ids is not None:
            stmt = stmt.where(InboundMail.id.in_(ids))
        session.execute(stmt)


# -- storing -----------------------------------------------------------------------------


def test_append_then_poll_stores_exactly_one_row(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    raw = mail(1)
    uid = imap_server.append(raw)
    woke: list[int] = []
    poller = ImapPoller(make_account(), imap_db, on_stored=lambda: woke.append(1))

    result = poller.poll_once()

    assert result.stored == 1 and woke == [1]
    [row] = inbound_rows(imap_db)
    assert row.channel == "imap"
    assert row.rcpt_tos == [QUEUE_ADDRESS]  # no Delivered-To: the account's address
    assert row.mail_from == "cliente1@tenant.example"
    assert row.source == f"mesa-a/{imap_server.uidvalidity()}/{uid}"
    assert row.state == "new"
    assert raw_of(imap_db, row.id) == raw
    [link] = imap_rows(imap_db)
    assert (link.uid, link.inbound_id, link.server_state) == (uid, row.id, SERVER_STORED)
    assert link.message_id == "<m1@tenant.example>"
    # BODY.PEEK: the message is not marked read, and it stays until processed
    assert b"\\Seen" not in imap_server.flags()[uid]
    assert imap_server.uids() == [uid]

    again = poller.poll_once()
    assert again.stored == 0 and again.duplicates == 0
    assert inbound_count(imap_db) == 1
    assert poller.state.last_ok_at is not None and poller.state.last_error is None


def test_delivered_to_is_the_envelope_recipient(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    imap_server.append(mail(2, extra="Delivered-To: Soporte-B@mesa.example\r\n"))
    imap_server.append(mail(3, extra="X-Original-To: soporte-c@mesa.example\r\n"))
    ImapPoller(make_account(), imap_db).poll_once()
    first, second = inbound_rows(imap_db)
    assert first.rcpt_tos == ["soporte-b@mesa.example"]
    assert second.rcpt_tos == ["soporte-c@mesa.example"]


def test_envelope_from_headers_without_return_path() -> None:
    raw = b"From: a@b.example\r\nDelivered-To: x@y\r\nDelivered-To: z@y\r\n\r\nbody\r\n"
    assert envelope_from_headers(raw, "q@y") == ("", ["x@y", "z@y"], None)


def test_initial_unseen_skips_old_read_mail_but_never_later_read_mail(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    imap_server.append(mail(1), flags=("\\Seen",), msg_time=datetime(2020, 1, 2, 3, 4, 5))
    imap_server.append(mail(2))
    poller = ImapPoller(make_account(initial_sync="unseen"), imap_db)
    assert poller.poll_once().stored == 1
    # Someone reads a new message before we poll: the position is the UID, not \Seen.
    imap_server.append(mail(3), flags=("\\Seen",))
    assert poller.poll_once().stored == 1
    assert message_ids(imap_db) == ["<m2@tenant.example>", "<m3@tenant.example>"]


def test_initial_since_date(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    imap_server.append(mail(1), msg_time=datetime(2020, 1, 2, 3, 4, 5))
    imap_server.append(mail(2), msg_time=datetime(2024, 5, 6, 7, 8, 9))
    ImapPoller(make_account(initial_sync="since:2024-01-01"), imap_db).poll_once()
    assert message_ids(imap_db) == ["<m2@tenant.example>"]


def test_batches_commit_with_the_cursor(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    for n in range(7):
        imap_server.append(mail(n))
    commits: list[int] = []
    poller = ImapPoller(make_account(batch_size=3), imap_db,
                        on_stored=lambda: commits.append(inbound_count(imap_db)))
    assert poller.poll_once().stored == 7
    assert commits == [3, 6, 7]
    with imap_db.reader() as session:
        cursor = session.get(ImapCursor, "mesa-a")
        assert cursor is not None and cursor.last_uid == 7 and cursor.baseline_uid is None


# -- settling ----------------------------------------------------------------------------


def test_done_mail_is_moved_to_the_processed_folder(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    raw = mail(1)
    imap_server.append(raw)
    imap_server.append(mail(2))
    poller = ImapPoller(make_account(), imap_db)
    poller.poll_once()
    first, second = inbound_rows(imap_db)
    finish(imap_db, STATE_DONE, [first.id])

    result = poller.poll_once()

    assert result.moved == 1 and result.stored == 0
    assert imap_server.uids() == [2]
    assert list(imap_server.bodies("Procesados").values()) == [raw]
    states = {r.inbound_id: r.server_state for r in imap_rows(imap_db)}
    assert states == {first.id: SERVER_MOVED, second.id: SERVER_STORED}
    assert poller.poll_once().moved == 0  # settled once


def test_quarantined_mail_is_flagged_and_left_then_moved_after_replay(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    uid = imap_server.append(mail(1))
    account = make_account()
    poller = ImapPoller(account, imap_db)
    poller.poll_once()
    [row] = inbound_rows(imap_db)
    finish(imap_db, STATE_QUARANTINED)

    assert poller.poll_once().flagged == 1
    assert imap_server.uids() == [uid]
    assert account.quarantine_flag.encode() in imap_server.flags()[uid]
    assert imap_rows(imap_db)[0].server_state == SERVER_FLAGGED
    assert poller.poll_once().flagged == 0

    assert release_for_replay(imap_db, row.id)
    finish(imap_db, STATE_DONE)
    assert poller.poll_once().moved == 1
    assert imap_server.uids() == []
    [(_moved_uid, flags)] = imap_server.flags("Procesados").items()
    assert account.quarantine_flag.encode() not in flags


def test_move_without_the_move_capability(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    uid = imap_server.append(mail(1))
    imap_server.append(mail(2))
    poller = ImapPoller(make_account(processed_folder="Hecho"), imap_db)
    with poller._session() as client:
        client.select_folder("INBOX")
        poller._move(client, [uid], use_move=False)  # COPY + \Deleted + UID EXPUNGE
    assert imap_server.uids() == [2]
    assert list(imap_server.bodies("Hecho").values()) == [mail(1)]


def test_crash_after_move_before_marking_is_harmless(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    uid = imap_server.append(mail(1))
    poller = ImapPoller(make_account(), imap_db)
    poller.poll_once()
    finish(imap_db, STATE_DONE)
    with imap_server.client() as client:  # the move happened, the mark did not
        client.create_folder("Procesados")
        client.select_folder("INBOX")
        client.move([uid], "Procesados")

    assert poller.poll_once().moved == 1
    assert imap_rows(imap_db)[0].server_state == SERVER_MOVED
    assert len(imap_server.uids("Procesados")) == 1
    assert inbound_count(imap_db) == 1


def test_oversize_mail_is_flagged_not_stored_and_not_retried(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    big = imap_server.append(mail(1, body="x" * 5000))
    small = imap_server.append(mail(2))
    account = make_account(max_message_size=2000)
    poller = ImapPoller(account, imap_db)
    result = poller.poll_once()
    assert (result.stored, result.oversize) == (1, 1)
    assert account.quarantine_flag.encode() in imap_server.flags()[big]
    states = {r.uid: r.server_state for r in imap_rows(imap_db)}
    assert states == {big: SERVER_OVERSIZE, small: SERVER_STORED}
    assert poller.poll_once().oversize == 0


# -- restarts and crashes ----------------------------------------------------------------


def test_restart_mid_batch_neither_skips_nor_repeats(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    for n in range(1, 6):
        imap_server.append(mail(n))
    account = make_account(batch_size=2)
    # The server dies right after the first batch's commit: the poll breaks mid-way.
    crashing = ImapPoller(account, imap_db, on_stored=imap_server.kill)
    with pytest.raises(Exception):  # noqa: B017 - whatever the dead socket raises
        crashing.poll_once()
    assert inbound_count(imap_db) == 2

    imap_server.start()
    ImapPoller(account, imap_db).poll_once()  # a new process, the same database

    rows = inbound_rows(imap_db)
    assert sorted(r.source for r in rows) == [
        f"mesa-a/{imap_server.uidvalidity()}/{uid}" for uid in range(1, 6)
    ]
    assert sorted(r.sha256 for r in rows) == sorted(
        hashlib.sha256(mail(n)).hexdigest() for n in range(1, 6)
    )


def test_uidvalidity_change_makes_no_duplicates(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    imap_server.append(mail(0), flags=("\\Seen",), msg_time=datetime(2020, 1, 1))  # old, read
    imap_server.append(mail(1))
    imap_server.append(mail(2))
    poller = ImapPoller(make_account(initial_sync="unseen"), imap_db)
    assert poller.poll_once().stored == 2
    imap_server.append(mail(3), flags=("\\Seen",))  # arrives and is read while we are away
    old = imap_server.uidvalidity()

    new = imap_server.reset_uidvalidity()
    result = poller.poll_once()

    assert new != old
    assert result.uidvalidity_changed
    assert (result.stored, result.duplicates) == (1, 2)
    assert inbound_count(imap_db) == 3  # the old read mail was never ours
    assert poller.poll_once().stored == 0
    # The renumbered messages settle under their new UIDs.
    finish(imap_db, STATE_DONE)
    assert poller.poll_once().moved == 3
    assert imap_server.uids() == [1]  # only the old read mail is left
    assert {r.server_state for r in imap_rows(imap_db) if r.uidvalidity == new} == {SERVER_MOVED}


def test_thread_reconnects_after_the_server_is_killed(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    stored = threading.Event()
    poller = ImapPoller(make_account(poll_interval=0.3), imap_db,
                        on_stored=stored.set, backoff_base=0.2)
    poller.start()
    try:
        imap_server.append(mail(1))
        assert stored.wait(10)
        assert wait_until(lambda: poller.state.connected)

        imap_server.kill()
        assert wait_until(lambda: poller.state.last_error is not None, 10)
        assert not poller.state.connected
        imap_server.start()
        stored.clear()
        imap_server.append(mail(2))

        assert stored.wait(20), poller.state
        assert wait_until(lambda: inbound_count(imap_db) == 2)
        assert wait_until(lambda: poller.state.connected and poller.state.last_error is None)
    finally:
        assert poller.stop(10)
    assert not poller.state.running


def test_idle_wakes_up_on_append(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    stored = threading.Event()
    # A long poll interval: only IDLE can explain a quick pick-up.
    poller = ImapPoller(make_account(idle=True, poll_interval=300), imap_db, on_stored=stored.set)
    poller.start()
    try:
        assert wait_until(lambda: poller.state.idling, 10)
        started = time.monotonic()
        imap_server.append(mail(1))
        assert stored.wait(10)
        latency = time.monotonic() - started
        print(f"\nIMAP IDLE: APPEND → stored in {latency * 1000:.0f} ms")
        assert inbound_count(imap_db) == 1
        # and it goes back to IDLE
        assert wait_until(lambda: poller.state.idling, 10)
        stop_started = time.monotonic()
    finally:
        assert poller.stop(10)
    print(f"IMAP IDLE: stop() took {(time.monotonic() - stop_started) * 1000:.0f} ms")


def test_polling_when_idle_is_off(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    stored = threading.Event()
    poller = ImapPoller(make_account(idle=False, poll_interval=0.3), imap_db, on_stored=stored.set)
    poller.start()
    try:
        assert wait_until(lambda: poller.state.last_ok_at is not None)
        imap_server.append(mail(1))
        assert stored.wait(10)
        assert not poller.state.idling
    finally:
        assert poller.stop(10)


def test_wake_settles_while_idling(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    stored = threading.Event()
    poller = ImapPoller(make_account(idle=True, poll_interval=300), imap_db, on_stored=stored.set)
    poller.start()
    try:
        imap_server.append(mail(1))
        assert stored.wait(10)
        finish(imap_db, STATE_DONE)
        poller.wake()  # what the pipeline may call after a commit
        assert wait_until(lambda: imap_rows(imap_db)[0].server_state == SERVER_MOVED, 10)
        assert imap_server.uids() == []
    finally:
        assert poller.stop(10)


def test_one_failing_account_does_not_stop_the_others(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    stored = threading.Event()
    dead = make_account(name="muerta", port=free_port(), queue_address="soporte-b@mesa.example")
    pollers = ImapPollers([dead, make_account(poll_interval=0.3)], imap_db, on_stored=stored.set)
    for poller in pollers.pollers:
        poller.backoff_base = 0.1
    pollers.start()
    try:
        imap_server.append(mail(1))
        assert stored.wait(10)
        assert wait_until(lambda: pollers.readiness()["muerta"]["last_error"] is not None)
        ready = pollers.readiness()
        assert ready["mesa-a"]["ok"] and not ready["muerta"]["ok"]
    finally:
        assert pollers.stop(10)


def test_a_20_mb_message_is_stored_intact(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    payload = line * (20 * 1024 * 1024 // len(line) + 1)
    raw = (
        b"From: cliente@tenant.example\r\nTo: soporte-a@mesa.example\r\n"
        b"Subject: TEN-1001 logs\r\nMessage-ID: <big@tenant.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nAdjunto los logs.\r\n--b\r\n"
        b'Content-Type: application/octet-stream; name="logs.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--b--\r\n"
    )
    assert len(raw) > 20 * 1024 * 1024
    imap_server.append(raw)
    digest = hashlib.sha256(raw).hexdigest()
    poller = ImapPoller(make_account(), imap_db)
    tracemalloc.start()
    try:
        started = time.monotonic()
        assert poller.poll_once().stored == 1
        elapsed = time.monotonic() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\nIMAP 20 MB: {len(raw) / 2**20:.1f} MiB stored in {elapsed:.2f}s, "
        f"Python peak {peak / 2**20:.0f} MiB ({peak / len(raw):.1f}× the message)"
    )
    [row] = inbound_rows(imap_db)
    assert row.size == len(raw) and row.sha256 == digest
    assert hashlib.sha256(raw_of(imap_db, row.id)).hexdigest() == digest


# -- security and credentials ------------------------------------------------------------


@pytest.fixture
def tls_server() -> Iterator[DovecotServer]:
    skip_unless_dovecot()
    with DovecotServer(tls=True) as server:
        yield server


def _tls_account(server: DovecotServer, **overrides: Any) -> ImapAccount:
    values: dict[str, Any] = {
        "name": "tls", "host": server.host, "port": server.tls_port, "security": "tls",
        "username": server.user, "password": server.password, "queue_address": QUEUE_ADDRESS,
        "initial_sync": "all",
    }
    values.update(overrides)
    return ImapAccount(**values)


def test_tls_and_starttls_are_verified(tls_server: DovecotServer, imap_db: Database) -> None:
    assert tls_server.tls_files is not None
    ca = tls_server.tls_files.cert
    tls_server.append(mail(1))
    assert ImapPoller(_tls_account(tls_server, ca_file=ca), imap_db).poll_once().stored == 1
    starttls = _tls_account(tls_server, name="st", security="starttls", port=tls_server.port,
                            ca_file=ca)
    assert ImapPoller(starttls, imap_db).poll_once().duplicates == 1

    untrusted = ImapPoller(_tls_account(tls_server, name="nt"), imap_db)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusted.poll_once()
    untrusted_starttls = _tls_account(tls_server, name="ns", security="starttls",
                                      port=tls_server.port)
    with pytest.raises(ssl.SSLCertVerificationError):
        ImapPoller(untrusted_starttls, imap_db).poll_once()


def test_starttls_never_falls_back_to_plaintext(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    imap_server.append(mail(1))
    poller = ImapPoller(make_account(security="starttls", host="127.0.0.1"), imap_db)
    with pytest.raises(CapabilityError):
        poller.poll_once()  # the plain server offers no STARTTLS
    assert inbound_count(imap_db) == 0


def test_wrong_password_is_an_auth_failure_and_never_logged(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "no-es-la-clave-9d1c"
    poller = ImapPoller(make_account(password=secret), imap_db, backoff_base=0.1)
    with caplog.at_level(logging.DEBUG), pytest.raises(LoginError):
        poller.poll_once()
    assert poller.state.auth_failed
    poller.start()
    assert wait_until(lambda: poller.state.last_error is not None)
    assert poller.stop(10)
    assert secret not in repr(poller.account) and secret not in str(poller.state)
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in json.dumps(record.__dict__, default=str)


def test_password_file_and_env(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    imap_server.append(mail(1))
    secret_file = tmp_path / "imap.pass"
    secret_file.write_text(imap_server.password + "\n")
    account = make_account(password=None, password_file=secret_file)
    assert ImapPoller(account, imap_db).poll_once().stored == 1
    monkeypatch.setenv("MESA_IMAP_PASS", imap_server.password)
    account = make_account(name="env", password=None, password_env="MESA_IMAP_PASS")
    assert ImapPoller(account, imap_db).poll_once().duplicates == 1
    monkeypatch.delenv("MESA_IMAP_PASS")
    with pytest.raises(CredentialError, match="MESA_IMAP_PASS"):
        ImapPoller(account, imap_db).poll_once()


def test_failing_oauth_token_command_is_alerted_at_once(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    script = tmp_path / "token.sh"
    script.write_text("#!/bin/sh\necho 'ya29.secret-token-on-stdout'\necho 'refresh denied' >&2\nexit 3\n")
    script.chmod(0o755)
    account = make_account(password=None, xoauth2_token_command=[str(script)])
    poller = ImapPoller(account, imap_db)
    with caplog.at_level(logging.ERROR), pytest.raises(CredentialError, match="refresh denied"):
        poller.poll_once()
    assert poller.state.auth_failed and not poller.state.as_dict()["ok"]
    assert any("oauth token refresh failed" in r.getMessage() for r in caplog.records)
    assert all("ya29" not in json.dumps(r.__dict__, default=str) for r in caplog.records)


# -- configuration -----------------------------------------------------------------------

BASE = {
    "name": "mesa-a", "host": "imap.mesa.example", "username": "soporte-a@mesa.example",
    "password": "s3creta", "queue_address": "soporte-a@mesa.example",
}


def test_account_defaults_and_secret_hiding() -> None:
    account = ImapAccount(**BASE)
    assert account.effective_port == 993 and account.security == "tls"
    assert (account.folder, account.processed_folder) == ("INBOX", "Procesados")
    assert account.quarantine_flag == "$MailbridgeQuarantine"
    assert (account.poll_interval, account.idle, account.idle_renew) == (60, True, 1500)
    assert (account.batch_size, account.initial_sync) == (50, "unseen")
    assert "s3creta" not in repr(account) and "s3creta" not in str(account.model_dump())
    oauth = ImapAccount(**{**BASE, "password": None, "xoauth2_token_command": "tok --secret x"})
    assert "--secret" not in repr(oauth)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"security": "none"}, "loopback"),
        ({"password": None}, "exactly one"),
        ({"password_env": "X"}, "exactly one"),
        ({"idle_renew": 30 * 60}, "less than or equal"),
        ({"initial_sync": "since:ayer"}, "since:YYYY-MM-DD"),
        ({"quarantine_flag": "Mi bandera"}, "keyword"),
        ({"processed_folder": "INBOX"}, "differ"),
        ({"color": "rojo"}, "Extra inputs"),
    ],
)
def test_account_validation(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ImapAccount(**{**BASE, **change})


def test_none_security_is_fine_on_loopback() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        assert ImapAccount(**{**BASE, "host": host, "security": "none"}).effective_port == 143


def test_load_accounts_from_env_json() -> None:
    env = {"MAILBRIDGE_IMAP_ACCOUNTS": json.dumps([BASE, {**BASE, "name": "mesa-b"}])}
    accounts = load_imap_accounts(environ=env)
    assert [a.name for a in accounts] == ["mesa-a", "mesa-b"]
    assert load_imap_accounts(environ={}) == []
    assert load_imap_accounts(json.dumps([BASE]))[0].name == "mesa-a"


def test_load_accounts_from_yaml_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "imap.yaml"
    path.write_text(
        "accounts:\n"
        "  - name: mesa-a\n    host: imap.mesa.example\n    username: u\n"
        "    password_file: /run/secrets/imap\n    queue_address: soporte-a@mesa.example\n"
        "  - name: mesa-a\n    host: imap.mesa.example\n    username: u\n"
        "    password: x\n    queue_address: soporte-b@mesa.example\n"
        "    batch_size: 0\n"
    )
    with pytest.raises(ImapConfigError) as info:
        load_imap_accounts(environ={"MAILBRIDGE_IMAP_ACCOUNTS_FILE": str(path)})
    [problem] = info.value.problems
    assert (problem.line, problem.key) == (12, "accounts.1.batch_size")
    path.write_text(path.read_text().replace("batch_size: 0", "batch_size: 10"))
    with pytest.raises(ImapConfigError, match="duplicate account name"):
        load_imap_accounts(path=path)
    path.write_text(path.read_text().replace("- name: mesa-a\n    host: imap.mesa.example\n"
                                             "    username: u\n    password: x",
                                             "- name: mesa-b\n    host: imap.mesa.example\n"
                                             "    username: u\n    password: x"))
    accounts = load_imap_accounts(path=path)
    assert [a.batch_size for a in accounts] == [50, 10]
    assert accounts[0].password_file == Path("/run/secrets/imap")


def test_load_accounts_errors_name_their_place(tmp_path: Path) -> None:
    with pytest.raises(ImapConfigError, match=r"MAILBRIDGE_IMAP_ACCOUNTS:1: \(syntax\)"):
        load_imap_accounts("[{")
    with pytest.raises(ImapConfigError, match=r"MAILBRIDGE_IMAP_ACCOUNTS: 0\.port"):
        load_imap_accounts(json.dumps([{**BASE, "port": 0}]))
    with pytest.raises(ImapConfigError, match="not both"):
        load_imap_accounts("[]", path=tmp_path / "x.yaml")
    with pytest.raises(ImapConfigError, match=r"x\.yaml"):
        load_imap_accounts(path=tmp_path / "x.yaml")



def test_a_refused_move_does_not_stop_intake(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    imap_server.append(mail(1))
    poller = ImapPoller(make_account(processed_folder="Procesados-" + "x" * 300), imap_db)
    poller.poll_once()
    finish(imap_db, STATE_DONE)
    imap_server.append(mail(2))

    result = poller.poll_once()  # the server refuses the folder: logged, not raised

    assert (result.stored, result.moved) == (1, 0)
    assert poller.state.last_error is not None and "could not move" in poller.state.last_error
    assert imap_rows(imap_db)[0].server_state == SERVER_STORED  # retried next cycle


def test_idle_is_renewed_with_a_sync(
    imap_server: DovecotServer, imap_db: Database, make_account: MakeAccount
) -> None:
    poller = ImapPoller(make_account(idle=True, idle_renew=1.0, poll_interval=300), imap_db)
    poller.start()
    try:
        assert wait_until(lambda: poller.state.idling, 10)
        first = poller.state.last_ok_at
        assert first is not None
        # each renewal ends the IDLE, runs a cycle and idles again
        assert wait_until(lambda: (poller.state.last_ok_at or first) > first, 10)
        assert wait_until(lambda: poller.state.idling, 10)
    finally:
        assert poller.stop(10)
