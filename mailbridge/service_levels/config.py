"""The `escalation:` and `closing:` sections of rules.yaml: thresholds plus who is told and how."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailbridge.parse.fieldvalues import fold
from mailbridge.service_levels.clocks import Severity
from mailbridge.service_levels.policy import ClosingRules, EscalationRules

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(value: str) -> str:
    value = value.strip().lower()
    if not _EMAIL_RE.match(value):
        raise ValueError(f"not an e-mail address: {value!r}")
    return value


def phrase_regex(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex finding any of `phrases` as whole words in folded text (see `fold`).

    Punctuation and runs of spaces between the words of a phrase are ignored, so
    "sí, resuelto" matches "Si resuelto" and "SÍ - resuelto".
    """
    words = [re.findall(r"\w+", fold(phrase)) for phrase in phrases]
    alternatives = [r"\W+".join(map(re.escape, ws)) for ws in words if ws]
    if not alternatives:
        return None
    alternatives.sort(key=len, reverse=True)
    return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)")


class EscalationLevel(BaseModel):
    """Who receives an escalation at one level, and how the customer reads its name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    # None: the tenant's commercial executive (`tenants[].executive`).
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return _email(value) if value is not None else None


def _default_levels() -> dict[str, EscalationLevel]:
    return {
        "ejecutivo_comercial": EscalationLevel(label="su ejecutivo comercial"),
        "gerencia": EscalationLevel(label="la gerencia de servicio"),
    }


class EscalationConfig(EscalationRules):
    """Seed 000/001 escalation: the thresholds of `EscalationRules` and everything around them.

    `automatic_severities` are escalated by the scheduler without being asked (seed 000 §4:
    high priority); every other eligible case is escalated only when the customer asks, by
    writing to `address` or with one of `request_keywords` in a reply on the case.
    `rca_keywords` mark an escalation request that is about a root-cause analysis.
    `template_fields` maps the seed-000 escalation template's lines to the case's
    `fields` keys (several keys are joined).
    """

    address: str | None = None
    request_keywords: tuple[str, ...] = (
        "escalar", "escalamiento", "escalen", "escale", "escalación", "escalacion", "escalada",
    )  # fmt: skip
    rca_keywords: tuple[str, ...] = ("RCA", "causa raíz", "análisis de causa")
    automatic_severities: tuple[Severity, ...] = ("URGENTE", "ALTA")
    levels: dict[str, EscalationLevel] = Field(default_factory=_default_levels)
    template_fields: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {
            "cliente": ("cliente",),
            "region": ("pais_region",),
            "descripcion": ("explicacion",),
            "impacto": ("impacto", "justificacion_urgencia"),
            "productos": ("productos",),
            "contacto": ("contacto_lccd",),
        }
    )

    @model_validator(mode="before")
    @classmethod
    def _labels_from_levels(cls, data: Any) -> Any:
        if isinstance(data, dict) and "levels" in data and "level_labels_es" not in data:
            levels = data["levels"]
            if isinstance(levels, dict):
                data = {**data, "level_labels_es": {
                    name: (level.get("label", name) if isinstance(level, dict)
                           else getattr(level, "label", name))
                    for name, level in levels.items()
                }}
        return data

    @field_validator("address")
    @classmethod
    def _escalation_address(cls, value: str | None) -> str | None:
        return _email(value) if value is not None else None

    @field_validator("template_fields", mode="before")
    @classmethod
    def _keys_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _levels_known(self) -> EscalationConfig:
        for name in (self.first_level, self.next_level):
            if name not in self.levels:
                raise ValueError(
                    f"escalation level {name!r} is not declared under levels "
                    f"(declared: {', '.join(sorted(self.levels))})"
                )
        low = set(self.automatic_severities) - {*self.high_severities, *self.medium_severities}
        if low:
            raise ValueError(
                f"{', '.join(sorted(low))} cannot be escalated automatically: low priority "
                "is never eligible"
            )
        return self

    def label(self, level: str) -> str:
        found = self.levels.get(level)
        return found.label if found is not None else level

    def request_regex(self) -> re.Pattern[str] | None:
        return phrase_regex(self.request_keywords)

    def rca_regex(self) -> re.Pattern[str] | None:
        return phrase_regex(self.rca_keywords)


class ClosingConfig(ClosingRules):
    """Seed 003 closing: `attempts` unanswered contact attempts over `period` close a
    resolved case; a reply with one of `confirmation_phrases` closes it at once, unless one
    of `negation_words` comes within three words before the phrase ("no pueden cerrar") or
    the phrase is part of a question ("¿ya funciona?")."""

    confirmation_phrases: tuple[str, ...] = (
        "confirmo", "confirmamos", "sí, resuelto", "si, resuelto", "está resuelto",
        "quedó resuelto", "ya funciona", "pueden cerrar", "puede cerrar", "pueden cerrarlo",
        "den por cerrado",
    )  # fmt: skip
    negation_words: tuple[str, ...] = ("no", "ni", "nunca", "aún", "aun", "todavía", "tampoco")
    # On a case that is not resolved yet, only a request to close it closes it ("Ya
    # funciona, pueden cerrar el caso"): "ya funciona el correo, pero…" does not.
    close_request_phrases: tuple[str, ...] = (
        "pueden cerrar", "puede cerrar", "pueden cerrarlo", "den por cerrado", "cierren el caso",
        "cerrar el caso", "dar por cerrado",
    )  # fmt: skip

    def confirms(self, text: str) -> bool:
        """Whether a customer's new text confirms the resolution."""
        return self._says(self.confirmation_phrases, text)

    def asks_to_close(self, text: str) -> bool:
        """Whether a customer's new text asks to close a case that is still open."""
        return self._says(self.close_request_phrases, text)

    def _says(self, phrases: tuple[str, ...], text: str) -> bool:
        pattern = phrase_regex(phrases)
        if pattern is None or not text:
            return False
        folded = fold(text)
        negations = {fold(word) for word in self.negation_words}
        for match in pattern.finditer(folded):
            before = re.findall(r"\w+", folded[: match.start()])[-3:]
            if negations.intersection(before):
                continue
            # `fold` keeps positions: the sentence around the match, in the original text.
            start = max(text.rfind(stop, 0, match.start()) for stop in ".!\n")
            ends = [i for i in (text.find(stop, match.end()) for stop in ".!\n") if i >= 0]
            sentence = text[start + 1 : min(ends, default=len(text))]
            if "?" in sentence or "¿" in sentence:
                continue
            return True
        return False
