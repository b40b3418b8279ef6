"""Threading helpers: subject normalising, the case token, thanks-only replies, staff commands."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

from mailbridge.parse.ahead import ahead
from mailbridge.parse.fieldvalues import fold
from mailbridge.parse.quotes import signature_free, strip_quotes

# Reply/forward prefixes of the clients a Spanish desk sees: RE/RV (Outlook es), Rif/R (it),
# AW/WG (de), Fwd/FW/TR/Enc/Reenviado…, optionally counted ("RE[2]:", "Re(3):").
_PREFIX_RE = re.compile(
    r"^\s*(?:re|rv|rif|r|aw|wg|fwd?|fw|tr|trans|reenviado|reenv|enc|res|resp|antw|sv|vs|vl|ref)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*",
    re.IGNORECASE,
)
# Tags that mail gateways put in front of a subject: "[EXTERNAL]", "[EXTERNO]", "(EXT)".
# A bracket with digits ("[TEN-1001]", "[Ticket 7]") is part of the subject and stays.
_LEADING_TAG_RE = re.compile(
    r"^\s*(?:\[[^\[\]\d]{1,40}\]|\((?:ext|external|externo|spam)\))\s*", re.IGNORECASE
)
_GATEWAY_WORD_RE = re.compile(r"^\s*(?:external|externo|ext|spam|\*\*\*spam\*\*\*)\s*:\s*", re.I)
_WS_RE = re.compile(r"\s+")


def _case_token_re(case_token: str) -> re.Pattern[str]:
    """ "[Caso 123]", "[caso #123]", "[CASO Nº 123]", "[Soporte - Caso 123]"."""
    token = re.escape(case_token.strip())
    return re.compile(
        rf"\[[^\[\]]{{0,40}}?\b{token}\s*(?:#|n[º°o]\.?|num\.?|número|numero)?\s*:?\s*(\d{{1,12}})\b[^\[\]]{{0,40}}\]",
        re.IGNORECASE,
    )


def find_case_number(subject: str, case_token: str = "Caso") -> int | None:
    """The case number of a "[Caso 123]" token anywhere in the subject, or None."""
    if not subject or not case_token.strip():
        return None
    match = _case_token_re(case_token).search(subject)
    return int(match.group(1)) if match else None


def normalise_subject(subject: str, case_token: str = "Caso") -> str:
    """The subject as a case would be known by: no RE:/RV:/Fwd: prefixes, case tokens,
    gateway tags or extra whitespace; case-folded, accents kept.

    "RE: [EXTERNAL] RV: [Caso 12] TEN-1001 Caída del  servicio" → "ten-1001 caída del servicio"
    """
    text = _WS_RE.sub(" ", subject or "").strip()
    if case_token.strip():
        text = _case_token_re(case_token).sub(" ", text)
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX_RE.sub("", text)
        text = _LEADING_TAG_RE.sub("", text)
        text = _GATEWAY_WORD_RE.sub("", text)
    return unicodedata.normalize("NFC", _WS_RE.sub(" ", text).strip().casefold())


# --- close subjects --------------------------------------------------------------------------

# Words that carry no subject of their own (Spanish and English), folded.
_SUBJECT_STOPWORDS = frozenset("""
    a al ante con de del desde e el en entre la las lo los o para por que se sin su sus un una
    unos unas y ya muy mas hay no es son esta estan fue han hoy
    the a an of in on at to for and or is are with from
    urgente urgent favor ayuda help problema problemas consulta solicitud caso
""".split())
_WORD_RE = re.compile(r"[^\W_]+")


def _stem(word: str) -> str:
    """A light Spanish stem: plural and verb endings off ("fallan", "falla" → "fall")."""
    for suffix in ("aciones", "ciones", "mente", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    for suffix in ("an", "en", "ar", "er", "ir", "a", "e", "o"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@lru_cache(maxsize=8192)
def subject_words(subject_key: str, *, ignore: str | None = None) -> frozenset[str]:
    """The stems of a normalised subject's meaningful words; `ignore` (a tenant ID) out.
    Cached: every opening compares itself with the same open cases' subjects."""
    text = fold(subject_key)
    if ignore:
        text = text.replace(fold(ignore), " ")
    words: set[str] = set()
    for word in _WORD_RE.findall(text):
        if word.isalpha():
            if len(word) >= 3 and word not in _SUBJECT_STOPWORDS:
                words.add(_stem(word))
        else:  # "INC4711", "500", "enlace 2": a reference tells issues apart, as it is
            words.add(word)
    return frozenset(words)


def close_subjects(a: frozenset[str], b: frozenset[str]) -> bool:
    """Whether two subjects name the same issue ("Fallan los reportes", "Falla en reportes"):
    at least two meaningful words in common and most of them shared (Jaccard ≥ 0.6), and no
    reference that tells them apart (INC1000 / INC1001, "enlace 1" / "enlace 2").
    An opening is compared with each open case: the cheap tests go first, most pairs
    share fewer than two words."""
    shared = len(a & b)
    if shared < 2 or shared / (len(a) + len(b) - shared) < 0.6:  # len(a | b)
        return False
    refs_a = {w for w in a if not w.isalpha()}
    refs_b = {w for w in b if not w.isalpha()}
    return not (refs_a and refs_b and refs_a != refs_b)


