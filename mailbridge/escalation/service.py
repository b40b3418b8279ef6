"""Escalating a case to Operations or a vendor, and telling staff what the target said.

Everything here writes into the caller's transaction (the mail's, or the CLI's): the
reference, its events and the outbox rows are committed together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.escalation.fields import (
    FieldValue,
    label_of,
    resolve,
    values_from_case,
    values_from_text,
)
from mailbridge.outbound.compose import PERSON, Answering, Mail, case_address, compose
from mailbridge.outbound.render import DraftAttachment
from mailbridge.rules import EscalationTarget, Rules
from mailbridge.tickets.evidence import evidence_path
from mailbridge.tickets.models import (
    VENDOR_ACTIVE_STATES,
    VENDOR_MISSING_DATA,
    VENDOR_SENT,
    Attachment,
    Ticket,
    TicketEvent,
    TicketMessage,
    VendorReference,
)

log = logging.getLogger(__name__)

SENT = "sent"
MISSING = "missing"
REFUSED = "refused"

ORIGIN_STAFF = "staff"  # «#escalar …» in a staff reply
ORIGIN_CLI = "cli"  # mailbridge escalate
ORIGIN_RULE = "rule"  # an opening mail whose product routes to the target


@dataclass
class EscalationResult:
    status: str  # sent | missing | refused
    target: str
    message: str  # Spanish, for the staff member
    missing: list[str] = field(default_factory=list)  # labels
    reference: VendorReference | None = None
    message_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SENT


def _answering(inbound_id: int | None) -> Answering | None:
    """Mail a stored mail caused without answering it: its inbound row is recorded, and it
    starts a thread of its own (as a new mail to a vendor or to staff does)."""
    return None if inbound_id is None else Answering(None, (), inbound_id)


def staff_recipients(
    session: Session, rules: Rules, ticket: Ticket, target: EscalationTarget,
    reference: VendorReference | None = None,
) -> list[str]:
    """Who at the desk hears what a target said (never the customer): the case's owner,
    else who escalated it, else the staff who wrote on it, else its queue, else the
    target's `notify` addresses."""
    if ticket.owner:
        return [ticket.owner]
    if reference is not None and reference.requested_by and rules.is_staff(reference.requested_by):
        return [reference.requested_by]
    people: list[str] = []
    for sender in session.scalars(
        select(TicketMessage.sender)
        .where(TicketMessage.ticket_id == ticket.id, TicketMessage.author_role == "staff")
        .order_by(TicketMessage.id)
    ):
        if rules.is_staff(sender) and sender not in people:
            people.append(sender)
    return people or rules.queue_notify(ticket.queue) or list(target.notify)


def _opening_text(session: Session, ticket: Ticket) -> str:
    first = session.scalar(
        select(TicketMessage.body)
        .where(TicketMessage.ticket_id == ticket.id, TicketMessage.author_role == "customer")
        .order_by(TicketMessage.id)
        .limit(1)
    )
    return first or ""


def _evidence(
    session: Session, ticket: Ticket, evidence_dir: Path, budget: int
) -> tuple[list[DraftAttachment], list[str]]:
    """The case's kept evidence, oldest first, as long as it fits in `budget` bytes."""
    attached: list[DraftAttachment] = []
    left_out: list[str] = []
    used = 0
    rows = session.scalars(
        select(Attachment).where(Attachment.ticket_id == ticket.id).order_by(Attachment.id)
    ).all()
    seen: set[str] = set()
    for row in rows:
        if row.sha256 in seen:
            continue
        seen.add(row.sha256)
        path = evidence_path(evidence_dir, row.sha256)
        if not row.stored or used + row.size > budget or not path.is_file():
            left_out.append(f"{row.filename} ({row.size} bytes)")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("evidence unreadable", extra={"sha256": row.sha256, "error": str(exc)})
            left_out.append(f"{row.filename} ({row.size} bytes)")
            continue
        used += len(data)
        attached.append(DraftAttachment(row.filename, row.content_type, data))
    return attached, left_out


