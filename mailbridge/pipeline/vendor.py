"""Stages for escalated cases: mail from Operations or a vendor, staff mail to them, and
the product rules that escalate an opening mail by themselves."""

from __future__ import annotations

from mailbridge.escalation.service import (
    MISSING,
    ORIGIN_RULE,
    ask_staff_for_fields,
    escalate,
    relay_to_staff,
)
from mailbridge.escalation.vendors import current_reference, note_follow_up, note_target_mail
from mailbridge.outbound.outbox import enqueue
from mailbridge.outbound.render import Draft, DraftAttachment
from mailbridge.parse.classify import AUTO_REPLY, BOUNCE, NORMAL, OWN, classify
from mailbridge.parse.quotes import strip_quotes
from mailbridge.parse.secrets import redact_secrets
from mailbridge.pipeline.apply import Apply, record_message
from mailbridge.pipeline.classify import Deduplicate
from mailbridge.pipeline.commands import apply_commands, command_help
from mailbridge.pipeline.context import ROLE_STAFF, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_case_update
from mailbridge.pipeline.redact import redact_raw
from mailbridge.pipeline.route import ROLE_VENDOR
from mailbridge.pipeline.thread import Thread
from mailbridge.tickets.models import TicketEvent


class VendorMail:
    """Runs first: a target's automatic answer is what carries its ticket number, so the
    robot rules of Classify must not drop it. Everything from a target ends here."""

    name = "vendor"
    description = ("Mail from Operations or a vendor joins its case, keeps its ticket number "
                   "and goes to staff; never to the customer, never answered")

    def __init__(self) -> None:
        self.deduplicate = Deduplicate()
        self.thread = Thread()

    def run(self, ctx: MailContext) -> Outcome | None:
        rules = ctx.rules
        target_name = rules.escalation_target_for_sender(ctx.sender)
        if target_name is None:
            return None
        target = rules.escalation_targets[target_name]
        ctx.classification = classify(
            ctx.mail.message, own_addresses=rules.own_addresses,
            envelope_sender=ctx.envelope_sender,
        )
        kind = ctx.classification.kind
        if kind in (BOUNCE, OWN):
            return None  # the ordinary stages record bounces and drop our own mail
        if kind not in (NORMAL, AUTO_REPLY):
            return Outcome(f"ignored:vendor-{kind}", f"{target_name}: {ctx.classification.reason}")
        automatic = kind == AUTO_REPLY
        duplicate = self.deduplicate.run(ctx)
        if duplicate is not None:
            return duplicate
        self.thread.run(ctx)  # [Caso N], plus-address, References, the target's ticket number
        ctx.sender_role = ROLE_VENDOR
        new_text = strip_quotes(ctx.mail.text)
        ctx.body, ctx.secret_kinds = redact_secrets(new_text)
        if ctx.secret_kinds:
            ctx.inbound.raw, _ = redact_raw(ctx.inbound.raw)
        ticket = ctx.ticket
        if ticket is None:
            return self._unmatched(ctx, target_name, automatic)
        record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        reference = current_reference(ctx.session, ticket.id, target_name)
        learnt = None
        if reference is not None:
            # The new text first: a quoted reminder of ours also names their ticket.
            learnt = note_target_mail(reference, target, automatic=automatic, now=ctx.now,
                                      texts=(new_text, ctx.mail.subject, ctx.mail.text))
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="vendor_mail", at=ctx.now, data={
            "target": target_name, "automatic": automatic, "message_id": ctx.mail.message_id,
            "vendor_ticket": learnt, "threaded_by": ctx.threaded_by,
        }))
        # An automatic answer is worth a word to staff only when it numbers the escalation.
        if not automatic or learnt:
            attachments, skipped = _attachments(ctx, target.max_attachment_bytes)
            relay_to_staff(
                ctx.session, rules, ticket, target_name, reference, automatic=automatic,
                sender=ctx.sender, subject=ctx.mail.subject, body=ctx.body,
                message_id=ctx.mail.message_id, references=ctx.mail.references,
                attachments=attachments, skipped=skipped, inbound_id=ctx.inbound.id,
            )
        what = "auto-answer" if automatic else "answer"
        return Outcome(f"vendor:{what}", f"case {ticket.number} from {target_name} "
                                         f"by {ctx.threaded_by}")

    def _unmatched(self, ctx: MailContext, target_name: str, automatic: bool) -> Outcome:
        """A target's mail about no case we know: staff see it; nobody answers it."""
        if automatic:
            return Outcome("ignored:vendor-auto-without-case", target_name)
        target = ctx.rules.escalation_targets[target_name]
        desk = ctx.rules.desk
        enqueue(ctx.session, Draft(
            template="vendor_unmatched.txt.j2",
            context={"desk": desk, "target": target, "sender": ctx.sender,
                     "subject": ctx.mail.subject, "body": ctx.body},
            to=list(target.notify),
            subject=f"Correo de {target.label} sin caso: {ctx.mail.subject}"[:200],
            from_address=desk.from_address, from_name=desk.from_name,
            in_reply_to=ctx.mail.message_id, references=ctx.mail.references,
            auto_submitted="auto-generated", max_recipients=desk.max_auto_recipients,
        ), kind="vendor_unmatched", ticket_id=None, inbound_id=ctx.inbound.id)
        return Outcome("vendor:without-case", target_name)


