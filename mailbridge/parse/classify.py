"""What kind of mail is this: normal, auto-reply, bounce, list, bulk (RFC 3834)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

NORMAL = "normal"
AUTO_REPLY = "auto-reply"
BOUNCE = "bounce"
LIST = "list"
BULK = "bulk"
OWN = "own"


@dataclass(frozen=True)
class Classification:
    kind: str
    reason: str = ""

    @property
    def may_open_case(self) -> bool:
        return self.kind == NORMAL

    @property
    def may_get_auto_reply(self) -> bool:
        return self.kind == NORMAL


def classify(message: Message, *, own_addresses: frozenset[str] = frozenset()) -> Classification:
    """Decide from the headers alone; never raises."""

    def get(name: str) -> str:
        try:
            return str(message.get(name, "") or "").strip().lower()
        except Exception:
            return ""

    loop = get("x-loop")
    if loop and any(addr in loop for addr in own_addresses):
        return Classification(OWN, "X-Loop carries our address")
    ctype = get("content-type")
    if "multipart/report" in ctype and "delivery-status" in ctype:
        return Classification(BOUNCE, "multipart/report delivery-status")
    auto = get("auto-submitted")
    if auto and auto != "no":
        return Classification(AUTO_REPLY, f"Auto-Submitted: {auto}")
    if get("x-autoreply") or get("x-autorespond") or get("x-auto-response-suppress") == "all":
        return Classification(AUTO_REPLY, "X-Autoreply header")
    precedence = get("precedence")
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return Classification(BULK if precedence != "list" else LIST, f"Precedence: {precedence}")
    if get("list-id") or get("list-unsubscribe"):
        return Classification(LIST, "List-Id/List-Unsubscribe")
    sender = get("from")
    if get("return-path") in ("<>", "") and ("mailer-daemon" in sender or "postmaster" in sender):
        return Classification(BOUNCE, "null sender from mailer-daemon")
    return Classification(NORMAL)
