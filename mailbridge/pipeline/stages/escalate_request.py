"""EscalateRequest: a customer asking to escalate by mail is answered with the decision.

The request is a mail to the escalation address (`rules.escalation.address`) or a reply on
the case with one of `rules.escalation.request_keywords` in its new text. The decision
comes from the same rules the scheduler uses (`sla.escalation`); when the case is eligible
it is escalated now. The mail then goes on to `Apply`, which records it on the case.
"""

from __future__ import annotations

from mailbridge.pipeline.context import FLOW_CASE, ROLE_CUSTOMER, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_auto_reply
from mailbridge.sla.escalation import (
    ACTION_ESCALATION,
    escalate,
    mentions,
    next_seq,
    requested_decision,
)
from mailbridge.tickets.models import STATUS_CLOSED, TicketEvent


def _to_escalation_address(ctx: MailContext) -> bool:
    recipients = [*ctx.inbound.rcpt_tos, *ctx.mail.to, *ctx.mail.cc]
    return any(ctx.rules.is_escalation_address(r) for r in recipients)


class EscalateRequest:
    name = "escalate-request"
    description = "A customer's escalation request is decided by the rules and answered"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        if ctx.sender_role != ROLE_CUSTOMER:
            return None  # staff escalate with «#escalar»; strangers are not heard here
        rules = ctx.rules
        by_address = _to_escalation_address(ctx)
        ticket = ctx.ticket
        if ticket is None:
            if not by_address:
                return None
            # Nothing to escalate without a case: ask for its number, open nothing.
            queue_auto_reply(
                ctx, template="escalation_decision.txt.j2", kind="escalation_decision",
                context={"without_case": True, "subject": ctx.mail.subject},
                subject=f"Indique el número de caso: {ctx.mail.subject}"[:200],
            )
            return Outcome("reply:escalation-without-case", ctx.sender)
        if not by_address and not mentions(rules.escalation.request_regex(), ctx.body):
            return None
        if ticket.status == STATUS_CLOSED:
            return None  # the closed-case stage answers
        seq = next_seq(ctx.session, ticket.id, ACTION_ESCALATION)  # before the decision
        about_rca = mentions(rules.escalation.rca_regex(), ctx.body, ctx.mail.subject)
        tenant = ctx.tenant or rules.tenant(ticket.tenant_id)
        decision = requested_decision(ctx.session, rules, ticket, tenant, ctx.now,
                                      about_rca=about_rca)
        escalated = None
        if decision.eligible:
            escalated = escalate(ctx.session, rules, ticket, tenant, decision, now=ctx.now,
                                 trigger="customer", seq=seq, requested_by=ctx.sender)
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="escalation_request", at=ctx.now,
                                    data={
            "by": ctx.sender, "via": "address" if by_address else "keyword",
            "rca": about_rca, "eligible": decision.eligible, "level": decision.target_level,
            "escalated": escalated is not None, "reason": decision.reason_es,
            "eligible_from": (decision.eligible_from.isoformat()
                              if decision.eligible_from else None),
        }))  # fmt: skip
        queue_auto_reply(
            ctx, template="escalation_decision.txt.j2", kind="escalation_decision",
            ticket=ticket,
            context={"without_case": False, "decision": decision,
                     "escalated": escalated is not None,
                     "level_label": (rules.escalation.label(decision.target_level)
                                     if decision.target_level else None)},
        )
        return None
