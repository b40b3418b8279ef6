"""Queueing the mail a stage owes, with the loop guards every automatic mail needs."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, select

from mailbridge import metrics
from mailbridge.auth import aligned, sender_is_authentic
from mailbridge.db import UTCDateTime
from mailbridge.outbound.outbox import insert_outbox_mail
from mailbridge.outbound.render import Draft
from mailbridge.pipeline.context import MailContext
from mailbridge.tickets.models import AddressStatus, AutoReply, Ticket
from mailbridge.tickets.numbering import case_subject

log = logging.getLogger(__name__)


# Mail from these local parts is a mail system's own (RFC 3834 §3.2, RFC 5321 §4.5.5):
# whatever its envelope says, it never gets an automatic answer.
_SYSTEM_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster"})
# Bounce address tags (BATV, RFC draft-levine-smtp-batv) and SRS rewrite a sender's
# envelope address; what they stand for is compared with From.
_BATV_RE = re.compile(r"^(?:prvs|btv1|msprvs1)=[^=]+=(?P<local>.+)$", re.IGNORECASE)
_SRS0_RE = re.compile(r"^srs0[=+-][^=]+=[^=]+=(?P<domain>[^=]+)=(?P<local>.+)$", re.IGNORECASE)


def _envelope_author(envelope: str) -> str:
    """The address an envelope sender stands for, BATV tags and SRS0 rewriting undone."""
    local, _, domain = envelope.strip().lower().rpartition("@")
    srs = _SRS0_RE.match(local)
    if srs:
        return f"{srs['local']}@{srs['domain']}"
    batv = _BATV_RE.match(local)
    return f"{batv['local'] if batv else local}@{domain}"


def refusal_address(ctx: MailContext) -> str | None:
    """Where a refusal may go, or None (RFC 3834 §4: never backscatter).

    To the envelope sender (Return-Path), never when it is null or unknown, and only when
    it is the From address (the same address, or an address in an aligned domain when
    sender authentication is on and passed). A mail system's own address
    (MAILER-DAEMON@, postmaster@) gets nothing. Every refusal withheld is logged and
    counted (`mailbridge_auto_replies_withheld_total{reason}`).
    """
    author = ctx.sender
    envelope = (ctx.inbound.mail_from or "").strip().strip("<>").strip()
    reason = None
    if author.partition("@")[0].split("+", 1)[0] in _SYSTEM_LOCAL_PARTS or \
            envelope.lower().partition("@")[0] in _SYSTEM_LOCAL_PARTS:
        reason = "system_sender"
    elif "@" not in envelope:
        reason = "no_envelope_sender"
    else:
        stands_for = _envelope_author(envelope)
        if stands_for != author.lower():
            aligned_and_authentic = (
                ctx.settings.sender_auth != "off"
                and aligned(stands_for.rpartition("@")[2], author.rpartition("@")[2])
                and sender_is_authentic(ctx)
            )
            if not aligned_and_authentic:
                reason = "envelope_mismatch"
    if reason is not None:
        metrics.AUTO_REPLIES_WITHHELD.labels(reason=reason).inc()
        log.info("refusal withheld (it could be backscatter)", extra={
            "reason": reason, "sender": author, "envelope_sender": envelope,
            "inbound_id": ctx.inbound.id,
        })
        return None
    return envelope


def case_reply_to(from_address: str, number: int) -> str:
    local, _, domain = from_address.partition("@")
    return f"{local}+{number}@{domain}"


def _rate_limit_check(ack: bool) -> Select[Any]:
    """(hard-bounced?, automatic mails of this kind in the window, counted up to the limit).

    One Core statement for both questions, built once: the ORM's per-query work and
    building the statement were most of the cost. Counting at most `limit` rows keeps
    the check cheap during a mail storm.
    """
    replies = AutoReply.__table__.c
    statuses = AddressStatus.__table__.c
    address = bindparam("address")
    recent = (
        select(replies.id)
        .where(replies.address == address, replies.at >= bindparam("since", type_=UTCDateTime),
               replies.kind == "ack" if ack else replies.kind != "ack")
        .limit(bindparam("limit"))
        .subquery()
    )
    return select(
        select(statuses.hard).where(statuses.address == address).scalar_subquery(),
        select(func.count()).select_from(recent).scalar_subquery(),
    )


_RATE_LIMIT_CHECK = {True: _rate_limit_check(True), False: _rate_limit_check(False)}
_INSERT_AUTO_REPLIES = insert(AutoReply.__table__)


def auto_reply_allowed(ctx: MailContext, address: str, kind: str) -> bool:
    """RFC 3834 rate limit per address, and never to an address that hard-bounced."""
    desk = ctx.rules.desk
    is_ack = kind == "ack"
    limit = desk.ack_limit_per_hour if is_ack else desk.auto_reply_limit_per_hour
    ctx.session.flush()  # what this transaction wrote counts (autoflush did it before)
    hard, sent = ctx.session.execute(_RATE_LIMIT_CHECK[is_ack], {
        "address": address, "since": ctx.now - timedelta(hours=1), "limit": limit,
    }).one()
    if hard:
        log.info("no automatic mail to a hard-bounced address", extra={"rcpt": address})
        return False
    if (sent or 0) >= limit:
        log.warning("auto-reply rate limit reached",
                    extra={"rcpt": address, "sent": sent, "kind": kind})
        return False
    return True


def queue_auto_reply(
    ctx: MailContext,
    *,
    template: str,
    kind: str,
    context: dict[str, Any],
    ticket: Ticket | None = None,
    subject: str | None = None,
    to: list[str] | None = None,
    cc: list[str] | None = None,
) -> bool:
    """Queue an automatic answer to this mail's sender; False when a guard said no.

    A refusal (no case was opened: the sender is unknown, a shared mailbox …) goes to the
    envelope sender, and only when it is this mail's author (`refusal_address`).
    """
    if not ctx.may_auto_reply:
        return False
    if kind == "refusal" and to is None:
        address = refusal_address(ctx)
        if address is None:
            return False
        to = [address]
    recipients = to or [ctx.sender]
    if not all(auto_reply_allowed(ctx, r, kind) for r in recipients):
        return False
    desk = ctx.rules.desk
    if subject is None:
        subject = (
            case_subject(desk.case_token, ticket.number, ticket.subject)
            if ticket is not None
            else ctx.mail.subject
        )
    draft = Draft(
        template=template,
        context={"desk": desk, "customer_name": ctx.mail.from_name, "ticket": ticket, **context},
        to=recipients,
        cc=cc or [],
        subject=subject,
        from_address=desk.from_address,
        from_name=desk.from_name,
        reply_to=case_reply_to(desk.from_address, ticket.number) if ticket is not None else None,
        in_reply_to=ctx.mail.message_id,
        references=ctx.mail.references,
        max_recipients=desk.max_auto_recipients,
    )
    insert_outbox_mail(
        ctx.session,
        draft,
        kind=kind,
        ticket_id=ticket.id if ticket is not None else None,
        inbound_id=ctx.inbound.id,
        trigger_received_at=ctx.inbound.received_at,
    )
    ctx.session.execute(_INSERT_AUTO_REPLIES,
                        [{"address": rcpt, "kind": kind, "at": ctx.now} for rcpt in recipients])
    return True


def queue_case_update(
    ctx: MailContext, ticket: Ticket, *, template: str, kind: str, context: dict[str, Any],
    to: list[str], cc: list[str] | None = None,
) -> None:
    """A mail on a case written by a person (a staff answer we relay): no rate limit."""
    desk = ctx.rules.desk
    draft = Draft(
        template=template,
        context={"desk": desk, "ticket": ticket, **context},
        to=to,
        cc=cc or [],
        subject=case_subject(desk.case_token, ticket.number, ticket.subject),
        from_address=desk.from_address,
        from_name=desk.from_name,
        reply_to=case_reply_to(desk.from_address, ticket.number),
        in_reply_to=ctx.mail.message_id,
        references=ctx.mail.references,
        auto_submitted="no",
        max_recipients=desk.max_auto_recipients,
    )
    insert_outbox_mail(ctx.session, draft, kind=kind, ticket_id=ticket.id,
                       inbound_id=ctx.inbound.id, trigger_received_at=ctx.inbound.received_at)
