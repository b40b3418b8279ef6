"""The opening-mail template: field specs (from rules.yaml) and the label/value extractor."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailbridge.parse.ahead import ahead
from mailbridge.parse.fieldvalues import (
    detect_severity,
    fold,
    parse_contact,
    parse_detection_parts,
    severity_of_folded,
    split_list,
    zone_for_place,
)

__all__ = ["ExtractedFields", "FieldSpec", "extract_fields"]

FieldType = Literal["text", "datetime", "contact", "severity", "list"]

# Longest text the extractor reads; an opening mail is a few kilobytes.
MAX_TEXT = 200_000


class FieldSpec(BaseModel):
    """One field of the opening template, as declared in rules.yaml (``template: fields:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    label: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list)
    required: bool = True
    type: FieldType = "text"

    @field_validator("label")
    @classmethod
    def _label_has_letters(cls, value: str) -> str:
        if not any(ch.isalpha() for ch in value):
            raise ValueError(f"a label needs letters: {value!r}")
        return value.strip()

    @field_validator("synonyms")
    @classmethod
    def _synonyms_have_letters(cls, value: list[str]) -> list[str]:
        cleaned = [s.strip() for s in value]
        for synonym in cleaned:
            if not any(ch.isalpha() for ch in synonym):
                raise ValueError(f"a synonym needs letters: {synonym!r}")
        return cleaned

    @property
    def labels(self) -> tuple[str, ...]:
        return (self.label, *self.synonyms)


@dataclass
class ExtractedFields:
    """What the extractor found; ``values`` holds only fields present with a value.

    ``values`` is JSON-serialisable: text → str, datetime → ISO 8601 with offset,
    contact → {"nombre", "correo", "telefono"}, list → list[str], severity → level.
    ``invalid`` lists keys whose value was written but not understood (a date
    without an explicit day, a severity that names no level); they are not in
    ``values`` and not in ``missing``.
    """

    values: dict[str, Any]
    raw: dict[str, str]
    missing: list[str]
    severity: str | None
    invalid: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Regex construction, cached per spec list

_OPTIONAL_SUFFIX_RE = re.compile(r"(?<=\w)\((\w{1,3})\)")  # "Producto(s)", "País(es)"


def _label_pattern(label: str) -> str:
    """A regex for one label on folded text, tolerant to spacing and optional plurals."""
    text = fold(label).strip().rstrip(":.： ").strip()
    out: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        suffix = _OPTIONAL_SUFFIX_RE.match(text, position) if char == "(" else None
        if suffix:
            letters = re.escape(suffix.group(1))
            out.append(rf"(?:\({letters}\)|{letters})?")
            position = suffix.end()
            continue
        if char.isspace():
            while position < len(text) and text[position].isspace():
                position += 1
            out.append(r"[ \t]++")
            continue
        if char == "/":
            out.append(r"[ \t]*(?:/|\bo\b|\by\b)[ \t]*")
        elif char.isalnum():
            out.append(re.escape(char))
        else:
            out.append(r"[ \t]*" + re.escape(char) + r"[ \t]*")
        position += 1
    return "".join(out)


_HINT = r"\((?:[^()\n]|\([^()\n]*\)){0,200}\)"
_MARK = r"[*_]{0,2}+"
# Possessive quantifiers keep a label followed by a long run of blanks linear.
_SEPARATOR = (
    r"(?:[ \t]*+(?:[:：=]|\|(?=[ \t])|[-\u2013\u2014](?=[ \t])|\.(?=[ \t]*+$)|$)"
    r"|(?<=\t)(?=\S)|(?<=[ \t]{2})(?=\S)|\t)"
)


@dataclass(frozen=True)
class _Compiled:
    labels: re.Pattern[str]
    group_to_spec: dict[str, int]


