"""The demo rules.yaml for tests, with or without the desk's people.

The shipped rules name who works each queue (`queues.*.notify`): they hear of every new
case, follow-ups and SLA warnings. Tests about something else (threading, limits, crashes)
count the mail a case sends and would count those notices too; they run on the "quiet
desk", the same rules with nobody in the queues. The desk's own tests use DEMO_RULES.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_RULES = REPO / "rules.yaml"
_NOTIFY_RE = re.compile(r"^(    notify: )\[[^\]]*\]$", re.MULTILINE)


def quiet_desk_text(text: str | None = None) -> str:
    """The rules text with every queue's `notify` list emptied (targets keep theirs)."""
    text = text if text is not None else DEMO_RULES.read_text(encoding="utf-8")
    queues_start = text.index("\nqueues:\n")
    queues_end = text.index("\npriorities:", queues_start)
    section = _NOTIFY_RE.sub(r"\1[]", text[queues_start:queues_end])
    assert "agentes-" not in section
    return text[:queues_start] + section + text[queues_end:]


def write_quiet_desk(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rules-quiet-desk.yaml"
    path.write_text(quiet_desk_text(), encoding="utf-8")
    return path
