"""One way to make every mail the desk sends: recipients, guards, threading, one outbox row.

Like Mailman's `UserNotification`, every generated mail goes through `compose`: the
acknowledgement and refusals of the pipeline, the SLA and closing mail of the
scheduler, escalations to vendors and what staff are told. It decides, in one place:

- who may receive it: never our own addresses (no loops), never an address that
  hard-bounced; copies on a case only to the tenant's own people (registered contacts,
  its `domains`), staff, or people staff added (`ticket.cc`); at most
  `desk.max_auto_recipients` in all (the first `to` first);
- RFC 3834: `Auto-Submitted` (auto-replied for an answer, auto-generated for mail of
  our own, "no" for a person's words we carry), `X-Loop`, `X-Auto-Response-Suppress`,
  and for answers the per-address hourly limit (`rate_limit=True`);
- threading: `[Caso N]` in the subject, In-Reply-To/References to the mail it answers
  or to the case's first and latest messages, and `Reply-To: soporte+N@` so a reply-all
  comes back to the case;
- the row: rendered now and inserted into the caller's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, select
from sqlalchemy.orm import Session

from mailbridge.db import UTCDateTime, utcnow
from mailbridge.outbound.outbox import insert_outbox_mail
from mailbridge.outbound.render import Draft, DraftAttachment
from mailbridge.rules import Rules
from mailbridge.tickets.models import AddressStatus, AutoReply, Ticket, TicketMessage
from mailbridge.tickets.numbering import case_subject

log = logging.getLogger(__name__)

AUTO_REPLIED = "auto-replied"  # an automatic answer to a mail (RFC 3834 §5)
AUTO_GENERATED = "auto-generated"  # mail of our own: timers, notices to staff
PERSON = "no"  # a person's words we carry (a staff answer, an escalation for people)


@dataclass(frozen=True)
class Answering:
    """The inbound mail an outgoing one answers: threading, and the ack latency."""

    message_id: str | None
    references: Sequence[str] = ()
    inbound_id: int | None = None
    received_at: datetime | None = None


@dataclass
class Mail:
    """What the caller decides of one mail; `compose` does the rest."""

    kind: str  # ack, refusal, notice, closing, vendor_escalation … (the outbox's `kind`)
    template: str
    context: Mapping[str, Any]
    to: Sequence[str]
    cc: Sequence[str] = ()
    ticket: Ticket | None = None
    subject: str | None = None  # default: the case's subject (or the answered mail's)
    case_token: bool = True  # prefix [Caso N] to the subject (when there is a case)
    answering: Answering | None = None
    auto_submitted: str = AUTO_GENERATED
    rate_limit: bool = False  # RFC 3834 §2: answers to one address are limited per hour
    reply_to: str | None = None  # default: the case's address soporte+N@
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    attachments: Sequence[DraftAttachment] = ()
    suppress_auto_responses: bool = True


def case_address(rules: Rules, number: int) -> str:
    """The case's own address (soporte+N@…): replies to it join the case."""
    local, _, domain = rules.desk.from_address.partition("@")
    return f"{local}+{number}@{domain}"


def compose(session: Session, rules: Rules, mail: Mail, *,
            now: datetime | None = None) -> str | None:
    """Render and queue `mail` in the caller's transaction; its Message-ID, or None when
    nobody may receive it (every `to` refused by a guard). `now` counts the rate limit."""
    now = now or utcnow()
    # A rate-limited answer checks bounces with its limit, in one query per address.
    to = _deliverable(session, rules, mail.to, check_bounces=not mail.rate_limit)
    if not to:
        log.info("automatic mail not queued: no recipient may receive it",
                 extra={"kind": mail.kind, "rcpt": list(mail.to)[:10]})
        return None
    if mail.rate_limit and not all(answer_allowed(session, rules, a, mail.kind, now) for a in to):
        return None
    cc = [a for a in _deliverable(session, rules, mail.cc)
          if a not in to and (mail.ticket is None or may_be_copied(rules, mail.ticket, a))]
    ticket = mail.ticket
    desk = rules.desk
    subject = mail.subject if mail.subject is not None else (ticket.subject if ticket else "")
    if ticket is not None and mail.case_token:
        subject = case_subject(desk.case_token, ticket.number, subject)
    in_reply_to, references = _threading(session, mail)
    reply_to = mail.reply_to
    if reply_to is None and ticket is not None:
        reply_to = case_address(rules, ticket.number)
    draft = Draft(
        template=mail.template,
        context={"desk": desk, "ticket": ticket, **mail.context},
        to=to,
        cc=cc,
        subject=subject,
        from_address=desk.from_address,
        from_name=desk.from_name,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=references,
        auto_submitted=mail.auto_submitted,
        extra_headers=dict(mail.extra_headers),
        attachments=list(mail.attachments),
        suppress_auto_responses=mail.suppress_auto_responses,
        max_recipients=desk.max_auto_recipients,
    )
    answering = mail.answering
    message_id = insert_outbox_mail(
        session, draft, kind=mail.kind, ticket_id=ticket.id if ticket is not None else None,
        inbound_id=answering.inbound_id if answering else None,
        trigger_received_at=answering.received_at if answering else None,
    )
    if mail.rate_limit:
        session.connection().execute(_INSERT_AUTO_REPLIES,
                        [{"address": a, "kind": mail.kind, "at": now} for a in to])
    return message_id


