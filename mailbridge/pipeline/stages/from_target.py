"""FromTarget: mail from Operations or a vendor takes the target flow."""

from __future__ import annotations

from mailbridge.parse.ahead import Ahead
from mailbridge.pipeline.context import (
    FLOW_CASE,
    FLOW_TARGET,
    ROLE_VENDOR,
    Guess,
    MailContext,
    Outcome,
)


class FromTarget:
    """Runs first: a target's automatic answer is what carries its ticket number, so the
    robot rules of Classify must let it through. Everything from a target ends in
    TargetAnswer, never reaches the customer and is never answered."""

    name = "from-target"
    description = "Mail from Operations or a vendor takes the target flow"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        target_name = ctx.rules.escalation_target_for_sender(ctx.sender)
        if target_name is not None:
            ctx.flow, ctx.target_name, ctx.sender_role = FLOW_TARGET, target_name, ROLE_VENDOR
        return None

    def predict(self, ahead: Ahead, guess: Guess) -> None:
        if guess.rules.escalation_target_for_sender(guess.sender) is not None:
            guess.flow = FLOW_TARGET
