"""Passwords, keys and tokens in a mail body: found and replaced before anything is stored."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

from mailbridge.parse.ahead import ahead
from mailbridge.parse.fieldvalues import CASELESS_ODD, fold

__all__ = ["REDACTED", "redact_secrets"]

REDACTED = "[REDACTADO]"

# Kinds as the sender reads them in the reply ("hemos ocultado: contraseña, token").
PASSWORD = "contraseña"
TOKEN = "token"
API_KEY = "clave de API"
PRIVATE_KEY = "clave privada"

_MAX_TEXT = 1_000_000

# Whole-match secrets: the entire match is replaced.
_KEY_BEGIN_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_KEY_END_RE = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
# Without an END line the key runs over the following base64 lines.
_KEY_BODY_RE = re.compile(r"(?:\n[ \t]*[A-Za-z0-9+/=][A-Za-z0-9+/=:\-, ]*)*")
# Each with the literal text every match of it contains (any of them): a text that holds
# none of them has no match, and is not scanned. These patterns start with a lookbehind,
# so `re` finds no prefix to skip to and tries the pattern at every position.
_WHOLE_PATTERNS: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (
        re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}(?![A-Za-z0-9])"),
        API_KEY,
        ("AKIA", "ASIA", "AGPA", "AIDA", "AROA"),
    ),
    (
        re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])"),
        TOKEN,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    (re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,255}"), TOKEN, ("github_pat_",)),
    (re.compile(r"(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_\-]{20,}"), TOKEN, ("glpat-",)),
    (re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}"), TOKEN, ("xox",)),
    (
        re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}"),
        TOKEN,
        ("https://hooks.slack.com/services/",),
    ),
    (
        re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}(?![A-Za-z0-9_\-])"),
        API_KEY,
        ("AIza",),
    ),
    (
        re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"),
        API_KEY,
        ("_live_", "_test_"),
    ),
    (re.compile(r"(?<![A-Za-z0-9])sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{32,}"), API_KEY, ("sk-",)),
    (
        re.compile(r"(?<![A-Za-z0-9])SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),
        API_KEY,
        ("SG.",),
    ),
    # JSON Web Tokens: header.payload.signature, both first parts base64url JSON.
    (
        re.compile(
            r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
        ),
        TOKEN,
        (".eyJ",),
    ),
]

# Value-after-keyword secrets: only the value (group "value") is replaced.
_BEARER_RE = re.compile(
    r"(?i)\b(?:bearer|token)[ \t]+(?P<value>[A-Za-z0-9\-._~+/]{16,}=*)(?![A-Za-z0-9\-._~+/=])"
)
_URL_PASSWORD_RE = re.compile(
    r"(?i)\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@]{1,64}:(?P<value>[^\s@/]{1,128})@[\w.\-]+"
)
_KEYED_TOKEN_RE = re.compile(
    r"(?i)\b(?:api[ _\-]?key|apikey|api[ _\-]?token|access[ _\-]?token|auth[ _\-]?token"
    r"|refresh[ _\-]?token|client[ _\-]?secret|secret[ _\-]?key|secret|secreto|token"
    r"|clave[ \t]+(?:de[ \t]+)?(?:la[ \t]+)?api|llave[ \t]+(?:de[ \t]+)?(?:la[ \t]+)?api"
    r"|aws_secret_access_key|aws_access_key_id|private[ _\-]?key)"
    r"[\"']?[ \t]*(?:[:=]|=>|\bes\b)[ \t]*[\"']?"
    r"(?P<value>[A-Za-z0-9+/_\-.=~]{16,})"
)
# "contraseña: x", "password=x", "pwd: x", "clave: x", "mi contraseña es Abc123!".
_PASSWORD_WORDS = (
    r"contrasena|contraseña|contrasenia|password|passwd|passphrase|pass|pwd"
    r"|clave(?:[ \t]+de[ \t]+acceso)?|clave[ \t]+secreta|clave[ \t]+temporal"
    r"|clave[ \t]+del[ \t]+usuario|pin"
)
_PASSWORD_RE = re.compile(
    rf"(?i)(?<![\w])(?P<word>{_PASSWORD_WORDS})(?![\w])"
    r"(?P<sep>[\"']?[ \t]*(?:=|:|=>)[ \t]*"
    r"|[ \t]+(?:es|era|sera|será|seria|sería|nueva)[ \t]*:?[ \t]*)"
    r"(?P<value>[^\s]{1,128})(?P<tail>[^\n]*)"
)
_PASSWORD_WORD_RE = re.compile(rf"(?i)(?:{_PASSWORD_WORDS})")
# The lower-case words each case-insensitive pattern's matches contain (any of them),
# looked for in the lower-cased text; a text with one of the characters that
# re.IGNORECASE lets stand for an ASCII letter (CASELESS_ODD) is scanned whatever it holds.
_URL_PASSWORD_NEEDLES = ("://",)  # not a letter: looked for in the text itself
_BEARER_NEEDLES = ("bearer", "token")
_KEYED_TOKEN_NEEDLES = ("api", "token", "secret", "aws_access_key_id", "private")
_PASSWORD_NEEDLES = ("contrase", "pass", "pwd", "clave", "pin")
# Words after "contraseña:" that describe rather than reveal it.
_NOT_A_PASSWORD = {
    "la", "el", "lo", "no", "si", "sí", "de", "del", "es", "un", "una", "mi", "su", "tu", "que",
    "ninguna", "ninguno", "n/a", "na", "none", "null", "vacía", "vacia", "incorrecta",
    "incorrecto", "invalida", "inválida", "expirada", "caducada", "bloqueada", "restablecida",
    "reseteada", "olvidada", "correcta", "misma", "nueva", "anterior", "actual", "temporal",
    "segura", "débil", "debil", "requerida", "obligatoria", "pendiente", "enviada", "cambiada",
    "igual", "ver", "adjunta", "adjunto", "redactado", "[redactado]", "oculta", "privada",
    "por", "para", "con", "sin", "en", "al", "a", "y", "o",
}  # fmt: skip


def _looks_like_password(value: str) -> bool:
    """A token with a digit, a symbol or inner capitals: "Hola123", "s3cr3t!", "qWeRtY"."""
    if len(value) < 4:
        return False
    has_digit = any(ch.isdigit() for ch in value)
    has_symbol = any(not ch.isalnum() for ch in value)
    inner_upper = any(ch.isupper() for ch in value[1:]) and any(ch.islower() for ch in value)
    return has_digit or has_symbol or inner_upper


def _password_matches(text: str) -> Iterator[re.Match[str]]:
    """Every "word separator value" in the text, each scan going on right after the value:
    a match takes its line's tail, and the tail may hold the password ("Mi contraseña:
    la nueva contraseña es Abc123!", "la clave es contraseña: Abc123!")."""
    position = 0
    while (match := _PASSWORD_RE.search(text, position)) is not None:
        yield match
        position = match.start("value")