def case_staff(rules: Rules, ticket: Ticket) -> list[str]:
    """Who at the desk hears of a case: its owner, else the people of its queue."""
    if ticket.owner:
        return [ticket.owner]
    return rules.queue_notify(ticket.queue)


def may_be_copied(rules: Rules, ticket: Ticket, address: str) -> bool:
    """Whether a copy of the case's mail may go to `address` (hostile round 2: a Cc list
    must not turn the desk's mail into a mailing): staff, the tenant's own people, or
    someone on the case's copies (which only those and staff's choices reach)."""
    if rules.is_staff(address) or address in (ticket.cc or []):
        return True
    tenant = rules.tenant(ticket.tenant_id)
    return tenant is not None and tenant.is_colleague(address)


def _deliverable(session: Session, rules: Rules, addresses: Sequence[str], *,
                 check_bounces: bool = True) -> list[str]:
    """The addresses, each once, in order, without ours and without those that hard-bounced
    (one query for them all)."""
    out: list[str] = []
    for address in addresses:
        address = address.strip()
        if not address or "@" not in address or address in out:
            continue
        if address.lower() in rules.own_addresses or rules.accepts_recipient(address):
            log.info("no desk mail to our own address", extra={"rcpt": address})
            continue
        out.append(address)
    if check_bounces and out:
        bounced = set(session.connection().execute(_HARD_BOUNCED, {"addresses": out}).scalars())
        for address in bounced:
            log.info("no desk mail to a hard-bounced address", extra={"rcpt": address})
        out = [a for a in out if a not in bounced]
    return out


def _threading(session: Session, mail: Mail) -> tuple[str | None, list[str]]:
    """In-Reply-To and References: to the answered mail, else the case's first and latest."""
    if mail.answering is not None:
        return mail.answering.message_id, [r for r in mail.answering.references if r]
    if mail.ticket is None:
        return None, []
    found = session.connection().execute(_CASE_MESSAGE_IDS, {"ticket_id": mail.ticket.id})
    ids = [i for i in found.scalars() if i]
    if not ids:
        return None, []
    return ids[-1], [ids[0]] if len(ids) == 1 else [ids[0], ids[-1]]


def answer_allowed(session: Session, rules: Rules, address: str, kind: str,
                   now: datetime) -> bool:
    """RFC 3834 §2: at most so many automatic answers to one address an hour (the
    acknowledgements of new cases counted apart: a contact may open many cases), and
    none to an address that hard-bounced."""
    desk = rules.desk
    is_ack = kind == "ack"
    limit = desk.ack_limit_per_hour if is_ack else desk.auto_reply_limit_per_hour
    session.flush()  # what this transaction wrote counts
    hard, sent = session.connection().execute(_RECENT_ANSWERS[is_ack], {
        "address": address, "since": now - timedelta(hours=1), "limit": limit,
    }).one()
    if hard:
        log.info("no automatic mail to a hard-bounced address", extra={"rcpt": address})
        return False
    if (sent or 0) >= limit:
        log.warning("auto-reply rate limit reached",
                    extra={"rcpt": address, "sent": sent, "kind": kind})
        return False
    return True


# Statements every mail runs, built once with bind parameters on the tables, and run on
# the session's connection: Session.execute adds ~20 us a statement for ORM work these
# Core statements do not need (bench/README.md).
_HARD_BOUNCED = select(AddressStatus.__table__.c.address).where(
    AddressStatus.__table__.c.address.in_(bindparam("addresses", expanding=True)),
    AddressStatus.__table__.c.hard.is_(True))
_CASE_MESSAGE_IDS = (
    select(TicketMessage.__table__.c.message_id)
    .where(TicketMessage.__table__.c.ticket_id == bindparam("ticket_id"),
           TicketMessage.__table__.c.message_id.is_not(None))
    .order_by(TicketMessage.__table__.c.id)
)
_INSERT_AUTO_REPLIES = insert(AutoReply.__table__)


def _recent_answers(ack: bool) -> Select[Any]:
    """(hard-bounced?, automatic mails of this kind to the address in the window, counted
    up to the limit): one statement for both questions; counting at most `limit` rows
    keeps the check cheap during a mail storm."""
    replies = AutoReply.__table__.c
    statuses = AddressStatus.__table__.c
    address = bindparam("address")
    recent = (
        select(replies.id)
        .where(replies.address == address,
               replies.at >= bindparam("since", type_=UTCDateTime),
               replies.kind == "ack" if ack else replies.kind != "ack")
        .limit(bindparam("limit"))
        .subquery()
    )
    return select(
        select(statuses.hard).where(statuses.address == address).scalar_subquery(),
        select(func.count()).select_from(recent).scalar_subquery(),
    )


_RECENT_ANSWERS = {True: _recent_answers(True), False: _recent_answers(False)}
