"""AutoEscalate: product rules escalate a new case to Operations or a vendor by themselves."""

from __future__ import annotations

from mailbridge.escalation.service import MISSING, ORIGIN_RULE, ask_staff_for_fields, escalate
from mailbridge.pipeline.context import FLOW_CASE, MailContext, Outcome


class AutoEscalate:
    """Runs after Apply: a case an opening mail opened, whose products route to a target
    with `auto_escalate` on, goes to the target in the same transaction."""

    name = "auto-escalate"
    description = "Product rules escalate an opening mail to Operations or a vendor"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        if not ctx.opened_case or ctx.support_address is None or ctx.outcome is None:
            return None
        names = [
            name for name in _targets_by_product(ctx)
            if ctx.support_address.priority in ctx.rules.escalation_targets[name]
            .auto_escalate.priorities
        ]
        if not names:
            return None
        outcome, ticket = ctx.outcome, ctx.ticket
        assert ticket is not None
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
