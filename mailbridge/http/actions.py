"""The writes of the API and the board: change a case, answer on it, replay a quarantined
mail. Each runs in one transaction with the staff commands' own rules
(pipeline/changes.py), records the token's name on the case's events (`api:NAME` or
`board:NAME`), and wakes the senders once it committed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mailbridge.db import utcnow
from mailbridge.http import DeskTools
from mailbridge.outbound.webhooks import emit_event
from mailbridge.pipeline.changes import (
    ADDRESS_RE,
    relay_staff_answer,
    set_owner,
    set_priority,
    set_status,
    staff_answered,
)
from mailbridge.spool import release_for_replay
from mailbridge.tickets.models import TicketEvent, TicketMessage
from mailbridge.tickets.numbering import case_subject
from mailbridge.tokens import Caller
from mailbridge.views import get_ticket, ticket_json

log = logging.getLogger(__name__)

# The order changes are made in when one request asks for several: the status last, so a
# request for confirmation («resuelto») already names the new priority and owner.
CHANGE_ORDER = ("priority", "owner", "status")
MAX_REPLY_CHARS = 100_000


class ActionError(Exception):
    """A write refused: `status` is the HTTP status, `detail` says why (Spanish when it is
    the staff commands' own answer)."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(detail or error)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class Via:
    """Where a write came from: `api` or `board`, and the caller's token."""

    channel: str
    caller: Caller

    @property
    def by(self) -> str:
        return f"{self.channel}:{self.caller.name}"

    @property
    def shown_as(self) -> str:
        where = "API" if self.channel == "api" else "tablero"
        return f"{self.caller.name} ({where})"


def _writer(via: Via) -> None:
    if via.caller.read_only:
        raise ActionError(403, "forbidden", f"the token {via.caller.name!r} is read-only")


def change_case(tools: DeskTools, number: int, wanted: dict[str, str],
                via: Via) -> tuple[dict[str, Any], list[str]]:
    """Set status, priority and/or owner; all or nothing. (case JSON, Spanish messages)."""
    _writer(via)
    unknown = sorted(set(wanted) - set(CHANGE_ORDER))
    if unknown or not wanted:
        raise ActionError(400, "bad request",
                          f"give one or more of {', '.join(CHANGE_ORDER)}"
                          + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    setters = {"status": set_status, "priority": set_priority, "owner": set_owner}
    rules = tools.rules()
    messages: list[str] = []
    with tools.db.transaction() as session:
        ticket = get_ticket(session, number)
        if ticket is None:
            raise ActionError(404, "not found", f"no case {number}")
        now = utcnow()
        for field in CHANGE_ORDER:
            if field not in wanted:
                continue
            value = wanted[field]
            if not isinstance(value, str):
                raise ActionError(400, "bad request", f"{field} must be a string")
            extra: dict[str, Any] = {"by_name": via.shown_as} if field == "owner" else {}
            change = setters[field](session, rules, ticket, value, by=via.by, now=now, **extra)
            if not change.ok:
                # The whole request rolls back: nothing of it was made.
                raise ActionError(422, "refused", change.message)
            messages.append(change.message)
        session.add(TicketEvent(ticket_id=ticket.id, kind="api_change", at=now, data={
            "by": via.by, "token": via.caller.name, "via": via.channel,
            "changes": {k: wanted[k] for k in CHANGE_ORDER if k in wanted}}))
    tools.on_outbox()
    log.info("case changed", extra={"case": number, "by": via.by, "changes": wanted})
    return _case(tools, number), messages


def answer_case(tools: DeskTools, number: int, body: str, via: Via, *,
                author: str | None = None, author_name: str | None = None) -> dict[str, Any]:
    """A staff answer on the case, sent to the customer as a staff reply-all is relayed;
    recorded as the case's staff message, with the first response and owner it makes."""
    _writer(via)
    body = (body or "").strip()
    if not body:
        raise ActionError(400, "bad request", "body is empty")
    if len(body) > MAX_REPLY_CHARS:
        raise ActionError(413, "too large", f"body over {MAX_REPLY_CHARS} characters")
    rules = tools.rules()
    if author is not None:
        author = author.strip().lower()
        if not ADDRESS_RE.match(author) or not rules.is_staff(author):
            raise ActionError(422, "refused", f"{author} no es de la mesa "
                              f"({', '.join(rules.desk.staff_domains)}): una respuesta del "
                              "caso la firma alguien de la mesa")
    by = author or via.by
    with tools.db.transaction() as session:
        ticket = get_ticket(session, number)
        if ticket is None:
            raise ActionError(404, "not found", f"no case {number}")
        now = utcnow()
        staff_answered(session, rules, ticket, by=by, now=now, by_name=author_name or by)
        message_id = relay_staff_answer(session, rules, ticket, body,
                                        agent_name=author_name, now=now)
        message = TicketMessage(
            ticket_id=ticket.id, inbound_id=None, direction="in", author_role="staff",
            message_id=message_id, sender=by[:320],
            subject=case_subject(rules.desk.case_token, ticket.number, ticket.subject),
            body=body, created_at=now,
        )
        session.add(message)
        ticket.updated_at = now
        session.add(TicketEvent(ticket_id=ticket.id, kind="api_reply", at=now, data={
            "by": by, "token": via.caller.name, "via": via.channel, "message_id": message_id,
            "sent": message_id is not None}))
        emit_event(session, "case.message", ticket, at=now, sender=by, role="staff")
    tools.on_outbox()
    log.info("staff answer through the API", extra={"case": number, "by": by,
                                                     "token": via.caller.name})
    return {
        "case": number,
        "message": {"direction": "in", "author_role": "staff", "sender": by,
                    "subject": message.subject, "message_id": message_id,
                    "created_at": now.isoformat(), "body": body},
        "message_id": message_id,
        "queued": message_id is not None,
    }


def replay_mail(tools: DeskTools, inbound_id: int, via: Via) -> dict[str, Any]:
    """Put a quarantined mail back through the pipeline, now."""
    _writer(via)
    if not release_for_replay(tools.db, inbound_id):
        raise ActionError(404, "not found", f"no quarantined mail {inbound_id}")
    log.info("quarantined mail replayed", extra={"inbound_id": inbound_id, "by": via.by})
    result = tools.replay(inbound_id)
    tools.on_outbox()
    return {"id": inbound_id,
            "outcome": result.outcome if result is not None else "queued",
            "case": result.ticket_number if result is not None else None}


def _case(tools: DeskTools, number: int) -> dict[str, Any]:
    with tools.db.reader() as session:
        ticket = get_ticket(session, number)
        assert ticket is not None
        return ticket_json(session, ticket)
