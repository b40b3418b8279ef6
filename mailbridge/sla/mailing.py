"""Mail the scheduler owes on a case (escalations, closing attempts), queued in its transaction."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.outbound.outbox import OutboxMail, enqueue
from mailbridge.outbound.render import Draft
from mailbridge.rules import Rules
from mailbridge.tickets.models import AddressStatus, Ticket, TicketMessage
from mailbridge.tickets.numbering import case_subject

log = logging.getLogger(__name__)


def deliverable(session: Session, addresses: list[str]) -> list[str]:
    """The addresses that did not hard-bounce, each once, in order."""
    out: list[str] = []
    for address in addresses:
        address = address.strip().lower()
        if not address or address in out:
            continue
        status = session.get(AddressStatus, address)
        if status is not None and status.hard:
            log.info("no scheduled mail to a hard-bounced address", extra={"rcpt": address})
            continue
        out.append(address)
    return out


def _thread_of(session: Session, ticket: Ticket) -> tuple[str | None, list[str]]:
    """In-Reply-To and References for a mail on the case: its first and latest inbound mail."""
    ids = session.scalars(
        select(TicketMessage.message_id)
        .where(TicketMessage.ticket_id == ticket.id, TicketMessage.message_id.is_not(None))
        .order_by(TicketMessage.id)
    ).all()
    ids = [i for i in ids if i]
    if not ids:
        return None, []
    references = [ids[0]] if len(ids) == 1 else [ids[0], ids[-1]]
    return ids[-1], references


def queue_case_mail(
    session: Session,
    rules: Rules,
    ticket: Ticket,
    *,
    template: str,
    kind: str,
    to: list[str],
    context: dict[str, Any],
    now: datetime,
    cc: list[str] | None = None,
    subject: str | None = None,
) -> OutboxMail | None:
    """Render and queue one mail about `ticket`; None when no recipient can receive it.

    Marked `Auto-Submitted: auto-generated` (RFC 3834: not a reply to a mail) and threaded
    into the case; replies come back to the case by its token and plus-address.
    """
    # Imported here: the pipeline package imports the SLA modules (its stages use them).
    from mailbridge.pipeline.mailing import case_reply_to

    recipients = deliverable(session, to)
    if not recipients:
        return None
    copies = [c for c in deliverable(session, cc or []) if c not in recipients]
    desk = rules.desk
    in_reply_to, references = _thread_of(session, ticket)
    draft = Draft(
        template=template,
        context={"desk": desk, "ticket": ticket, "now": now, **context},
        to=recipients,
        cc=copies,
        subject=subject or case_subject(desk.case_token, ticket.number, ticket.subject),
        from_address=desk.from_address,
        from_name=desk.from_name,
        reply_to=case_reply_to(desk.from_address, ticket.number),
        in_reply_to=in_reply_to,
        references=references,
        auto_submitted="auto-generated",
        max_recipients=desk.max_auto_recipients,
    )
    return enqueue(session, draft, kind=kind, ticket_id=ticket.id)
