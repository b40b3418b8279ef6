"""The relay connection is kept between sending passes (`relay_keep_open`), as Postfix
caches its connections: a TLS handshake and a login per acknowledgement cost more than
the mail. A connection the relay closed meanwhile is replaced without a failed attempt."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mailbridge.outbound.outbox import STATE_SENT
from mailbridge.outbound.sender import RelayTransport
from tests.outbound.test_sender import _sender, add_case, queue, rows
from tests.support.sink import SmtpSink


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_passes_close_together_share_one_connection(db, settings, relay) -> None:
    sender = _sender(db, settings, relay.port)
    ticket = add_case(db)
    first = queue(db, ticket)
    assert sender.send_due().sent == 1
    time.sleep(1.2)  # past the NOOP probe's threshold: the kept connection is asked
    second = queue(db, ticket)
    assert sender.send_due().sent == 1
    assert [r.message["Message-ID"] for r in relay.wait_for(2)] == [first, second]
    assert relay.connections == 1  # one TLS handshake and login for both, not two
    sender.transport.close()


def test_a_connection_the_relay_closed_is_replaced_without_a_failed_attempt(
    db, settings
) -> None:
    sink = SmtpSink(idle_timeout=0.5).start()  # the relay drops idle sessions (421)
    try:
        sender = _sender(db, settings, sink.port)
        ticket = add_case(db)
        queue(db, ticket)
        assert sender.send_due().sent == 1
        time.sleep(1.5)
        later = queue(db, ticket)
        result = sender.send_due()
        assert (result.sent, result.deferred, result.failed) == (1, 0, 0)
        assert not sender.paused()  # a stale connection is not a relay that is down
        assert rows(db)[later]["state"] == STATE_SENT and rows(db)[later]["attempts"] == 1
        assert len(sink.wait_for(2)) == 2 and sink.connections == 2
        sender.transport.close()
    finally:
        sink.stop()


def test_an_idle_connection_is_closed_after_keep_open(db, settings, relay) -> None:
    sender = _sender(db, settings, relay.port, relay_keep_open=0.5, worker_poll_interval=5.0)
    sender.start()
    try:
        queue(db, add_case(db))
        sender.wakeup.set()
        relay.wait_for(1)
        transport = sender.transport
        assert isinstance(transport, RelayTransport)
        assert _wait(lambda: transport.client is None, timeout=4.0)  # not the 5 s poll
    finally:
        sender.stop()


def test_keep_open_zero_closes_the_connection_after_each_pass(db, settings, relay) -> None:
    sender = _sender(db, settings, relay.port, relay_keep_open=0)
    ticket = add_case(db)
    for _ in range(2):
        queue(db, ticket)
        assert sender.send_due().sent == 1
        assert isinstance(sender.transport, RelayTransport)
        assert sender.transport.client is None
    relay.wait_for(2)
    assert relay.connections == 2


def test_the_sender_closes_its_kept_connection_when_it_stops(db, settings, relay) -> None:
    sender = _sender(db, settings, relay.port, relay_keep_open=60)
    sender.start()
    queue(db, add_case(db))
    sender.wakeup.set()
    relay.wait_for(1)
    transport = sender.transport
    assert isinstance(transport, RelayTransport)
    assert transport.client is not None  # kept after the pass
    sender.stop()
    assert transport.client is None