def escalate(
    session: Session,
    rules: Rules,
    ticket: Ticket,
    target_name: str,
    *,
    now: datetime,
    evidence_dir: Path,
    origin: str,
    requested_by: str | None = None,
    requested_by_name: str | None = None,
    text: str = "",
    values: Mapping[str, str] | None = None,
    inbound_id: int | None = None,
) -> EscalationResult:
    """Send the case to the target with its required fields, or say which are missing.

    Values, the later winning: the field's default and case sources, `Etiqueta: valor`
    lines of the opening mail, what an earlier incomplete request gathered, the lines
    of `text` (the staff member's mail), then `values` (CLI --field). Nothing is sent
    while a required field has no value.
    """
    name = (target_name or "").strip().casefold()
    target = rules.escalation_target(name)
    if target is None:
        known = ", ".join(sorted(rules.escalation_targets)) or "ninguno configurado"
        return EscalationResult(REFUSED, name, f"destino desconocido «{name}»; use: {known}")
    references = session.scalars(
        select(VendorReference)
        .where(VendorReference.ticket_id == ticket.id, VendorReference.target == name)
        .order_by(VendorReference.id)
    ).all()
    active = [r for r in references if r.state in VENDOR_ACTIVE_STATES]
    if active:
        current = active[-1]
        number = f", su ticket #{current.vendor_ticket}" if current.vendor_ticket else ""
        when = current.sent_at.strftime("%Y-%m-%d %H:%M UTC") if current.sent_at else ""
        return EscalationResult(
            REFUSED, name,
            f"el caso ya está escalado a {target.label} ({when}{number}, estado «{current.state}»);"
            " el seguimiento sigue en el mismo hilo",
            reference=current,
        )
    pending = next((r for r in reversed(references) if r.state == VENDOR_MISSING_DATA), None)
    by = f"{requested_by_name} <{requested_by}>" if requested_by and requested_by_name else (
        requested_by or ""
    )
    layers: list[Mapping[str, str]] = [
        values_from_case(rules, target, ticket, by),
        values_from_text(rules, target, _opening_text(session, ticket)),
        dict(pending.fields or {}) if pending is not None else {},
        values_from_text(rules, target, text),
        dict(values or {}),
    ]
    found, missing = resolve(target, layers)
    reference = pending or VendorReference(
        ticket_id=ticket.id, target=name, kind=target.kind, address=target.address,
        origin=origin, created_at=now, state=VENDOR_MISSING_DATA,
    )
    reference.requested_by = requested_by or reference.requested_by
    reference.origin = origin
    reference.fields = {v.key: v.value for v in found}
    reference.missing_fields = missing
    reference.updated_at = now
    if pending is None:
        session.add(reference)
    if missing:
        reference.state = VENDOR_MISSING_DATA
        labels = [label_of(target, key) for key in missing]
        session.add(TicketEvent(ticket_id=ticket.id, kind="vendor_missing_fields", at=now, data={
            "target": name, "missing": missing, "by": requested_by, "origin": origin,
        }))
        session.flush()
        return EscalationResult(
            MISSING, name,
            f"no enviado a {target.label}: faltan datos obligatorios ("
            + "; ".join(labels)
            + f"). Responda con «#escalar {name}» y una línea «Etiqueta: valor» por dato",
            missing=labels, reference=reference,
        )
    message_id = _send_escalation(session, rules, ticket, name, target, found, evidence_dir,
                                  requested_by_name or requested_by, inbound_id)
    reference.state = VENDOR_SENT
    reference.message_id = message_id
    reference.sent_at = reference.awaiting_since = now
    reference.overdue_notices = 0
    session.add(TicketEvent(ticket_id=ticket.id, kind="vendor_escalated", at=now, data={
        "target": name, "address": target.address, "message_id": message_id,
        "by": requested_by, "origin": origin,
    }))
    session.flush()
    return EscalationResult(
        SENT, name, f"escalado a {target.label} ({target.address})",
        reference=reference, message_id=message_id,
    )


def _send_escalation(
    session: Session, rules: Rules, ticket: Ticket, name: str, target: EscalationTarget,
    found: list[FieldValue], evidence_dir: Path, requested_by_name: str | None,
    inbound_id: int | None,
) -> str | None:
    attachments, left_out = _evidence(session, ticket, evidence_dir, target.max_attachment_bytes)
    return compose(session, rules, Mail(
        template=target.template,
        kind="vendor_escalation",
        to=[target.address],
        ticket=ticket,
        subject=f"Escalamiento {target.label}: {ticket.subject}",
        context={
            "target": target, "target_name": name, "values": found,
            "tenant": rules.tenant(ticket.tenant_id),
            "requested_by_name": requested_by_name,
            "attached": [a.filename for a in attachments], "not_attached": left_out,
        },
        attachments=attachments,
        # Written for people at the target, who answer it; a ticketing vendor's
        # automatic answer (its ticket number) is wanted, so it is not suppressed.
        auto_submitted=PERSON,
        suppress_auto_responses=target.ticket_regex is None,
        answering=_answering(inbound_id),
    ))


def ask_staff_for_fields(
    session: Session, rules: Rules, ticket: Ticket, result: EscalationResult,
    *, to: Iterable[str], reason: str = "", inbound_id: int | None = None,
) -> str | None:
    """Tell staff an escalation waits for data (used where no command confirmation goes)."""
    target = rules.escalation_targets[result.target]
    return compose(session, rules, Mail(
        template="vendor_missing_fields.txt.j2", kind="vendor_missing_fields", ticket=ticket,
        to=list(to), subject=f"Faltan datos para escalar a {target.label}: {ticket.subject}",
        context={"target": target, "target_name": result.target, "missing": result.missing,
                 "reason": reason},
        answering=_answering(inbound_id),
    ))


def relay_to_staff(
    session: Session,
    rules: Rules,
    ticket: Ticket,
    target_name: str,
    reference: VendorReference | None,
    *,
    automatic: bool,
    sender: str,
    subject: str,
    body: str,
    message_id: str | None,
    references: Sequence[str],
    attachments: Sequence[DraftAttachment] = (),
    skipped: Sequence[str] = (),
    inbound_id: int | None = None,
) -> str | None:
    """What the target wrote, to the case's staff; replying goes back to the target."""
    target = rules.escalation_targets[target_name]
    to = staff_recipients(session, rules, ticket, target, reference)
    label = f"Respuesta de {target.label}"
    if reference is not None and reference.vendor_ticket:
        label += f" (ticket #{reference.vendor_ticket})"
    if automatic:
        label = f"{target.label} registró el escalamiento" + (
            f" (ticket #{reference.vendor_ticket})" if reference and reference.vendor_ticket else ""
        )
    return compose(session, rules, Mail(
        template="vendor_answer.txt.j2", kind="vendor_answer", ticket=ticket,
        to=to, subject=f"{label}: {ticket.subject}",
        context={
            "target": target, "reference": reference, "automatic": automatic,
            "sender": sender, "subject": subject, "body": body,
            "attachments": [a.filename for a in attachments] + list(skipped),
        },
        # Staff answer the target straight away, with the case in copy (recorded there,
        # never relayed to the customer).
        reply_to="",
        extra_headers={
            "Reply-To": f"{target.address}, {case_address(rules, ticket.number)}",
        },
        answering=Answering(message_id, [*references, *([message_id] if message_id else [])],
                            inbound_id),
        attachments=attachments,
    ))
