"""What the stages share while one stored mail goes through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailbridge.parse.classify import Classification
from mailbridge.parse.mime import ParsedMail
from mailbridge.parse.replies import StaffCommand
from mailbridge.rules import Rules, SupportAddress, Tenant
from mailbridge.settings import Settings
from mailbridge.spool import InboundMail
from mailbridge.tickets.models import Ticket

ROLE_CUSTOMER = "customer"
ROLE_STAFF = "staff"
ROLE_EXTERNAL = "external"  # on the thread, but neither staff nor a known contact


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
    opened_case: bool = False  # this mail opened ctx.ticket (counted once committed)
    threaded_by: str | None = None
    support_address: SupportAddress | None = None
    tenant_id: str | None = None
    tenant: Tenant | None = None
    sender_role: str = ROLE_CUSTOMER
    body: str = ""
    commands: list[StaffCommand] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    fields_raw: dict[str, str] = field(default_factory=dict)
    missing_fields: list[str] = field(default_factory=list)
    severity: str | None = None
    secret_kinds: list[str] = field(default_factory=list)
    fields_completed: bool = False

    @property
    def sender(self) -> str:
        """The author's address; "" when there is none usable (RFC 5321: at most 254)."""
        address = self.mail.from_addr or self.inbound.mail_from.lower().strip("<>")
        return address if len(address) <= 254 else ""

    @property
    def envelope_sender(self) -> str | None:
        """MAIL FROM for SMTP ("" is the null sender); None where the channel has none."""
        if self.inbound.channel == "smtp":
            return self.inbound.mail_from.strip("<>")
        return None

    @property
    def may_auto_reply(self) -> bool:
        """Never answer robots, bounces, or a null envelope sender (RFC 3834)."""
        if self.classification is not None and not self.classification.may_get_auto_reply:
            return False
        if self.envelope_sender == "":
            return False
        sender = self.sender
        return bool(sender) and "@" in sender and sender not in self.rules.own_addresses


@dataclass(frozen=True)
class Outcome:
    """A stage's decision to stop here; `name` lands on the inbound row."""

    name: str
    detail: str = ""
