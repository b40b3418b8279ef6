"""The pipeline's stages in order. A stage returning an Outcome ends the trip there."""

from __future__ import annotations

from typing import Protocol

from mailbridge.pipeline.apply import Apply
from mailbridge.pipeline.classify import Classify, Deduplicate
from mailbridge.pipeline.content import ClosedCase, Redact, RefuseEncrypted, Validate
from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.pipeline.escalate_request import EscalateRequest
from mailbridge.pipeline.route import Route, Senders
from mailbridge.pipeline.thread import Thread
from mailbridge.pipeline.vendor import AutoEscalate, VendorFollowUp, VendorMail


class Stage(Protocol):
    name: str
    description: str

    def run(self, ctx: MailContext) -> Outcome | None: ...


STAGES: list[Stage] = [
    VendorMail(),      # Operations/vendors: on the case (their auto-answers too), to staff only
    Classify(),        # robots, bounces, lists, our own mail
    Deduplicate(),     # the same Message-ID twice
    Thread(),          # [Caso N], soporte+N@, In-Reply-To/References
    Route(),           # address → priority; tenant; staff or customer
    Senders(),         # registered contacts only; shared mailboxes and strangers told
    Redact(),          # new text only, staff commands apart, secrets out
    RefuseEncrypted(), # S/MIME and PGP openings answered
    Validate(),        # the opening template's fields
    ClosedCase(),      # closed cases are not reopened
    EscalateRequest(), # a customer asking to escalate: decided by the rules, answered
    VendorFollowUp(),  # staff writing to a vendor: recorded, not relayed to the customer
    AutoEscalate(),    # an opening whose product routes to a vendor (rule): Apply, then send
    Apply(),           # the case, its message, evidence and the outbox
]
