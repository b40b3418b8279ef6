"""The pipeline's side of desk mail: answers to the mail in hand, through outbound.compose.

What only the mail in hand can tell is decided here (RFC 3834: never answer a robot or a
null sender; a refusal goes only to an envelope sender that wrote the mail); everything
else (recipients, limits, threading, the row) is `outbound.compose`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mailbridge import metrics
from mailbridge.auth import aligned
from mailbridge.outbound.compose import (
    AUTO_REPLIED,
    PERSON,
    Answering,
    Mail,
    answer_allowed,
    compose,
)
from mailbridge.pipeline.context import MailContext
from mailbridge.tickets.models import Ticket

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
                and ctx.sender_is_authentic()
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


def answering(ctx: MailContext) -> Answering:
    """The mail in hand, as the one our mail answers."""
    return Answering(ctx.mail.message_id, list(ctx.mail.references), ctx.inbound.id,
                     ctx.inbound.received_at)


def auto_reply_allowed(ctx: MailContext, address: str, kind: str) -> bool:
    """RFC 3834 rate limit per address, and never to an address that hard-bounced."""
    return answer_allowed(ctx.session, ctx.rules, address, kind, ctx.now)


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
    mail = Mail(
        kind=kind, template=template,
        context={"customer_name": ctx.mail.from_name, **context},
        to=to or [ctx.sender], cc=cc or [], ticket=ticket,
        subject=subject if subject is not None or ticket is not None else ctx.mail.subject,
        case_token=subject is None,  # a subject of the caller's stays as written
        answering=answering(ctx), auto_submitted=AUTO_REPLIED, rate_limit=True,
    )
    return compose(ctx.session, ctx.rules, mail, now=ctx.now) is not None


def queue_case_update(
    ctx: MailContext, ticket: Ticket, *, template: str, kind: str, context: dict[str, Any],
    to: list[str], cc: list[str] | None = None,
) -> None:
    """A mail on a case written by a person (a staff answer we relay): no rate limit."""
    compose(ctx.session, ctx.rules, Mail(
        kind=kind, template=template, context=context, to=to, cc=cc or [], ticket=ticket,
        answering=answering(ctx), auto_submitted=PERSON,
    ), now=ctx.now)
