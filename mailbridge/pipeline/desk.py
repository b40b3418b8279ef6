"""What the desk's people hear of the mail in hand: new cases, follow-ups, case changes.

Staff live in their mail client. The queue (rules.yaml `queues.*.notify`) hears of every
new case; once a case has an owner, the owner hears of the customer's follow-ups, else
the queue does. Every notice carries `[Caso N]` and `Reply-To: soporte+N@`, so that a
reply-all lands on the case and is relayed to the customer; nobody is sent what they
wrote themselves, or what already reached them (they were in To/Cc of the mail).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from mailbridge import metrics
from mailbridge.outbound.compose import AUTO_GENERATED, Mail, case_staff, compose
from mailbridge.pipeline.changes import record_owner
from mailbridge.pipeline.context import MailContext
from mailbridge.pipeline.mailing import answering
from mailbridge.service_levels.policy import format_when_es
from mailbridge.tickets.models import Ticket

log = logging.getLogger(__name__)


def _not_reached(ctx: MailContext, people: list[str]) -> list[str]:
    """Those who did not write this mail and were not among its recipients."""
    reached = {ctx.sender.lower(), *(a.lower() for a in (*ctx.mail.to, *ctx.mail.cc))}
    return [p for p in dict.fromkeys(people) if p.lower() not in reached]


def tell_staff(ctx: MailContext, ticket: Ticket, *, kind: str, template: str,
               context: dict[str, Any], to: list[str] | None = None,
               subject: str | None = None, unreached_only: bool = True) -> bool:
    """A notice to the desk about this mail's case (its owner, else its queue); by default
    not to those the mail itself reached."""
    people = to if to is not None else case_staff(ctx.rules, ticket)
    people = _not_reached(ctx, people) if unreached_only else [
        p for p in dict.fromkeys(people) if p.lower() != ctx.sender.lower()]
    if not people:
        return False
    try:
        mail = Mail(kind=kind, template=template, to=people, ticket=ticket, subject=subject,
                    context={**_case_context(ctx, ticket), **context},
                    answering=answering(ctx), auto_submitted=AUTO_GENERATED)
        return compose(ctx.session, ctx.rules, mail, now=ctx.now) is not None
    except SQLAlchemyError:
        raise  # the database's trouble: the mail is retried, as for any stage
    except Exception:
        # A notice that cannot be made (a template, odd data) must not cost the customer
        # their case and acknowledgement: it is logged and counted, the mail goes on.
        log.exception("staff notice not queued", extra={"kind": kind, "case": ticket.number})
        metrics.AUTO_REPLIES_WITHHELD.labels(reason="notice_failed").inc()
        return False


def _case_context(ctx: MailContext, ticket: Ticket) -> dict[str, Any]:
    rules = ctx.rules
    queue = rules.queues.get(ticket.queue or "")
    level = rules.priorities.get(ticket.priority)  # type: ignore[call-overload]
    due = ticket.response_due_at
    return {
        "tenant": rules.tenant(ticket.tenant_id),
        "queue_label": (queue.label if queue is not None and queue.label else ticket.queue),
        "priority_label": level.label if level is not None else ticket.priority,
        "due_es": format_when_es(due, rules.desk.zone) if due is not None else None,
        "body": ctx.body,
        "sender": ctx.sender,
        "sender_name": ctx.mail.from_name,
        "attachments": [a.filename for a in ctx.mail.attachments],
    }


def tell_queue_of_new_case(ctx: MailContext, ticket: Ticket) -> bool:
    """Every new case to its queue: the customer's text, its fields, its due time."""
    labels = {spec.key: spec.label for spec in ctx.rules.template.fields}
    fields = [(labels.get(key, key), _shown(value)) for key, value in (ticket.fields or {}).items()]
    return tell_staff(ctx, ticket, kind="staff_new_case", template="staff_new_case.txt.j2",
                      to=ctx.rules.queue_notify(ticket.queue), context={
                          "fields": fields,
                          "missing": [ctx.rules.template.label(k) for k in ticket.missing_fields],
                      })


def tell_of_follow_up(ctx: MailContext, ticket: Ticket, *, what: str = "follow_up") -> bool:
    """The customer (or someone on the thread) wrote on the case: its owner, else its queue."""
    return tell_staff(ctx, ticket, kind="staff_follow_up", template="staff_follow_up.txt.j2",
                      context={"what": what})


def _shown(value: Any) -> str:
    """A template field's value on one line, as a person writes it."""
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, dict):
        return " – ".join(_shown(v) for v in value.values() if v)
    text = " ".join(str(value).split())
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return text
    if at.tzinfo is None or "T" not in text:
        return text
    offset = at.strftime("%z")
    return f"{at:%d/%m/%Y %H:%M} (UTC{offset[:3]}:{offset[3:]})"


def take_ownership(ctx: MailContext, ticket: Ticket, owner: str, *, why: str) -> None:
    """The case gets an owner: the first staff member who answers, or whom «#asignar» names
    (told when it is someone else)."""
    record_owner(ctx.session, ctx.rules, ticket, owner, by=ctx.sender, now=ctx.now, why=why,
                 by_name=ctx.mail.from_name or ctx.sender, answering=answering(ctx))