def _spec_key(specs: Sequence[FieldSpec]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((spec.key, spec.labels) for spec in specs)


@lru_cache(maxsize=64)
def _compile(key: tuple[tuple[str, tuple[str, ...]], ...]) -> _Compiled:
    alternatives: list[tuple[int, str, int]] = []  # (length, pattern, spec index)
    for index, (_key, labels) in enumerate(key):
        seen: set[str] = set()
        for label in labels:
            pattern = _label_pattern(label)
            if pattern and pattern not in seen:
                seen.add(pattern)
                alternatives.append((len(fold(label)), pattern, index))
    # Longest label first, so "Nombre del Cliente" wins over a synonym "Nombre".
    alternatives.sort(key=lambda item: -item[0])
    group_to_spec: dict[str, int] = {}
    parts: list[str] = []
    for number, (_length, pattern, index) in enumerate(alternatives):
        name = f"l{number}"
        group_to_spec[name] = index
        parts.append(f"(?P<{name}>{pattern})")
    body = "|".join(parts) or r"(?!x)x"
    regex = (
        r"(?m)^[ \t]*+(?:(?:[-*•·●▪]|\d{1,2}[.)])[ \t]++)?+" + _MARK + r"[ \t]*+"
        rf"(?:{body})"
        rf"[ \t]*+{_MARK}(?P<hint>[ \t]*+{_HINT})?+[ \t]*+{_MARK}{_SEPARATOR}[ \t]*+{_MARK}"
    )
    return _Compiled(re.compile(regex), group_to_spec)


# Where a value ends besides the next label: a signature, a quoted or forwarded message.
_END_RE = re.compile(
    r"(?m)^[ \t>]*+(?:"
    r"--[ \t]*|_{3,}[ \t]*|-{5,}.*"
    r"|(?:saludos|un[ \t]+saludo|atentamente|cordialmente|cordiales[ \t]+saludos"
    r"|best[ \t]+regards|kind[ \t]+regards|regards|muchas[ \t]+gracias|gracias"
    r"|mil[ \t]+gracias|quedo[ \t]+atent[oa]|quedamos[ \t]+atentos|sin[ \t]+otro[ \t]+particular"
    r"|enviado[ \t]+desde[ \t]+mi|sent[ \t]+from[ \t]+my)\b[^\n]{0,40}"
    r"|(?:agradezco|agradecemos|agradeciendo|quedo[ \t]+a[ \t]+la[ \t]+espera"
    r"|quedamos[ \t]+a[ \t]+la[ \t]+espera|en[ \t]+espera[ \t]+de|thanks|thank[ \t]+you)"
    r"\b[^\n]{0,80}"
    # Confidentiality footers.
    r"|(?:aviso[ \t]+(?:legal|de[ \t]+confidencialidad)|confidencialidad:|disclaimer"
    r"|(?:este|el[ \t]+presente)[ \t]+(?:correo|mensaje|e-?mail)\b[^\n]{0,120}"
    r"(?:confidencial|destinatario)|this[ \t]+(?:e-?mail|message)\b[^\n]{0,120}"
    r"(?:confidential|intended))[^\n]*"
    r"|el[ \t][^\n]{5,200}escribio:[ \t]*|on[ \t][^\n]{5,200}wrote:[ \t]*"
    r")$"
)
# A template hint left after the separator: "(Nombre – Correo – Teléfono)".
_LEADING_HINT_RE = re.compile(rf"^\s*(?P<hint>{_HINT})[ \t]*[.:]?")
_FORMAT_HINT_RE = re.compile(r"[\u2013\u2014,;/]|\s-\s")
_EMPTY_VALUE_RE = re.compile(r"^[\s\-\u2013\u2014_.:;,*…?¿/\\|=~+#•·]*$")


def _clean_value(value: str) -> str:
    lines = [line.strip() for line in value.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    cleaned: list[str] = []
    for line in lines:
        if line or (cleaned and cleaned[-1]):
            cleaned.append(line)
    result = "\n".join(cleaned).strip(" \t*_")
    return "" if _EMPTY_VALUE_RE.match(result) else result


def _strip_leading_hint(value: str) -> tuple[str, str]:
    """Split a template hint kept after the colon from the real value.

    "(Nombre – Correo – Teléfono)" is the template's format hint; "(ver adjunto)" is an answer.
    """
    match = _LEADING_HINT_RE.match(value)
    if not match or not _FORMAT_HINT_RE.search(match.group("hint")):
        return value, ""
    return value[match.end() :], match.group("hint")


@ahead
def extract_fields(
    text: str,
    specs: Sequence[FieldSpec],
    *,
    default_zone: tzinfo | None = None,
    country_zones: Mapping[str, str] | None = None,
    reference: datetime | None = None,
) -> ExtractedFields:
    """Find the template's labels in ``text`` and type their values; never raises.

    Labels match case- and accent-insensitively, with or without the colon, in any
    order; a value runs until the next label, a signature or a quoted message.
    ``default_zone`` applies to a detection time that names no zone and no country
    (after the fields themselves, e.g. "País/Región del Cliente: Colombia").
    ``reference`` (the mail's date) supplies the year of "3 de marzo".
    """
    try:
        return _extract(text, specs, default_zone, country_zones, reference)
    except Exception:
        missing = [spec.key for spec in specs if getattr(spec, "required", False)]
        return ExtractedFields(values={}, raw={}, missing=missing, severity=None)


def _extract(
    text: str,
    specs: Sequence[FieldSpec],
    default_zone: tzinfo | None,
    country_zones: Mapping[str, str] | None,
    reference: datetime | None,
) -> ExtractedFields:
    if not isinstance(text, str):
        text = ""
    text = text[:MAX_TEXT].replace("\r\n", "\n").replace("\r", "\n")
    folded = fold(text)
    compiled = _compile(_spec_key(specs))
    label_matches = list(compiled.labels.finditer(folded))
    ends = [m.start() for m in _END_RE.finditer(folded)]

    raw: dict[str, str] = {}
    hints: dict[str, str] = {}
    for number, match in enumerate(label_matches):
        index = next(
            (
                compiled.group_to_spec[name]
                for name, value in match.groupdict().items()
                if value is not None and name in compiled.group_to_spec
            ),
            None,
        )
        if index is None:
            continue
        key = specs[index].key
        if raw.get(key):
            continue  # the first value written wins
        start = match.end()
        stop = label_matches[number + 1].start() if number + 1 < len(label_matches) else len(text)
        for end in ends:
            if start <= end < stop:
                stop = end
                break
        value, hint_after = _strip_leading_hint(text[start:stop])
        raw[key] = _clean_value(value)
        hint_before = text[match.start("hint") : match.end("hint")] if match.group("hint") else ""
        hints[key] = " ".join(h for h in (hint_before, hint_after) if h)

    values: dict[str, Any] = {}
    invalid: list[str] = []
    missing: list[str] = []
    severity_from_field: str | None = None
    for spec in specs:
        value = raw.get(spec.key, "")
        if not value:
            raw.pop(spec.key, None)
            if spec.required:
                missing.append(spec.key)
            continue
        typed = _typed_value(
            spec, value, hints.get(spec.key, ""), raw, specs, default_zone, country_zones, reference
        )
        if typed is None:
            invalid.append(spec.key)
            continue
        values[spec.key] = typed
        if spec.type == "severity" and severity_from_field is None:
            severity_from_field = typed

    severity = severity_from_field or severity_of_folded(text, folded)
    return ExtractedFields(
        values=values, raw=raw, missing=missing, severity=severity, invalid=invalid
    )


def _typed_value(
    spec: FieldSpec,
    value: str,
    hint: str,
    raw: Mapping[str, str],
    specs: Sequence[FieldSpec],
    default_zone: tzinfo | None,
    country_zones: Mapping[str, str] | None,
    reference: datetime | None,
) -> Any:
    if spec.type == "text":
        return value
    if spec.type == "list":
        return split_list(value) or None
    if spec.type == "contact":
        return parse_contact(value)
    if spec.type == "severity":
        return detect_severity(_as_severity_statement(value))
    # datetime: the zone is in the value, else in the label's hint ("(hora Colombia)"),
    # else the country another field names, else the default.
    found = parse_detection_parts(value, country_zones, reference=reference)
    if found is None:
        return None
    if found.tzinfo is None and hint:
        hinted = parse_detection_parts(value + "\n" + hint, country_zones, reference=reference)
        if hinted is not None and hinted.tzinfo is not None:
            found = hinted
    if found.tzinfo is None:
        zone = _zone_from_other_fields(spec, raw, specs, country_zones)
        found = found.replace(tzinfo=zone or default_zone or UTC)
    return found.isoformat()


def _as_severity_statement(value: str) -> str:
    """A field that *is* the severity ("Alta", "1") reads as "gravedad: Alta"."""
    first = value.strip().split("\n", 1)[0]
    return f"gravedad: {first}\n{value}"


def _zone_from_other_fields(
    spec: FieldSpec,
    raw: Mapping[str, str],
    specs: Sequence[FieldSpec],
    country_zones: Mapping[str, str] | None,
) -> tzinfo | None:
    for other in specs:
        if other.key == spec.key or other.type != "text":
            continue
        value = raw.get(other.key, "")
        # Only a short value that names a place ("Colombia", "Perú – Lima").
        if value and len(value) <= 60:
            zone = zone_for_place(value, country_zones)
            if zone is not None:
                return zone
    return None
