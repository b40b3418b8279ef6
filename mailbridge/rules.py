"""rules.yaml → typed, validated objects; errors name the file, line and key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailbridge.parse.template import FieldSpec

Priority = Literal["A", "B", "C"]
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _check_email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL_RE.match(value):
        raise ValueError(f"not an e-mail address: {value!r}")
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
    # At most this many automatic mails to one address per hour (RFC 3834 §2).
    auto_reply_limit_per_hour: int = Field(default=5, ge=1)
    # A new mail whose subject matches an open case of the same tenant within
    # this window is linked to that case (seed 004: one subject per case).
    duplicate_window_hours: float = Field(default=72, ge=0)

    _addr = field_validator("from_address")(_check_email)

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


class Tenant(_Strict):
    id: str
    name: str
    plan: str
    timezone: str
    country: str = Field(min_length=2, max_length=2)
    contacts: list[str] = Field(default_factory=list)
    executive: str

    @field_validator("contacts")
    @classmethod
    def _contacts(cls, value: list[str]) -> list[str]:
        return [_check_email(v) for v in value]

    _exec = field_validator("executive")(_check_email)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError(f"unknown time zone {value!r} (use an IANA name, e.g. America/Bogota)")
        return value

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


class Rules(_Strict):
    """The whole rules file."""

    desk: Desk
    addresses: list[SupportAddress] = Field(min_length=1)
    priorities: dict[Priority, PriorityLevel]
    template: OpeningTemplate = Field(default_factory=OpeningTemplate)
    tenant_pattern: str
    plans: dict[str, Plan]
    tenants: list[Tenant] = Field(default_factory=list)

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
            if len(tenant.contacts) > plan.max_contacts:
                raise _PlacedError(
                    ("tenants", index, "contacts"),
                    f"{len(tenant.contacts)} contacts but plan {tenant.plan!r} allows "
                    f"{plan.max_contacts}",
                )
        for priority in ("A", "B", "C"):
            if priority not in self.priorities:
                raise _PlacedError(("priorities",), f"priority {priority} is not defined")
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
        local, _, domain = address.strip().lower().partition("@")
        # Our own from-address with a case tag (soporte+123@…) carries replies.
        own_local, _, own_domain = self.desk.from_address.partition("@")
        return domain == own_domain and local.split("+", 1)[0] == own_local

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
        return frozenset({self.desk.from_address, *(a.address for a in self.addresses)})


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
