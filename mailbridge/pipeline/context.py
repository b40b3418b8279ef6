"""What the stages share while one stored mail goes through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailbridge.parse.classify import Classification
from mailbridge.parse.mime import ParsedMail
from mailbridge.rules import Rules, SupportAddress, Tenant
from mailbridge.settings import Settings
from mailbridge.spool import InboundMail
from mailbridge.tickets.models import Ticket


@dataclass
class MailContext:
    """One mail's trip: inputs first, then what each stage decided."""

    session: Session
    inbound: InboundMail
    mail: ParsedMail
    rules: Rules
    settings: Settings
    now: datetime
    # Decisions, filled in stage order.
    classification: Classification | None = None
    ticket: Ticket | None = None
    threaded_by: str | None = None
    support_address: SupportAddress | None = None
    tenant_id: str | None = None
    tenant: Tenant | None = None
    sender_role: str = "customer"  # customer | staff | system
    body: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    fields_raw: dict[str, str] = field(default_factory=dict)
    missing_fields: list[str] = field(default_factory=list)
    severity: str | None = None
    secret_kinds: list[str] = field(default_factory=list)
    fields_completed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def sender(self) -> str:
        return self.mail.from_addr or self.inbound.mail_from.lower()

    @property
    def may_auto_reply(self) -> bool:
        """Never answer robots, bounces, or a null envelope sender (RFC 3834)."""
        if self.classification is not None and not self.classification.may_get_auto_reply:
            return False
        if self.inbound.channel == "smtp" and self.inbound.mail_from in ("", "<>"):
            return False
        return bool(self.sender) and "@" in self.sender


@dataclass(frozen=True)
class Outcome:
    """A stage's decision to stop here; `name` lands on the inbound row."""

    name: str
    detail: str = ""
