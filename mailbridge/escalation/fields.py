"""The values an escalation target requires: from the case, the staff member's lines, the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mailbridge.parse.fieldvalues import fold
from mailbridge.parse.template import FieldSpec, extract_fields
from mailbridge.rules import EscalationTarget, Rules
from mailbridge.tickets.models import Ticket


@dataclass(frozen=True)
class FieldValue:
    key: str
    label: str
    value: str


def as_text(value: Any) -> str:
    """A case field value as one would write it in a mail."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(as_text(v) for v in value if as_text(v))
    if isinstance(value, dict):
        return " – ".join(str(v) for v in value.values() if v)
    return str(value).strip()


def values_from_case(
    rules: Rules, target: EscalationTarget, ticket: Ticket, escalated_by: str | None
) -> dict[str, str]:
    """Each field's first source with a value, or its default."""
    tenant = rules.tenant(ticket.tenant_id)
    level = rules.priorities.get(ticket.priority)  # type: ignore[call-overload]
    special = {
        "tenant.name": tenant.name if tenant else "",
        "tenant.id": ticket.tenant_id or "",
        "case.number": str(ticket.number),
        "case.subject": ticket.subject,
        "case.sender": ticket.sender,
        "case.priority": ticket.priority,
        "case.priority_label": level.label if level is not None else "",
        "case.severity": ticket.severity,
        "escalated_by": escalated_by or "",
    }
    raw = ticket.fields_raw or {}
    typed = ticket.fields or {}
    out: dict[str, str] = {}
    for spec in target.fields:
        for source in spec.sources:
            # What the customer wrote reads better than its typed form (dates, contacts).
            value = special[source] if source in special else (
                as_text(raw.get(source)) or as_text(typed.get(source))
            )
            if value:
                out[spec.key] = value
                break
        else:
            if spec.default:
                out[spec.key] = spec.default
    return out


def values_from_text(rules: Rules, target: EscalationTarget, text: str) -> dict[str, str]:
    """`Etiqueta: valor` lines for the target's labels (read as the opening template is).

    The opening template's and the other targets' labels are read too, only so that a
    value stops where the next known label starts.
    """
    if not text or not target.fields:
        return {}
    specs = [spec.spec() for spec in target.fields]
    own = {spec.key for spec in specs}
    stoppers = [*rules.template.fields,
                *(f.spec() for t in rules.escalation_targets.values() for f in t.fields)]
    specs += [
        FieldSpec(key=f"zz_stop_{index}", label=spec.label, synonyms=spec.synonyms,
                  required=False)
        for index, spec in enumerate(stoppers)
    ]
    found = extract_fields(text, specs)
    return {
        key: as_text(value) for key, value in found.values.items()
        if key in own and as_text(value)
    }


class UnknownField(ValueError):
    """A --field names no field of the target."""


def values_from_pairs(target: EscalationTarget, pairs: Iterable[str]) -> dict[str, str]:
    """`key=value` or `Etiqueta=valor` (accents and case ignored) from the command line."""
    by_name: dict[str, str] = {}
    for spec in target.fields:
        for name in (spec.key, spec.label, *spec.synonyms):
            by_name[fold(name).strip()] = spec.key
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        key = by_name.get(fold(name).strip())
        if not sep or key is None:
            known = ", ".join(spec.key for spec in target.fields)
            raise UnknownField(f"{name!r} is not a field of this target (fields: {known})")
        if value.strip():
            out[key] = value.strip()
    return out


def resolve(
    target: EscalationTarget, layers: Iterable[Mapping[str, str]]
) -> tuple[list[FieldValue], list[str]]:
    """Merge value layers (later wins); return the values in field order and missing keys."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v})
    values = [
        FieldValue(spec.key, spec.label, merged[spec.key])
        for spec in target.fields
        if merged.get(spec.key)
    ]
    missing = [spec.key for spec in target.fields if spec.required and not merged.get(spec.key)]
    return values, missing


def label_of(target: EscalationTarget, key: str) -> str:
    for spec in target.fields:
        if spec.key == key:
            return spec.label
    return key


def strip_field_lines(text: str, target: EscalationTarget) -> str:
    """The text without its `Etiqueta: valor` lines for this target (they were for the
    target, not for the customer a staff answer is relayed to)."""
    labels = sorted(
        {fold(name).strip() for spec in target.fields for name in (spec.label, *spec.synonyms)},
        key=len, reverse=True,
    )
    kept = []
    for line in (text or "").split("\n"):
        folded = fold(line).strip().lstrip("-*• ").strip()
        if any(folded.startswith(label) and folded[len(label):].lstrip().startswith((":", "="))
               for label in labels):
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n")
