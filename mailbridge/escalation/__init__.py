"""Escalation to Operations and vendors (seed 002): send, follow the answers, remind.

`service.escalate` sends a case to a target of `rules.yaml` (`escalation_targets`) or
says which required fields are missing; `vendors` reads what a target's mail means
(its ticket number, the case, the new state); `reminders.remind_overdue_vendors` is
the idempotent sweep a scheduler or `mailbridge escalation sweep` calls. The pipeline
side is in `mailbridge/pipeline/stages/`: from_target.py, target_answer.py,
vendor_follow_up.py and auto_escalate.py.
"""

from mailbridge.escalation.reminders import remind_overdue_vendors
from mailbridge.escalation.service import EscalationResult, escalate

__all__ = ["EscalationResult", "escalate", "remind_overdue_vendors"]