def _password_spans(text: str) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for match in _password_matches(text):
        word = fold(match.group("word"))
        sep = match.group("sep")
        value = match.group("value").rstrip(".,;)]}\"'")
        if not value or value.startswith(("*", "•", "x" * 4, "[")) or set(value) <= {"*", "•", "x"}:
            continue
        if fold(value) in _NOT_A_PASSWORD or _PASSWORD_WORD_RE.fullmatch(value.rstrip(":=")):
            continue  # a word about it, or the next label ("la clave es contraseña: …")
        if "palabra" in fold(text[max(0, match.start() - 9) : match.start()]):
            continue  # "palabra clave: correo" is a keyword, not a password
        alone_on_line = not match.group("tail").strip()
        strong_separator = "=" in sep or ":" in sep
        if word == "pin" and not value.isdigit():
            continue
        if word.startswith("clave") or word == "pass":
            # "clave" and "pass" are also ordinary words: want a password-looking value.
            if not (_looks_like_password(value) or (strong_separator and alone_on_line)):
                continue
        elif not strong_separator:
            # "mi contraseña es Hola123" yes; "la contraseña es incorrecta" no.
            if not _looks_like_password(value):
                continue
        elif not (alone_on_line or _looks_like_password(value)):
            # "Contraseña: restablecida por el usuario" describes, does not reveal.
            continue
        start = match.start("value")
        spans.append((start, start + len(value), PASSWORD))
    return spans


