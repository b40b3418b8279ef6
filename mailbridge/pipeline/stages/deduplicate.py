"""Deduplicate: the same Message-ID twice makes one message."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from mailbridge.pipeline.context import FLOW_CASE, FLOW_TARGET, MailContext, Outcome
from mailbridge.tickets.models import TicketMessage

# Built once, on the table: every mail runs it, and the ORM's per-query work cost more
# than the lookup (bench/README.md). Core does not autoflush; nothing pending in the
# session is a message (those are inserted at once).
_SEEN_MESSAGE = select(TicketMessage.__table__.c.ticket_id).where(
    TicketMessage.__table__.c.message_id == bindparam("message_id")
)


class Deduplicate:
    name = "deduplicate"
    description = "The same Message-ID twice makes one message"
    flows = frozenset({FLOW_CASE, FLOW_TARGET})

    def run(self, ctx: MailContext) -> Outcome | None:
        msgid = ctx.mail.message_id
        if not msgid:
            return None
        seen = ctx.session.connection().execute(_SEEN_MESSAGE, {"message_id": msgid}).scalar()
        if seen is not None:
            ctx.inbound.ticket_id = seen
            return Outcome("duplicate", f"Message-ID {msgid} already on a case")
        return None
