"""The RFC 3834 guard on automatic mail: per-address hourly limits, hard bounces."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from mailbridge.db import Database, utcnow
from mailbridge.pipeline.mailing import auto_reply_allowed
from mailbridge.tickets.models import AddressStatus, AutoReply

ANA = "ana@compensar.example"


def _ctx(session, *, ack_limit: int = 2, other_limit: int = 1):  # type: ignore[no-untyped-def]
    desk = SimpleNamespace(ack_limit_per_hour=ack_limit, auto_reply_limit_per_hour=other_limit)
    return SimpleNamespace(session=session, rules=SimpleNamespace(desk=desk), now=utcnow())


def test_limits_count_each_kind_within_the_hour(db: Database) -> None:
    with db.transaction() as session:
        ctx = _ctx(session)
        assert auto_reply_allowed(ctx, ANA, "ack")
        session.add(AutoReply(address=ANA, kind="ack", at=ctx.now - timedelta(minutes=5)))
        session.add(AutoReply(address=ANA, kind="ack", at=ctx.now - timedelta(hours=2)))
        assert auto_reply_allowed(ctx, ANA, "ack")  # one in the hour, limit two
        session.add(AutoReply(address=ANA, kind="ack", at=ctx.now))  # not flushed yet: counts
        assert not auto_reply_allowed(ctx, ANA, "ack")
        assert auto_reply_allowed(ctx, ANA, "refusal")  # the other kind has its own limit
        session.add(AutoReply(address=ANA, kind="notice", at=ctx.now))
        assert not auto_reply_allowed(ctx, ANA, "refusal")
        assert auto_reply_allowed(ctx, "luis@compensar.example", "refusal")
        assert not auto_reply_allowed(_ctx(session, ack_limit=0), "luis@compensar.example", "ack")


def test_no_automatic_mail_to_a_hard_bounced_address(db: Database) -> None:
    with db.transaction() as session:
        ctx = _ctx(session)
        session.add(AddressStatus(address=ANA, bounces=1, hard=False, last_at=ctx.now))
        assert auto_reply_allowed(ctx, ANA, "ack")
        session.get(AddressStatus, ANA).hard = True  # type: ignore[union-attr]
        assert not auto_reply_allowed(ctx, ANA, "ack")
