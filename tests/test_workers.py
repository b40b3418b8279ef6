"""Several `mailbridge run` processes on one PostgreSQL database share the work (issue 9)."""

from __future__ import annotations

import collections
import signal
import smtplib

import pytest

from tests.conftest import BACKEND
from tests.support.daemon import opening_mail

pytestmark = pytest.mark.skipif(
    BACKEND != "postgresql", reason="workers share a database on PostgreSQL only "
    "(run with MAILBRIDGE_TEST_BACKEND=postgresql; `make test` does)",
)


def test_two_daemons_one_killed_every_mail_one_case_one_ack(make_daemon, sink) -> None:
    first = make_daemon("w1", relay_port=sink.port, shared_db="shared").start()
    second = make_daemon("w2", relay_port=sink.port, shared_db="shared").start()
    accepted: list[str] = []
    for n in range(60):
        daemon = first if n % 2 == 0 else second
        if n == 30:
            first.proc.send_signal(signal.SIGKILL)  # midway, with work in flight
            first.proc.wait(10)
        if daemon is first and n >= 30:
            daemon = second
        mid = f"<worker-{n}@compensar.example>"
        try:
            daemon.send(opening_mail(subject=f"TEN-1001 Incidente número {n}", message_id=mid))
        except (smtplib.SMTPException, OSError):
            continue  # not acknowledged: the sender would retry; nothing is owed
        accepted.append(mid)
    second.settle(timeout=60)
    sink.wait_for(len(accepted), timeout=60)
    tickets = second.query("SELECT count(*) FROM tickets")[0][0]
    assert tickets == len(accepted)
    by_parent = collections.Counter(r.message["In-Reply-To"] for r in sink.received)
    assert set(by_parent) == set(accepted)
    assert [mid for mid, n in by_parent.items() if n > 1] == []
    numbers = [r[0] for r in second.query("SELECT number FROM tickets ORDER BY number")]
    assert numbers == list(range(1, len(accepted) + 1))  # no number given twice or skipped
    assert second.stop() == 0
