"""What the stages share while one stored mail goes through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailbridge import auth
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
ROLE_VENDOR = "vendor"  # Operations or a vendor a case was escalated to

# The flows a mail can take through the stages (each stage names the flows it serves):
# a customer's or staff member's mail, or the answer of Operations or a vendor.
FLOW_CASE = "case"
FLOW_TARGET = "target"


def envelope_sender_of(channel: str, mail_from: str) -> str | None:
    """MAIL FROM for SMTP ("" is the null sender); None where the channel has none."""
    return mail_from.strip("<>") if channel in ("smtp", "lmtp") else None


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
    flow: str = FLOW_CASE
    target_name: str | None = None  # the escalation target that wrote (FLOW_TARGET)
    new_text: str = ""  # the mail's own text, quoted history stripped (before redaction)
    # What the mail's trip decided when no stage stopped it (Apply sets it).
    outcome: Outcome | None = None
    sender_auth: auth.AuthVerdict | None = None  # checked once, when a stage first asks
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
        return envelope_sender_of(self.inbound.channel, self.inbound.mail_from)

    def sender_is_authentic(self) -> bool:
        """Whether this mail's author is who its From says, under `sender_auth`."""
        if self.sender_auth is None:
            settings = self.settings
            self.sender_auth = auth.authenticate(
                # Only DKIM needs the raw bytes; loading them costs a copy of the whole mail.
                policy=settings.sender_auth,
                raw=self.inbound.raw if settings.sender_auth == "dkim" else b"",
                message=self.mail.message,
                sender=self.sender, trusted_authserv_ids=settings.trusted_authserv_id,
                dnsfunc=auth.DKIM_DNSFUNC,
            )
            if not self.sender_auth.passed:
                auth.log.warning("sender not authenticated", extra={
                    "sender": self.sender, "inbound_id": self.inbound.id,
                    "method": self.sender_auth.method, "detail": self.sender_auth.detail[:300],
                })
        return bool(self.sender_auth.passed)

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


@dataclass
class Guess:
    """What the stages will probably see, guessed before the write transaction so that
    their pure text work can be done outside it (`Stage.predict`, parse/ahead.py)."""

    mail: ParsedMail
    rules: Rules
    envelope_sender: str | None
    sender: str
    flow: str
    reply: bool  # In-Reply-To/References or the case token: it will join a case
    staff: bool
    body: str = ""  # the text Redact will keep (Validate reads its fields)
