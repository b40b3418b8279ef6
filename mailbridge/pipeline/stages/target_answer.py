"""TargetAnswer: mail from Operations or a vendor joins its case and goes to staff only."""

from __future__ import annotations

from mailbridge.escalation.service import relay_to_staff
from mailbridge.escalation.vendors import current_reference, note_target_mail
from mailbridge.outbound.compose import Answering, Mail, compose
from mailbridge.outbound.render import DraftAttachment
from mailbridge.parse.classify import AUTO_REPLY
from mailbridge.pipeline.cases import record_message
from mailbridge.pipeline.context import FLOW_TARGET, MailContext, Outcome
from mailbridge.tickets.models import TicketEvent


class TargetAnswer:
    """Mail from Operations or a vendor (after Classify, Deduplicate, Thread and Redact in
    the target flow): on its case with the target's ticket number, relayed to staff."""

    name = "vendor"
    description = ("Mail from Operations or a vendor joins its case, keeps its ticket number "
                   "and goes to staff; never to the customer, never answered")
    flows = frozenset({FLOW_TARGET})

    def run(self, ctx: MailContext) -> Outcome | None:
        rules = ctx.rules
        target_name = ctx.target_name
        assert target_name is not None
        target = rules.escalation_targets[target_name]
        automatic = ctx.classification is not None and ctx.classification.kind == AUTO_REPLY
        new_text = ctx.new_text
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
        compose(ctx.session, ctx.rules, Mail(
            kind="vendor_unmatched", template="vendor_unmatched.txt.j2",
            context={"target": target, "sender": ctx.sender,
                     "subject": ctx.mail.subject, "body": ctx.body},
            to=list(target.notify),
            subject=f"Correo de {target.label} sin caso: {ctx.mail.subject}"[:200],
            answering=Answering(ctx.mail.message_id, ctx.mail.references, ctx.inbound.id),
        ), now=ctx.now)
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