def _attachments(ctx: MailContext, budget: int) -> tuple[list[DraftAttachment], list[str]]:
    kept: list[DraftAttachment] = []
    skipped: list[str] = []
    used = 0
    for item in ctx.mail.attachments:
        size = len(item.payload)
        if used + size > budget:
            skipped.append(f"{item.filename} ({size} bytes)")
            continue
        used += size
        kept.append(DraftAttachment(item.filename, item.content_type, item.payload))
    return kept, skipped


class VendorFollowUp:
    """Staff writing to a target on a case: recorded, the wait restarts, and the text is
    not relayed to the customer nor the target's address added to the case's copies."""

    name = "vendor-follow-up"
    description = "Staff mail to Operations or a vendor on a case is not relayed to the customer"

    def run(self, ctx: MailContext) -> Outcome | None:
        ticket = ctx.ticket
        if ticket is None or ctx.sender_role != ROLE_STAFF:
            return None
        rules = ctx.rules
        recipients = [*ctx.mail.to, *ctx.mail.cc]
        targets = list(dict.fromkeys(
            name for name in (rules.escalation_target_for_sender(r) for r in recipients) if name
        ))
        if not targets:
            return None
        record_message(ctx, ticket)
        ticket.updated_at = ctx.now
        if ticket.sender in recipients and ctx.body.strip() and ticket.first_response_at is None:
            ticket.first_response_at = ctx.now
            ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="first_response", at=ctx.now,
                                        data={"by": ctx.sender}))
        for name in targets:
            reference = current_reference(ctx.session, ticket.id, name)
            if reference is not None:
                note_follow_up(reference, ctx.now)
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="vendor_follow_up", at=ctx.now,
                                    data={"targets": targets, "by": ctx.sender,
                                          "message_id": ctx.mail.message_id}))
        results = apply_commands(ctx, ticket)
        if results:
            queue_case_update(
                ctx, ticket, template="staff_commands.txt.j2", kind="command_confirmation",
                context={"results": results, "valid": command_help()}, to=[ctx.sender],
            )
        return Outcome("reply:staff-to-vendor", f"case {ticket.number} → {', '.join(targets)}")


class AutoEscalate:
    """An opening mail whose products route to a target with `auto_escalate` on: the case
    opens as usual (Apply), then goes to the target in the same transaction."""

    name = "auto-escalate"
    description = "Product rules escalate an opening mail to Operations or a vendor"

    def __init__(self) -> None:
        self.apply = Apply()

    def run(self, ctx: MailContext) -> Outcome | None:
        if ctx.ticket is not None or ctx.support_address is None:
            return None
        names = [
            name for name in _targets_by_product(ctx)
            if ctx.support_address.priority in ctx.rules.escalation_targets[name]
            .auto_escalate.priorities
        ]
        if not names:
            return None
        outcome = self.apply.run(ctx)
        ticket = ctx.ticket
        if outcome.name != "ticket" or ticket is None:
            return outcome  # linked to an open look-alike case: nothing new to escalate
        sent = []
        for name in names:
            result = escalate(
                ctx.session, ctx.rules, ticket, name, now=ctx.now,
                evidence_dir=ctx.settings.evidence_dir, origin=ORIGIN_RULE, text=ctx.body,
                inbound_id=ctx.inbound.id,
            )
            if result.status == MISSING:
                target = ctx.rules.escalation_targets[name]
                ask_staff_for_fields(
                    ctx.session, ctx.rules, ticket, result, to=target.notify,
                    reason="El caso se abrió con un producto que se escala automáticamente a "
                           f"{target.label}, pero el correo del cliente no trae estos datos.",
                    inbound_id=ctx.inbound.id,
                )
            sent.append(f"{name}:{result.status}")
        return Outcome(outcome.name, f"{outcome.detail}; escalation {', '.join(sent)}")


def _targets_by_product(ctx: MailContext) -> list[str]:
    rules = ctx.rules
    out = []
    for name, target in rules.escalation_targets.items():
        if not target.auto_escalate.enabled or not target.products:
            continue
        value = ctx.fields.get(target.product_field)
        products = value if isinstance(value, list) else [value] if value else []
        if name in rules.escalation_targets_for_products([str(p) for p in products]):
            out.append(name)
    return out
