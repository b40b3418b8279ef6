"""The pipeline's stages in order, written once. A stage returning an Outcome ends the trip.

Each stage names the flows it serves (`flows`): a mail from a customer or staff member
goes through every stage of `FLOW_CASE`; the answer of Operations or a vendor
(`FLOW_TARGET`, decided by the first stage) through those of `FLOW_TARGET`, in the same
order. A stage's pure text work can be done ahead of the write transaction: its
`predict` says what it will compute (parse/ahead.py); `work_ahead` asks them in order.
"""

from __future__ import annotations

from typing import Protocol

from mailbridge.parse.ahead import Ahead
from mailbridge.pipeline.context import Guess, MailContext, Outcome
from mailbridge.pipeline.stages.apply import Apply
from mailbridge.pipeline.stages.auto_escalate import AutoEscalate
from mailbridge.pipeline.stages.classify import Classify
from mailbridge.pipeline.stages.closed_case import ClosedCase
from mailbridge.pipeline.stages.deduplicate import Deduplicate
from mailbridge.pipeline.stages.escalate_request import EscalateRequest
from mailbridge.pipeline.stages.from_target import FromTarget
from mailbridge.pipeline.stages.redact import Redact
from mailbridge.pipeline.stages.refuse_encrypted import RefuseEncrypted
from mailbridge.pipeline.stages.route import Route
from mailbridge.pipeline.stages.senders import Senders
from mailbridge.pipeline.stages.target_answer import TargetAnswer
from mailbridge.pipeline.stages.thread import Thread
from mailbridge.pipeline.stages.validate import Validate
from mailbridge.pipeline.stages.vendor_follow_up import VendorFollowUp


class Stage(Protocol):
    name: str
    description: str
    flows: frozenset[str]

    def run(self, ctx: MailContext) -> Outcome | None: ...


class Predicting(Protocol):
    def predict(self, ahead: Ahead, guess: Guess) -> None: ...


STAGES: list[Stage] = [
    FromTarget(),      # Operations/vendors: their mail takes the target flow
    Classify(),        # robots, bounces, lists, our own mail (a target's auto-answer counts)
    Deduplicate(),     # the same Message-ID twice
    Thread(),          # [Caso N], soporte+N@, In-Reply-To/References, a vendor's ticket number
    Route(),           # address → priority; tenant; staff or customer
    Senders(),         # registered contacts only; shared mailboxes and strangers told
    Redact(),          # new text only, staff commands apart, secrets out
    TargetAnswer(),    # a target's mail: on its case, to staff only; never to the customer
    RefuseEncrypted(), # S/MIME and PGP openings answered
    Validate(),        # the opening template's fields
    ClosedCase(),      # closed cases are not reopened
    EscalateRequest(), # a customer asking to escalate: decided by the rules, answered
    VendorFollowUp(),  # staff writing to a vendor: recorded, not relayed to the customer
    Apply(),           # the case, its message, evidence and the outbox
    AutoEscalate(),    # a new case whose product routes to a vendor (rule): sent to it
]


def stages_for(flow: str, stages: list[Stage] | None = None) -> list[Stage]:
    """The stages a flow goes through, in the one declared order."""
    return [s for s in (STAGES if stages is None else stages)
            if flow in getattr(s, "flows", (flow,))]


def work_ahead(ahead: Ahead, guess: Guess, stages: list[Stage] | None = None) -> None:
    """The stages' pure text work, predicted and done before the write transaction.

    Each stage that has one predicts its own calls, in stage order, for the flow the mail
    will probably take; where a guess is wrong, the stage computes as it always did.
    """
    for stage in stages_for(guess.flow, stages):
        predict = getattr(stage, "predict", None)
        if predict is not None:
            predict(ahead, guess)
