"""rules.yaml → typed, validated objects; errors name the file, line and key."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailbridge.parse.template import FieldSpec
from mailbridge.resources import data_dir
from mailbridge.service_levels.clocks import PlanSLA
from mailbridge.service_levels.config import ClosingConfig, EscalationConfig

log = logging.getLogger(__name__)

Priority = Literal["A", "B", "C"]
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _check_email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL_RE.match(value):
        raise ValueError(f"not an e-mail address: {value!r}")
    return value


def _check_zone(value: str) -> str:
    if value not in available_timezones():
        raise ValueError(f"unknown time zone {value!r} (use an IANA name, e.g. America/Bogota)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Desk(_Strict):
    name: str = "Mesa de Soporte"
    staff_domains: list[str] = Field(min_length=1)
    from_address: str
    from_name: str = "Mesa de Soporte"
    case_token: str = "Caso"
    shared_mailboxes: list[str] = Field(default_factory=list)
    # At most this many automatic mails to one address per hour (RFC 3834 §2):
    # refusals and notices, and apart from them the acknowledgements of new cases
    # (a registered contact may open many cases; a forged flood may not bounce back).
    auto_reply_limit_per_hour: int = Field(default=5, ge=1)
    ack_limit_per_hour: int = Field(default=60, ge=1)
    # A new mail whose subject matches an open case of the same tenant within
    # this window is linked to that case (seed 004: one subject per case).
    duplicate_window_hours: float = Field(default=72, ge=0)
    # No automatic mail goes to more people than this (sender and copies together): a mail
    # with 30 addresses in Cc must not make the desk mail 31 (hostile round 2).
    max_auto_recipients: int = Field(default=10, ge=1, le=100)
    # The desk's own zone: times in mail to staff (a case's due time) are written in it.
    timezone: str = "America/Bogota"
    # A response clock is "en_riesgo" once this share of its target has gone by; then its
    # owner (else its queue) is warned, once (seed 003's targets kept, not just measured).
    sla_warning_share: float = Field(default=0.75, gt=0, lt=1)

    _addr = field_validator("from_address")(_check_email)

    _zone_name = field_validator("timezone")(_check_zone)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @field_validator("staff_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lower() for d in value]

    @field_validator("shared_mailboxes")
    @classmethod
    def _lower_locals(cls, value: list[str]) -> list[str]:
        return [d.strip().lower() for d in value]

    @property
    def from_domain(self) -> str:
        return self.from_address.rsplit("@", 1)[1]


class Queue(_Strict):
    """A queue of the desk and the people who work it (a list, or agents' addresses):
    they hear of every new case in it, of customers' follow-ups and vendors' answers on
    the cases nobody owns yet, and of SLA warnings on those."""

    label: str | None = None
    notify: list[str] = Field(default_factory=list)

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: list[str]) -> list[str]:
        return [_check_email(v) for v in value]


class SupportAddress(_Strict):
    address: str
    priority: Priority
    queue: str

    _addr = field_validator("address")(_check_email)


class PriorityLevel(_Strict):
    label: str
    severity: Literal["URGENTE", "ALTA", "MEDIA", "BAJA"]


class Plan(_Strict):
    label: str
    max_contacts: int = Field(ge=1)
    # Service hours and response targets (seed 003); without it cases get no response clock.
    sla: PlanSLA | None = None


class Tenant(_Strict):
    id: str
    name: str
    plan: str
    timezone: str
    country: str = Field(min_length=2, max_length=2)
    contacts: list[str] = Field(default_factory=list)
    executive: str
    # Public holidays are the country's (and this subdivision's, e.g. a state); the desk is
    # also closed for this tenant on `closed_dates`.
    subdivision: str | None = None
    closed_dates: list[date] = Field(default_factory=list)
    # The customer's own mail domains: a colleague copied from one of them receives the
    # case's mail; anyone else copied is recorded on the case but not mailed until staff
    # add them («#cc persona@dominio»).
    domains: list[str] = Field(default_factory=list)

    @field_validator("contacts")
    @classmethod
    def _contacts(cls, value: list[str]) -> list[str]:
        return [_check_email(v) for v in value]

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            entry = entry.strip().lower().lstrip("@")
            if not re.fullmatch(r"[^\s@.]+(\.[^\s@.]+)+", entry):
                raise ValueError(f"not a mail domain: {entry!r}")
            out.append(entry)
        return out

    def is_colleague(self, address: str) -> bool:
        """A registered contact of this tenant, or an address in one of its own domains."""
        address = address.strip().lower()
        return address in self.contacts or address.rpartition("@")[2] in self.domains

    _exec = field_validator("executive")(_check_email)

    _zone_name = field_validator("timezone")(_check_zone)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class OpeningTemplate(_Strict):
    """The fields an opening mail must carry (seed 000)."""

    fields: list[FieldSpec] = Field(default_factory=list)

    @field_validator("fields")
    @classmethod
    def _unique_keys(cls, value: list[FieldSpec]) -> list[FieldSpec]:
        seen: set[str] = set()
        for spec in value:
            if spec.key in seen:
                raise ValueError(f"field key {spec.key!r} is declared twice")
            seen.add(spec.key)
        return value

    def label(self, key: str) -> str:
        for spec in self.fields:
            if spec.key == key:
                return spec.label
        return key


# -- escalation to Operations and vendors (seed 002) ---------------------------------------

# Where a target field's value can come from besides the case's template fields.
ESCALATION_VALUE_SOURCES = frozenset({
    "tenant.name", "tenant.id", "case.number", "case.subject", "case.sender",
    "case.priority", "case.priority_label", "case.severity", "escalated_by",
})
_TARGET_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_TEMPLATES_DIR = data_dir("templates", "ack.txt.j2")


class EscalationField(_Strict):
    """One field an escalation target requires, and where its value comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    key: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    label: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list)
    required: bool = True
    # Case template keys or ESCALATION_VALUE_SOURCES, first with a value wins; staff
    # `Etiqueta: valor` lines and CLI --field override them.
    sources: list[str] = Field(default_factory=list, alias="from")
    default: str | None = None

    def spec(self) -> FieldSpec:
        return FieldSpec(key=self.key, label=self.label, synonyms=self.synonyms,
                         required=self.required)