# --- thanks-only replies ----------------------------------------------------------------------

_THANKS_WORDS = frozenset(
    "gracias thanks thank thx ty agradezco agradecemos agradecido agradecida agradecidos "
    "amable amables".split()
)
# Words that may surround thanks without adding information.
_COURTESY_WORDS = frozenset(
    """
    ok okay okey vale perfecto perfecta genial estupendo estupenda excelente bien de acuerdo
    muchas muchisimas mil muy mucho todo toda todos por la el los las lo su sus tu tus vuestra
    vuestro vuestras ayuda atencion gestion rapidez respuesta colaboracion trabajo interes
    y e a al del un una saludos saludo cordial cordiales atentamente cordialmente abrazo
    recibido recibida entendido great perfect nice cool so much very many lot a the you your
    for all help again once regards best kind cheers bye hasta luego pronto buen buena buenos
    dia dias tarde tardes noche fin semana que tengas tenga tengan feliz igualmente
    nuevo otra vez de nuevo hola hi hello estimado estimada estimados equipo team
    rapida rapido pronta amabilidad paciencia informacion info aviso solucion apoyo soporte
    asistencia seguimiento molestia molestias tiempo esfuerzo dedicacion quick support
    """.split()
)
_GREETING_RE = re.compile(
    r"^(?:hola|buenos d[ií]as|buenas tardes|buenas noches|buenas|hi|hello|dear|estimad[oa]s?)\b"
    r"[^.?!]{0,40}[,:!.]?$",
    re.IGNORECASE,
)
_MAX_THANKS_CHARS = 600


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _looks_like_signature_line(line: str) -> bool:
    """A name, a job title, a company or contact line, not a sentence."""
    if "?" in line or "¿" in line:
        return False
    if re.search(r"@|https?://|www\.|\+?\d[\d ().-]{6,}", line):
        return True
    words = re.findall(r"[^\W\d_][\w.'’-]*", line)
    if not words or len(words) > 8:
        return False
    connectors = {
        "de",
        "del",
        "la",
        "las",
        "los",
        "y",
        "e",
        "of",
        "and",
        "the",
        "en",
        "s.l.",
        "s.a.",
    }
    return all(word[0].isupper() or word.casefold() in connectors for word in words)


def is_thanks_only(text: str) -> bool:
    """True when a reply only says thanks ("Muchas gracias!", "ok gracias, saludos" + a
    signature); False when it asks something or brings new information."""
    try:
        body = signature_free(strip_quotes(text or ""))
    except Exception:
        return False
    if not body.strip() or len(body) > _MAX_THANKS_CHARS or "?" in body or "¿" in body:
        return False
    saw_thanks = False
    in_signature = False
    for raw_line in body.split("\n"):
        line = raw_line.strip()
        if not line:
            continue
        if in_signature:
            if not _looks_like_signature_line(line):
                return False
            continue
        if not saw_thanks and _GREETING_RE.match(line) and not _has_thanks(line):
            continue
        if _is_courtesy_line(line):
            saw_thanks = saw_thanks or _has_thanks(line)
            continue
        if saw_thanks and _looks_like_signature_line(line):
            in_signature = True
            continue
        return False
    return saw_thanks


def _is_courtesy_line(line: str) -> bool:
    """Only thanks and courtesy words, plus at most a name ("¡Gracias, Carla!")."""
    unknown = [
        word
        for word in re.findall(r"[^\W\d_]+", line)
        if not (set(re.findall(r"[a-z]+", _fold(word))) <= _THANKS_WORDS | _COURTESY_WORDS)
    ]
    if not unknown:
        return bool(re.search(r"[^\W\d_]", line))
    return _has_thanks(line) and len(unknown) <= 2 and all(word[0].isupper() for word in unknown)


def _has_thanks(line: str) -> bool:
    return any(word in _THANKS_WORDS for word in re.findall(r"[a-z]+", _fold(line)))


# --- staff commands ---------------------------------------------------------------------------

_COMMAND_RE = re.compile(r"^\s*#([^\W\d_][\w-]*)\s*:?(.*)$")


@dataclass(frozen=True)
class StaffCommand:
    """One "#name args…" line written by staff in a reply."""

    name: str
    args: list[str] = field(default_factory=list)
    line: str = ""


@ahead
def parse_staff_commands(text: str) -> tuple[list[StaffCommand], str]:
    """Commands on lines of their own ("#estado resuelto", "#prioridad A", "#escalar hibot")
    and the text without those lines. Names are lower-cased; args keep their case."""
    text = text or ""
    commands: list[StaffCommand] = []
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        match = _COMMAND_RE.match(line)
        if match:
            commands.append(
                StaffCommand(
                    name=match.group(1).casefold(),
                    args=match.group(2).split(),
                    line=line.strip(),
                )
            )
        else:
            kept.append(line)
    if not commands:
        return [], text
    while kept and not kept[0].strip():
        kept.pop(0)
    return commands, "\n".join(kept).rstrip()