def _private_key_spans(text: str) -> list[tuple[int, int, str]]:
    # Linear in the text even with many BEGIN lines and no END line.
    ends = [m.end() for m in _KEY_END_RE.finditer(text)]
    spans: list[tuple[int, int, str]] = []
    covered = 0
    for begin in _KEY_BEGIN_RE.finditer(text):
        if begin.start() < covered:
            continue
        index = bisect.bisect_left(ends, begin.end())
        if index < len(ends):
            end = ends[index]
        else:
            body = _KEY_BODY_RE.match(text, begin.end())
            end = body.end() if body else begin.end()
        spans.append((begin.start(), end, PRIVATE_KEY))
        covered = end
    return spans


def _find_spans(text: str, *, precheck: bool = True) -> list[tuple[int, int, str]]:
    """Every secret's (start, end, kind). `precheck` skips a pattern when the text lacks
    the words all of its matches contain (the result is the same: tests compare)."""
    spans: list[tuple[int, int, str]] = []
    spans.extend(_private_key_spans(text))
    for pattern, kind, needles in _WHOLE_PATTERNS:
        if precheck and not any(needle in text for needle in needles):
            continue
        for match in pattern.finditer(text):
            spans.append((match.start(), match.end(), kind))
    if not precheck or any(needle in text for needle in _URL_PASSWORD_NEEDLES):
        for match in _URL_PASSWORD_RE.finditer(text):
            spans.append((match.start("value"), match.end("value"), PASSWORD))
    lowered = text.lower() if precheck and not any(c in text for c in CASELESS_ODD) else None

    def may_match(needles: tuple[str, ...]) -> bool:
        return lowered is None or any(needle in lowered for needle in needles)

    keyed = ((_BEARER_RE, _BEARER_NEEDLES), (_KEYED_TOKEN_RE, _KEYED_TOKEN_NEEDLES))
    for pattern, needles in keyed:
        if not may_match(needles):
            continue
        for match in pattern.finditer(text):
            value = match.group("value")
            # A long word is not a token: want digits or mixed case.
            if any(ch.isdigit() for ch in value) or (
                any(ch.isupper() for ch in value) and any(ch.islower() for ch in value)
            ):
                keyword = fold(match.group(0)[: match.start("value") - match.start()])
                kind = API_KEY if ("api" in keyword or "key" in keyword) else TOKEN
                spans.append((match.start("value"), match.end("value"), kind))
    if may_match(_PASSWORD_NEEDLES):
        spans.extend(_password_spans(text))
    return spans


@ahead
def redact_secrets(text: str) -> tuple[str, list[str]]:
    """Replace passwords, tokens, API keys and private keys with [REDACTADO].

    Returns the redacted text and the kinds found, in order of first appearance,
    without repeats (e.g. ["contraseña", "token"]). Never raises.
    """
    if not isinstance(text, str) or not text:
        return (text if isinstance(text, str) else ""), []
    try:
        head, tail = text[:_MAX_TEXT], text[_MAX_TEXT:]
        spans = sorted(_find_spans(head), key=lambda span: (span[0], -span[1]))
    except Exception:
        return text, []
    pieces: list[str] = []
    kinds: list[str] = []
    position = 0
    for start, end, kind in spans:
        if start < position:  # inside a span already replaced
            if end > position:
                position = end
            continue
        pieces.append(head[position:start])
        pieces.append(REDACTED)
        position = end
        if kind not in kinds:
            kinds.append(kind)
    pieces.append(head[position:])
    return "".join(pieces) + tail, kinds