class AutoEscalation(_Strict):
    """Escalate an opening mail by itself when its products route to the target."""

    enabled: bool = False
    priorities: list[Priority] = Field(default_factory=lambda: ["A", "B", "C"])


class VendorReminders(_Strict):
    """After `reply_within_hours` without an answer: remind, then every `every_hours`."""

    every_hours: float = Field(default=8, gt=0)
    max: int = Field(default=3, ge=0)


class EscalationTarget(_Strict):
    """Operations (internal), a vendor that opens its own ticket, or one that follows the thread."""

    label: str = Field(min_length=1)
    kind: Literal["internal", "ticketing_vendor", "thread_vendor"]
    address: str
    # Addresses or domains whose mail is this target's answer (default: the address).
    senders: list[str] = Field(default_factory=list)
    template: str = Field(pattern=r"^[\w.-]+\.j2$")
    fields: list[EscalationField] = Field(default_factory=list)
    products: list[str] = Field(default_factory=list)
    product_field: str = "productos"
    auto_escalate: AutoEscalation = Field(default_factory=AutoEscalation)
    # Finds the target's own ticket number ("Ticket #12345") in its answers: one group.
    ticket_pattern: str | None = None
    reply_within_hours: float = Field(default=8, gt=0)
    reminders: VendorReminders = Field(default_factory=VendorReminders)
    # Staff told about answers and silence when no staff member is on the case.
    notify: list[str] = Field(min_length=1)
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)

    _addr = field_validator("address")(_check_email)

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: list[str]) -> list[str]:
        return [_check_email(v) for v in value]

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            entry = entry.strip().lower()
            if "@" in entry:
                entry = _check_email(entry)
            elif not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", entry):
                raise ValueError(f"not an address or a domain: {entry!r}")
            out.append(entry)
        return out

    @field_validator("ticket_pattern")
    @classmethod
    def _ticket_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        if compiled.groups != 1:
            raise ValueError("the pattern needs exactly one group: the ticket number")
        return value

    @cached_property
    def ticket_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.ticket_pattern) if self.ticket_pattern else None

    @property
    def sender_entries(self) -> list[str]:
        return self.senders or [self.address]


class Rules(_Strict):
    """The whole rules file."""

    desk: Desk
    addresses: list[SupportAddress] = Field(min_length=1)
    # The desk's queues by name (the `queue` of an address), each with its people.
    queues: dict[str, Queue] = Field(default_factory=dict)
    priorities: dict[Priority, PriorityLevel]
    template: OpeningTemplate = Field(default_factory=OpeningTemplate)
    tenant_pattern: str
    # Service levels (seeds 000, 001, 003): escalation to the commercial executive and one
    # level up, customers' escalation requests, and when a resolved case closes.
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    closing: ClosingConfig = Field(default_factory=ClosingConfig)
    plans: dict[str, Plan]
    tenants: list[Tenant] = Field(default_factory=list)
    # Operations and vendors a case can be escalated to (seed 002), by name.
    escalation_targets: dict[str, EscalationTarget] = Field(default_factory=dict)

    @field_validator("tenant_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Rules:
        seen: set[str] = set()
        for index, entry in enumerate(self.addresses):
            if entry.address in seen:
                raise _PlacedError(("addresses", index, "address"), "address listed twice")
            seen.add(entry.address)
            if self.queues and entry.queue not in self.queues:
                raise _PlacedError(("addresses", index, "queue"),
                                   f"unknown queue {entry.queue!r} "
                                   f"(known: {', '.join(sorted(self.queues))})")
        ids: set[str] = set()
        for index, tenant in enumerate(self.tenants):
            if tenant.id.upper() in ids:
                raise _PlacedError(("tenants", index, "id"), f"tenant {tenant.id} listed twice")
            ids.add(tenant.id.upper())
            if not re.fullmatch(self.tenant_pattern, tenant.id, re.IGNORECASE):
                raise _PlacedError(
                    ("tenants", index, "id"), f"{tenant.id!r} does not match tenant_pattern"
                )
            plan = self.plans.get(tenant.plan)
            if plan is None:
                raise _PlacedError(
                    ("tenants", index, "plan"),
                    f"unknown plan {tenant.plan!r} (known: {', '.join(sorted(self.plans))})",
                )
            if plan.sla is not None:
                try:  # the tenant's business calendar must be buildable (holidays known)
                    plan.sla.calendar(tenant.timezone, country=tenant.country,
                                      subdivision=tenant.subdivision,
                                      closed_dates=tenant.closed_dates)
                except ValueError as exc:
                    key = "subdivision" if tenant.subdivision else "country"
                    raise _PlacedError(("tenants", index, key), str(exc)) from None
            if len(tenant.contacts) > plan.max_contacts:
                raise _PlacedError(
                    ("tenants", index, "contacts"),
                    f"{len(tenant.contacts)} contacts but plan {tenant.plan!r} allows "
                    f"{plan.max_contacts}",
                )
        for priority in ("A", "B", "C"):
            if priority not in self.priorities:
                raise _PlacedError(("priorities",), f"priority {priority} is not defined")
        if self.escalation.address is not None and self.escalation.address in seen:
            raise _PlacedError(("escalation", "address"),
                               "the escalation address cannot also be a support address")
        template_keys = {spec.key for spec in self.template.fields}
        for line, keys in self.escalation.template_fields.items():
            unknown = [key for key in keys if key not in template_keys]
            if template_keys and unknown:
                raise _PlacedError(("escalation", "template_fields", line),
                                   f"{unknown[0]!r} is not a template field key")
        return self

    # Lookups used on the hot path, computed once per loaded rules object.
    @cached_property
    def tenant_regex(self) -> re.Pattern[str]:
        return re.compile(rf"(?<![\w-])({self.tenant_pattern})(?![\w-])", re.IGNORECASE)

    @cached_property
    def _address_map(self) -> dict[str, SupportAddress]:
        return {a.address: a for a in self.addresses}

    @cached_property
    def _tenant_map(self) -> dict[str, Tenant]:
        return {t.id.upper(): t for t in self.tenants}

    def support_address(self, address: str) -> SupportAddress | None:
        """The support address an envelope recipient stands for (plus-tags allowed)."""
        address = address.strip().lower()
        found = self._address_map.get(address)
        if found is not None:
            return found
        local, _, domain = address.partition("@")
        if "+" in local:
            return self._address_map.get(f"{local.split('+', 1)[0]}@{domain}")
        return None

    def accepts_recipient(self, address: str) -> bool:
        """Whether the SMTP listener takes mail for this recipient."""
        if self.support_address(address) is not None:
            return True
        if self.is_escalation_address(address):
            return True
        local, _, domain = address.strip().lower().partition("@")
        # Our own from-address with a case tag (soporte+123@…) carries replies.
        own_local, _, own_domain = self.desk.from_address.partition("@")
        return domain == own_domain and local.split("+", 1)[0] == own_local

    def is_escalation_address(self, address: str) -> bool:
        """Whether customers write to this address to ask for an escalation (plus-tags allowed)."""
        wanted = self.escalation.address
        if not wanted or not address:
            return False
        local, _, domain = address.strip().lower().partition("@")
        return f"{local.split('+', 1)[0]}@{domain}" == wanted

    def queue_notify(self, queue: str | None) -> list[str]:
        """The people of a queue (empty when the queue has none or is unknown)."""
        found = self.queues.get(queue or "")
        return list(found.notify) if found is not None else []

    def tenant(self, tenant_id: str | None) -> Tenant | None:
        return self._tenant_map.get(tenant_id.upper()) if tenant_id else None

    def find_tenant_id(self, subject: str) -> str | None:
        match = self.tenant_regex.search(subject or "")
        return match.group(1).upper() if match else None

    def is_staff(self, address: str) -> bool:
        domain = address.rsplit("@", 1)[-1].lower()
        return domain in self.desk.staff_domains

    def is_shared_mailbox(self, address: str) -> bool:
        local = address.split("@", 1)[0].lower().split("+", 1)[0]
        return local in self.desk.shared_mailboxes

    @cached_property
    def _contact_map(self) -> dict[str, list[Tenant]]:
        out: dict[str, list[Tenant]] = {}
        for tenant in self.tenants:
            for contact in tenant.contacts:
                out.setdefault(contact, []).append(tenant)
        return out

    def tenants_of_contact(self, address: str) -> list[Tenant]:
        """The tenants for which this address is a registered contact."""
        return self._contact_map.get(address.strip().lower(), [])

    @cached_property
    def own_addresses(self) -> frozenset[str]:
        return frozenset({
            self.desk.from_address,
            *(a.address for a in self.addresses),
            *([self.escalation.address] if self.escalation.address else []),
        })

    @model_validator(mode="after")
    def _escalation_references(self) -> Rules:
        template_keys = {spec.key for spec in self.template.fields}
        own_domains = {a.rsplit("@", 1)[1] for a in self.own_addresses}
        for name, target in self.escalation_targets.items():
            at: tuple[str | int, ...] = ("escalation_targets", name)
            if not _TARGET_NAME_RE.match(name):
                raise _PlacedError(at, "a target name is lower-case letters, digits, - or _ "
                                   "(staff write it: «#escalar NAME»)")
            if target.kind == "ticketing_vendor" and not target.ticket_pattern:
                raise _PlacedError((*at, "ticket_pattern"),
                                   "a ticketing_vendor needs ticket_pattern (its ticket number)")
            if target.address in self.own_addresses:
                raise _PlacedError((*at, "address"), "a target cannot be one of our addresses")
            for index, entry in enumerate(target.senders):
                if "@" not in entry and (entry in own_domains or entry in self.desk.staff_domains):
                    raise _PlacedError((*at, "senders", index),
                                       f"{entry} is our own or a staff domain; list addresses")
            if target.product_field not in template_keys:
                raise _PlacedError((*at, "product_field"),
                                   f"{target.product_field!r} is not a template field key")
            keys: set[str] = set()
            for index, spec in enumerate(target.fields):
                if spec.key in keys:
                    raise _PlacedError((*at, "fields", index, "key"), f"{spec.key!r} twice")
                keys.add(spec.key)
                for source in spec.sources:
                    if source not in template_keys and source not in ESCALATION_VALUE_SOURCES:
                        raise _PlacedError(
                            (*at, "fields", index, "from"),
                            f"unknown source {source!r} (template keys, or "
                            f"{', '.join(sorted(ESCALATION_VALUE_SOURCES))})",
                        )
            if _TEMPLATES_DIR.is_dir() and not (_TEMPLATES_DIR / target.template).is_file():
                raise _PlacedError((*at, "template"), f"no template {target.template!r}")
        return self

    def escalation_target(self, name: str) -> EscalationTarget | None:
        return self.escalation_targets.get((name or "").strip().casefold())

    @cached_property
    def _escalation_senders(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, target in self.escalation_targets.items():
            for entry in target.sender_entries:
                out.setdefault(entry, name)
        return out

    def escalation_target_for_sender(self, address: str) -> str | None:
        """The target whose answer a mail from `address` is (exact address, then domain)."""
        address = (address or "").strip().lower()
        if "@" not in address:
            return None
        local, domain = address.rsplit("@", 1)
        base = f"{local.split('+', 1)[0]}@{domain}"
        senders = self._escalation_senders
        return senders.get(address) or senders.get(base) or senders.get(domain)

    def escalation_targets_for_products(self, products: list[str]) -> list[str]:
        """Targets whose `products` name one of these (case-insensitive, whole words)."""
        found = []
        for name, target in self.escalation_targets.items():
            for product in target.products:
                word = re.compile(rf"(?<![\w-]){re.escape(product)}(?![\w-])", re.IGNORECASE)
                if any(word.search(str(p)) for p in products):
                    found.append(name)
                    break
        return found


class _PlacedError(ValueError):
    """A cross-reference error that knows which key it belongs to."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"{place}: {self.key}: {self.message}"


class RulesError(Exception):
    """rules.yaml is unreadable or invalid; `problems` says where."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def yaml_line_index(
    node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]
) -> None:
    """Map every key path in a composed YAML tree to its 1-based line."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            yaml_line_index(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yaml_line_index(item, (*path, index), out)


def nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def parse_rules(text: str, *, source: str = "rules.yaml") -> Rules:
    """Validate rules text; raise RulesError listing every problem with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError([ConfigProblem(source, line, "(syntax)", problem)]) from exc
    if not isinstance(data, dict):
        raise RulesError([ConfigProblem(source, 1, "(top)", "the file must be a mapping")])
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        yaml_line_index(node, (), lines)
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            ctx_error = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_error, _PlacedError):
                loc, message = ctx_error.loc, ctx_error.message
            else:
                message = err["msg"]
            key = ".".join(str(p) for p in loc) or "(top)"
            problems.append(ConfigProblem(source, nearest_line(lines, loc), key, message))
        raise RulesError(problems) from None


def load_rules(path: Path) -> Rules:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = ConfigProblem(str(path), None, "(file)", exc.strerror or str(exc))
        raise RulesError([problem]) from exc
    return parse_rules(text, source=str(path))


class RulesHolder:
    """The rules in force; replaced whole on SIGHUP when the new file is valid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: Rules = load_rules(path)

    def __call__(self) -> Rules:
        return self.current

    def reload(self) -> bool:
        try:
            self.current = load_rules(self.path)
        except RulesError as exc:
            for problem in exc.problems:
                log.error("rules reload refused; old rules stay", extra={"problem": str(problem)})
            return False
        log.info("rules reloaded", extra={"path": str(self.path)})
        return True
