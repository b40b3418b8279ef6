"""Typed values of template fields: detection date and zone, LCCD contact, severity, lists."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "COUNTRY_ZONES",
    "SEVERITY_LEVELS",
    "detect_severity",
    "fold",
    "parse_contact",
    "parse_detection_datetime",
    "parse_detection_parts",
    "split_list",
    "zone_for_place",
]


# ---------------------------------------------------------------------------
# Folding: lower case without accents, one character for one character, so that
# positions found in the folded text are valid in the original text.


class _FoldTable(dict[int, str]):
    def __missing__(self, code: int) -> str:
        char = chr(code)
        try:
            base = unicodedata.normalize("NFD", char)[:1] or char
        except Exception:  # pragma: no cover - lone surrogates and the like
            base = char
        low = base.lower()
        result = low if len(low) == 1 else base
        if result.isspace() and result not in "\n\r\t":
            result = " "
        self[code] = result
        return result


_FOLD = _FoldTable()


# An ASCII character folds to its lower case, except these blanks (to " ").
_ODD_ASCII_BLANKS = "\x0b\x0c\x1c\x1d\x1e\x1f"
_NON_ASCII_RUN_RE = re.compile(r"([^\x00-\x7f]+)")


def fold(text: str) -> str:
    """Lower-case, accent-free copy of ``text`` with exactly the same length."""
    if len(text) < 256 or any(blank in text for blank in _ODD_ASCII_BLANKS):
        return text.translate(_FOLD)
    # translate() looks every character up in the table (~30 ns each); a long text is
    # mostly ASCII, whose runs lower() folds alike in one pass: only the runs of other
    # characters are looked up (the fold of each character is its own).
    pieces = _NON_ASCII_RUN_RE.split(text)  # ASCII runs at even places, the others odd
    pieces[::2] = [piece.lower() for piece in pieces[::2]]
    pieces[1::2] = [piece.translate(_FOLD) for piece in pieces[1::2]]
    return "".join(pieces)


# Under re.IGNORECASE an ASCII letter also matches four non-ASCII characters ("İ", "ı",
# "ſ", the Kelvin sign "K") that str.lower() does not turn into it (tests check the list).
CASELESS_ODD = "\u0130\u0131\u017f\u212a"


def may_hold_caseless(text: str, needles: tuple[str, ...]) -> bool:
    """False only if no re.IGNORECASE match of a pattern all of whose matches contain one
    of the lower-case ASCII ``needles`` can be in ``text``: a cheap test before a costly
    search."""
    if any(odd in text for odd in CASELESS_ODD):
        return True
    lowered = text.lower()
    return any(needle in lowered for needle in needles)


# ---------------------------------------------------------------------------
# Places and zones

# Country, city and region names as a Spanish-speaking customer writes them
# (already folded), mapped to IANA zones.
COUNTRY_ZONES: dict[str, str] = {
    "colombia": "America/Bogota",
    "bogota": "America/Bogota",
    "medellin": "America/Bogota",
    "cali": "America/Bogota",
    "barranquilla": "America/Bogota",
    "mexico": "America/Mexico_City",
    "cdmx": "America/Mexico_City",
    "ciudad de mexico": "America/Mexico_City",
    "df": "America/Mexico_City",
    "monterrey": "America/Monterrey",
    "guadalajara": "America/Mexico_City",
    "tijuana": "America/Tijuana",
    "cancun": "America/Cancun",
    "peru": "America/Lima",
    "lima": "America/Lima",
    "chile": "America/Santiago",
    "santiago de chile": "America/Santiago",
    "ecuador": "America/Guayaquil",
    "quito": "America/Guayaquil",
    "guayaquil": "America/Guayaquil",
    "espana": "Europe/Madrid",
    "madrid": "Europe/Madrid",
    "barcelona": "Europe/Madrid",
    "peninsula": "Europe/Madrid",
    "canarias": "Atlantic/Canary",
    "argentina": "America/Argentina/Buenos_Aires",
    "buenos aires": "America/Argentina/Buenos_Aires",
    "nicaragua": "America/Managua",
    "managua": "America/Managua",
    "costa rica": "America/Costa_Rica",
    "san jose": "America/Costa_Rica",
    "panama": "America/Panama",
    "guatemala": "America/Guatemala",
    "honduras": "America/Tegucigalpa",
    "tegucigalpa": "America/Tegucigalpa",
    "el salvador": "America/El_Salvador",
    "san salvador": "America/El_Salvador",
    "venezuela": "America/Caracas",
    "caracas": "America/Caracas",
    "bolivia": "America/La_Paz",
    "la paz": "America/La_Paz",
    "paraguay": "America/Asuncion",
    "asuncion": "America/Asuncion",
    "uruguay": "America/Montevideo",
    "montevideo": "America/Montevideo",
    "republica dominicana": "America/Santo_Domingo",
    "santo domingo": "America/Santo_Domingo",
    "puerto rico": "America/Puerto_Rico",
    "cuba": "America/Havana",
    "brasil": "America/Sao_Paulo",
    "brazil": "America/Sao_Paulo",
    "sao paulo": "America/Sao_Paulo",
    "estados unidos": "America/New_York",
    "eeuu": "America/New_York",
    "ee.uu.": "America/New_York",
    "usa": "America/New_York",
    "miami": "America/New_York",
    "nueva york": "America/New_York",
}

# Two-letter country codes; only trusted in parentheses or after "hora"/"zona",
# because "ES", "CO" or "PE" are also ordinary words.
_COUNTRY_CODES: dict[str, str] = {
    "CO": "America/Bogota",
    "MX": "America/Mexico_City",
    "PE": "America/Lima",
    "CL": "America/Santiago",
    "EC": "America/Guayaquil",
    "ES": "Europe/Madrid",
    "AR": "America/Argentina/Buenos_Aires",
    "NI": "America/Managua",
    "CR": "America/Costa_Rica",
    "PA": "America/Panama",
    "GT": "America/Guatemala",
    "HN": "America/Tegucigalpa",
    "SV": "America/El_Salvador",
    "VE": "America/Caracas",
    "BO": "America/La_Paz",
    "PY": "America/Asuncion",
    "UY": "America/Montevideo",
    "DO": "America/Santo_Domingo",
    "PR": "America/Puerto_Rico",
    "CU": "America/Havana",
    "BR": "America/Sao_Paulo",
    "US": "America/New_York",
}

# Zone abbreviations, matched in upper case only.
_ZONE_ABBREVIATIONS: dict[str, str] = {
    "COT": "America/Bogota",
    "PET": "America/Lima",
    "ECT": "America/Guayaquil",
    "CLT": "America/Santiago",
    "CLST": "America/Santiago",
    "ART": "America/Argentina/Buenos_Aires",
    "BRT": "America/Sao_Paulo",
    "VET": "America/Caracas",
    "BOT": "America/La_Paz",
    "PYT": "America/Asuncion",
    "UYT": "America/Montevideo",
    # In a Latin-American desk "CST" is Mexico/Central America, not China.
    "CST": "America/Mexico_City",
    "CDT": "America/Chicago",
    "EST": "America/New_York",
    "EDT": "America/New_York",
    "PST": "America/Los_Angeles",
    "PDT": "America/Los_Angeles",
    "MST": "America/Denver",
    "CET": "Europe/Madrid",
    "CEST": "Europe/Madrid",
    "WET": "Europe/Lisbon",
    "UTC": "UTC",
    "GMT": "UTC",
}

_MINUS = "-\u2212\u2013\u2014"
_OFFSET_RE = re.compile(
    rf"\b(?:gmt|utc)\s*(?P<sign>[+{_MINUS}])\s*(?P<hh>\d{{1,2}})(?::?(?P<mm>\d{{2}}))?(?!\d)"
)
_BARE_UTC_RE = re.compile(r"\b(?:utc|gmt|zulu)\b")
_IANA_RE = re.compile(r"\b[A-Z][A-Za-z_]+/[A-Z][A-Za-z_\-]+(?:/[A-Z][A-Za-z_\-]+)?\b")
_ABBR_RE = re.compile(
    r"\b(" + "|".join(sorted(_ZONE_ABBREVIATIONS, key=len, reverse=True)) + r")\b"
)
_CODE_RE = re.compile(
    r"(?:\(\s*|\b(?:hora|zona|horario)\s+(?:de\s+|del\s+)?)(" + "|".join(_COUNTRY_CODES) + r")\b"
)
_HORA_CENTRO_RE = re.compile(r"\bhora\s+(?:del\s+)?centro\b")


@lru_cache(maxsize=256)
def _zoneinfo(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except Exception:
        return None


@lru_cache(maxsize=32)
def _place_regex(extra: tuple[tuple[str, str], ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    table = dict(COUNTRY_ZONES)
    for place, zone in extra:
        key = fold(place).strip()
        if key:
            table[key] = zone
    names = sorted(table, key=len, reverse=True)
    alternation = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in names)
    return re.compile(rf"(?<![\w@.])(?:{alternation})(?![\w@])"), table


def _extra_key(country_zones: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if not country_zones:
        return ()
    try:
        return tuple(sorted((str(k), str(v)) for k, v in country_zones.items()))
    except Exception:
        return ()


def zone_for_place(text: str, country_zones: Mapping[str, str] | None = None) -> ZoneInfo | None:
    """The zone of the first country/city named in ``text`` ("Colombia", "CDMX", "Perú")."""
    try:
        regex, table = _place_regex(_extra_key(country_zones))
        match = regex.search(fold(text))
        if match:
            return _zoneinfo(table.get(re.sub(r"\s+", " ", match.group(0)), ""))
    except Exception:
        return None
    return None


def _find_zone(
    original: str, folded: str, country_zones: Mapping[str, str] | None
) -> tzinfo | None:
    match = _OFFSET_RE.search(folded)
    if match:
        hours = int(match.group("hh"))
        minutes = int(match.group("mm") or 0)
        if hours <= 14 and minutes < 60:
            delta = timedelta(hours=hours, minutes=minutes)
            return timezone(-delta if match.group("sign") != "+" else delta)
    for candidate in _IANA_RE.findall(original):
        zone = _zoneinfo(candidate)
        if zone is not None:
            return zone
    match = _ABBR_RE.search(original)
    if match:
        return _zoneinfo(_ZONE_ABBREVIATIONS[match.group(1)])
    if _BARE_UTC_RE.search(folded):
        return UTC
    match = _CODE_RE.search(original)
    if match:
        return _zoneinfo(_COUNTRY_CODES[match.group(1)])
    if _HORA_CENTRO_RE.search(folded):
        return _zoneinfo("America/Mexico_City")
    return zone_for_place(original, country_zones)


# ---------------------------------------------------------------------------
# Dates and times

_MONTHS: dict[str, int] = {
    "enero": 1, "ene": 1, "january": 1, "jan": 1,
    "febrero": 2, "feb": 2, "february": 2,
    "marzo": 3, "mar": 3, "march": 3,
    "abril": 4, "abr": 4, "april": 4, "apr": 4,
    "mayo": 5, "may": 5,
    "junio": 6, "jun": 6, "june": 6,
    "julio": 7, "jul": 7, "july": 7,
    "agosto": 8, "ago": 8, "august": 8, "aug": 8,
    "septiembre": 9, "setiembre": 9, "sep": 9, "sept": 9, "set": 9, "september": 9,
    "octubre": 10, "oct": 10, "october": 10,
    "noviembre": 11, "nov": 11, "november": 11,
    "diciembre": 12, "dic": 12, "december": 12, "dec": 12,
}  # fmt: skip
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))

_DATE_PATTERNS: list[re.Pattern[str]] = [
    # 2026-03-12, 2026/03/12
    re.compile(r"(?<!\d)(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?!\d)"),
    # 12/03/2026, 12-03-26, 12.03.2026 (day first, as written in Spanish)
    re.compile(r"(?<![\d:])(?P<d>\d{1,2})[/.\-](?P<m>\d{1,2})[/.\-](?P<y>\d{4}|\d{2})(?![\d:])"),
    # 3 de marzo de 2026, 12-mar-2026, 12 mar. 2026, 3 de marzo (year optional)
    re.compile(
        rf"(?<!\d)(?P<d>\d{{1,2}})(?:\s*(?:o|º|°|ro))?\s*(?:de\s+|[-/.\s])\s*(?P<mon>{_MONTH_ALT})\b\.?"
        rf"(?:\s*(?:de\s+|del\s+|[-/,.]\s*)?\s*(?P<y>\d{{4}})(?!\d))?"
    ),
    # March 3, 2026 / marzo 3 de 2026
    re.compile(
        rf"\b(?P<mon>{_MONTH_ALT})\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?!\d)"
        rf"(?:\s*(?:,|de|del)?\s*(?P<y>\d{{4}})(?!\d))?"
    ),
]

_TIME_RE = re.compile(
    r"(?<![\d:/.+\-\u2212\u2013])(?P<h>[01]?\d|2[0-3])"
    r"(?:\s*(?::|h|\.)\s*(?P<mi>[0-5]\d)(?::(?P<s>[0-5]\d)(?:\.\d+)?)?|(?=\s*(?:a\.?\s?m|p\.?\s?m|hrs?\b|horas?\b|h\b)))"
    r"(?P<offset>\s*(?:z\b|[+\-\u2212](?:[01]\d):?[0-5]\d\b))?"
    r"(?:\s*(?P<ampm>[ap])\.?\s?m\b\.?)?"
    r"(?:\s*(?:hrs?|horas?|h)\b\.?)?"
    r"(?:\s*(?:de\s+la\s+)?(?P<part>manana|tarde|noche|madrugada)\b)?"
)
_RELATIVE_HOUR_RE = re.compile(r"\ba\s+las\s+(?P<h>[01]?\d|2[0-3])\b(?![:.]\d)")


def _year(text: str | None) -> int | None:
    if not text:
        return None
    year = int(text)
    if len(text) == 2:
        year += 2000 if year < 70 else 1900
    return year


def _find_date(folded: str, reference: datetime | None) -> tuple[int, int, int, int, int] | None:
    """(year, month, day, start, end) of the first explicit date in ``folded``.

    A date written with its year wins over an earlier one without ("Mar 12/03/2026" is
    Tuesday the 12th, not "March 12").
    """
    with_year: list[tuple[int, int, int, int, int]] = []
    without_year: list[tuple[int, int, int, int, int]] = []
    for pattern in _DATE_PATTERNS:
        for match in pattern.finditer(folded):
            groups = match.groupdict()
            day = int(groups["d"])
            month = _MONTHS[groups["mon"]] if groups.get("mon") else int(groups["m"])
            year = _year(groups.get("y"))
            bucket = with_year
            if not groups.get("mon") and month > 12 and day <= 12:
                day, month = month, day  # written month-first
            if year is None:
                if reference is None:
                    continue
                bucket = without_year
                year = reference.year
                try:
                    written = datetime(year, month, day)
                except ValueError:
                    continue
                if written > reference.replace(tzinfo=None) + timedelta(days=1):
                    year -= 1
            if not 1970 <= year <= 2100:
                continue
            try:
                datetime(year, month, day)
            except ValueError:
                continue
            bucket.append((year, month, day, match.start(), match.end()))
            if bucket is with_year:
                break
    for bucket in (with_year, without_year):
        if bucket:
            return min(bucket, key=lambda found: found[3])
    return None


def parse_detection_datetime(
    raw: str,
    default_zone: tzinfo | None = None,
    country_zones: Mapping[str, str] | None = None,
    *,
    reference: datetime | None = None,
) -> datetime | None:
    """An aware datetime from a Spanish "fecha y hora" value, or None without an explicit date.

    Understands "12/03/2026 14:30 hora Colombia", "3 de marzo de 2026, 9:15 a. m. (GMT-5)",
    "2026-03-12 08:00 CDMX", ISO 8601 with offsets, IANA zone names, GMT/UTC offsets and
    country or city names. Without a zone in ``raw`` the time is in ``default_zone`` (UTC
    when that is None too). Relative words ("ayer", "hoy") are not dates. ``reference``
    supplies the year when only day and month are written.
    """
    try:
        found = parse_detection_parts(raw, country_zones, reference=reference)
    except Exception:
        return None
    if found is None or found.tzinfo is not None:
        return found
    return found.replace(tzinfo=default_zone or UTC)


def parse_detection_parts(
    raw: str,
    country_zones: Mapping[str, str] | None = None,
    *,
    reference: datetime | None = None,
) -> datetime | None:
    """Like parse_detection_datetime, but naive when ``raw`` names no zone (never raises)."""
    try:
        return _parse_detection_datetime(raw, country_zones, reference)
    except Exception:
        return None


def _parse_detection_datetime(
    raw: str,
    country_zones: Mapping[str, str] | None,
    reference: datetime | None,
) -> datetime | None:
    if not raw or not isinstance(raw, str):
        return None
    raw = raw[:2000]
    folded = fold(raw)
    found = _find_date(folded, reference)
    if found is None:
        return None
    year, month, day, start, end = found
    rest = folded[:start] + " " * (end - start) + folded[end:]
    hour = minute = second = 0
    offset_zone: tzinfo | None = None
    time_match = _TIME_RE.search(rest, end) or _TIME_RE.search(rest)
    if time_match:
        hour = int(time_match.group("h"))
        minute = int(time_match.group("mi") or 0)
        second = int(time_match.group("s") or 0)
        meridiem = time_match.group("ampm")
        part = time_match.group("part")
        if meridiem == "p" or part in ("tarde", "noche"):
            if hour < 12:
                hour += 12
        elif (meridiem == "a" or part in ("manana", "madrugada")) and hour == 12:
            hour = 0
        offset = (time_match.group("offset") or "").strip()
        if offset == "z":
            offset_zone = UTC
        elif offset:
            sign = -1 if offset[0] != "+" else 1
            digits = offset[1:].replace(":", "")
            offset_zone = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        blank = " " * len(time_match.group(0))
        rest = rest[: time_match.start()] + blank + rest[time_match.end() :]
    else:
        hour_match = _RELATIVE_HOUR_RE.search(rest)
        if hour_match:
            hour = int(hour_match.group("h"))
    original_rest = "".join(
        o if f != " " or o.isspace() else " " for o, f in zip(raw, rest, strict=True)
    )
    zone = offset_zone or _find_zone(original_rest, rest, country_zones)
    return datetime(year, month, day, hour, minute, second, tzinfo=zone)


# ---------------------------------------------------------------------------
# Contact: "Nombre – Correo – Teléfono" in any order and with any separator

_EMAIL_RE = re.compile(r"(?:mailto:)?([A-Za-z0-9._%+\-']+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)")
_PHONE_RE = re.compile(
    r"(?<![\w@])(?:\+|00)?\s?(?:\(\s*\+?\d{1,4}\s*\)\s*)?\d[\d .\-()]{4,}\d"
    r"(?:\s*(?:ext\.?|extension|extensión|x)\s*\d{1,6})?(?![\w@])"
)
_CONTACT_LABEL_RE = re.compile(
    r"(?i)\b(?:nombre|name|correo(?:\s+electr[oó]nico)?|e-?mail|mail|email|"
    r"tel[eé]fono(?:\s+m[oó]vil)?|tel[eé]f?|tel|tlf|cel(?:ular)?|m[oó]vil|whatsapp|phone)"
    r"\s*(?:\.|:|=)"
)
_SEPARATORS_RE = re.compile(r"\s*(?:[\n|;/,\u2013\u2014\u2012\u2015]|\s-\s|\s-$|^-\s|\t)\s*")


def parse_contact(raw: str) -> dict[str, str | None]:
    """Split a contact into {"nombre", "correo", "telefono"}; absent parts are None."""
    result: dict[str, str | None] = {"nombre": None, "correo": None, "telefono": None}
    try:
        if not raw or not isinstance(raw, str):
            return result
        text = raw[:2000]
        emails = _EMAIL_RE.findall(text)
        if emails:
            result["correo"] = emails[0].strip(".'").lower()
        text = re.sub(r"<\s*(?:mailto:)?[^<>\s]*@[^<>\s]*>", " ", text)
        text = _EMAIL_RE.sub(" \n ", text)
        text = re.sub(r"\[\s*\]|<\s*>|\(\s*\)", " ", text)
        for match in _PHONE_RE.finditer(text):
            digits = re.sub(r"\D", "", match.group(0))
            if 7 <= len(digits) <= 20:
                result["telefono"] = re.sub(r"\s+", " ", match.group(0)).strip(" .-")
                text = text[: match.start()] + " \n " + text[match.end() :]
                break
        text = _CONTACT_LABEL_RE.sub("\n", text)
        for chunk in _SEPARATORS_RE.split(text):
            name = chunk.strip(" \t.:-()[]<>*\"'")
            if name and any(ch.isalpha() for ch in name):
                result["nombre"] = re.sub(r"\s+", " ", name)
                break
    except Exception:
        return result
    return result


# ---------------------------------------------------------------------------
# Severity

SEVERITY_LEVELS = ("URGENTE", "ALTA", "MEDIA", "BAJA")

_LEVEL_WORDS: dict[str, str] = {
    "critica": "URGENTE", "critico": "URGENTE", "critical": "URGENTE",
    "urgente": "URGENTE", "urgent": "URGENTE", "emergencia": "URGENTE",
    "bloqueante": "URGENTE", "blocker": "URGENTE", "maxima": "URGENTE", "maximo": "URGENTE",
    "muy alta": "URGENTE", "muy alto": "URGENTE",
    "alta": "ALTA", "alto": "ALTA", "high": "ALTA", "elevada": "ALTA", "elevado": "ALTA",
    "moderada": "MEDIA", "moderado": "MEDIA", "media": "MEDIA", "medio": "MEDIA",
    "medium": "MEDIA", "normal": "MEDIA",
    "minima": "BAJA", "minimo": "BAJA", "baja": "BAJA", "bajo": "BAJA", "low": "BAJA",
    "menor": "BAJA",
}  # fmt: skip
# The desk's gravedad scale (SPEC §2): 1 critical, 2 moderate, 3 minimal.
_GRAVEDAD_NUMBERS = {"1": "URGENTE", "2": "MEDIA", "3": "BAJA", "4": "BAJA"}
# ITIL-style P1..P4 / Sev1..Sev4.
_P_NUMBERS = {"1": "URGENTE", "2": "ALTA", "3": "MEDIA", "4": "BAJA", "5": "BAJA"}

_LEVEL_ALT = "|".join(
    re.escape(w).replace(r"\ ", r"\s+") for w in sorted(_LEVEL_WORDS, key=len, reverse=True)
)
_KEYWORD = (
    r"(?:gravedad|severidad|prioridad|urgencia|criticidad|severity|priority|urgency"
    r"|nivel\s+de\s+(?:gravedad|severidad|prioridad|urgencia|criticidad|impacto))"
)
_BETWEEN = (
    r"(?:\s+(?:del|de\s+la|de)\s+(?:caso|incidente|ticket|incidencia|solicitud))?"
    r"(?:\s*\([^)\n]{0,40}\))?"
    r"\s*+(?:[:=\-\u2013\u2014]|\bes\b|\bsera\b|\bseria\b)?+\s*+(?:\*+\s*+)?+"
    r"(?:de\s++|nivel\s++|la\s++)?+"
)
_KEYWORD_LEVEL_RE = re.compile(
    # "x-priority: 3" is a header, "gravedad 1/2" a fraction, neither a statement.
    rf"(?<![\w-]){_KEYWORD}{_BETWEEN}"
    rf"(?:(?P<word>{_LEVEL_ALT})\b|(?:p|sev|s|g)?\s*(?P<num>[1-5])\b(?!\s*[/.,:]\s*\d))"
)
_LEVEL_KEYWORD_RE = re.compile(
    rf"\b(?P<word>{_LEVEL_ALT})[ \t]+"
    r"(?:prioridad|urgencia|gravedad|severidad|criticidad|priority|severity)\b"
)
_P_CODE_RE = re.compile(r"(?<![\w-])(?:P|SEV|Sev|sev)\s?-?(?P<num>[1-5])(?![\w-])")
_URGENTE_RE = re.compile(r"(?<![\w-])(?:URGENTE|URGENT|CR[IÍ]TICO|CR[IÍ]TICA)(?![\w-])")
_IMPACT_LEVEL_RE = re.compile(
    r"\bimpacto(?:\s+(?:a|en|al|sobre)\s+(?:la\s+|el\s+)?(?:operacion|negocio|servicio)"
    r"(?:\s+del\s+cliente)?)?"
    rf"{_BETWEEN}(?P<word>{_LEVEL_ALT})\b|\b(?P<word2>{_LEVEL_ALT})[ \t]+impacto\b"
)


# What every match of each severity pattern starts with (any of these). The patterns
# open with a lookbehind or \b, so re finds no prefix to skip to and tries them at every
# position; `_matches` tries them only where one of these is (tests check the lists).
_LEVEL_STARTS = tuple(sorted({word.split()[0][:4] for word in _LEVEL_WORDS}))
_KEYWORD_STARTS = ("crit", "grav", "nive", "prio", "seve", "urge")
_P_CODE_STARTS = ("P", "SEV", "Sev", "sev")
_IMPACT_STARTS = ("impacto", *_LEVEL_STARTS)


def _matches(
    pattern: re.Pattern[str], starts: tuple[str, ...], text: str
) -> Iterator[re.Match[str]]:
    """pattern.finditer(text), for a pattern each match of which starts with one of
    ``starts``: the same matches, the pattern tried only at those positions (a match
    found, the next one is looked for after it, as finditer does)."""
    positions: set[int] = set()
    for start in starts:
        found = text.find(start)
        while found >= 0:
            positions.add(found)
            found = text.find(start, found + 1)
    end = 0
    for position in sorted(positions):
        if position < end:
            continue
        match = pattern.match(text, position)
        if match is not None:
            yield match
            end = max(match.end(), position + 1)


def _level_of(match: re.Match[str], numbers: Mapping[str, str]) -> str | None:
    groups = match.groupdict()
    word = groups.get("word") or groups.get("word2")
    if word:
        return _LEVEL_WORDS.get(re.sub(r"\s+", " ", word))
    number = groups.get("num")
    return numbers.get(number) if number else None


def detect_severity(text: str) -> str | None:
    """ "URGENTE", "ALTA", "MEDIA" or "BAJA" when the text states a severity, else None.

    Only statements count: "Gravedad: Crítica", "prioridad alta", "gravedad 1", "P1",
    "URGENTE" in capitals, "impacto alto". Prose like "la alta dirección" does not.
    """
    try:
        if not text or not isinstance(text, str):
            return None
        text = text[:200_000]
        return _severity(text, fold(text))
    except Exception:
        return None


def severity_of_folded(text: str, folded: str) -> str | None:
    """detect_severity(text), for a caller that has folded it already (``folded`` is
    fold(text)) and holds at most 200,000 characters."""
    try:
        if not text or not isinstance(text, str):
            return None
        return _severity(text, folded)
    except Exception:
        return None


# Capitals _URGENTE_RE's matches hold: a text without them is not searched.
_URGENTE_NEEDLES = ("URGENT", "CR")


def _severity(text: str, folded: str, *, at_starts: bool = True) -> str | None:
    """detect_severity's work; ``at_starts`` False searches the patterns everywhere (for
    tests: the same answer)."""

    def matches(pattern: re.Pattern[str], starts: tuple[str, ...], in_text: str) -> Iterator[
        re.Match[str]
    ]:
        return _matches(pattern, starts, in_text) if at_starts else pattern.finditer(in_text)

    candidates: list[tuple[int, str]] = []
    for match in matches(_KEYWORD_LEVEL_RE, _KEYWORD_STARTS, folded):
        level = _level_of(match, _GRAVEDAD_NUMBERS)
        if level:
            candidates.append((match.start(), level))
            break
    for match in matches(_LEVEL_KEYWORD_RE, _LEVEL_STARTS, folded):
        level = _level_of(match, _GRAVEDAD_NUMBERS)
        if level:
            candidates.append((match.start(), level))
            break
    if candidates:
        return min(candidates)[1]
    for match in matches(_P_CODE_RE, _P_CODE_STARTS, text):
        return _P_NUMBERS[match.group("num")]
    if any(needle in text for needle in _URGENTE_NEEDLES) and _URGENTE_RE.search(text):
        return "URGENTE"
    for match in matches(_IMPACT_LEVEL_RE, _IMPACT_STARTS, folded):
        level = _level_of(match, {})
        if level:
            return level
    return None


# ---------------------------------------------------------------------------
# Lists ("Producto(s) Involucrado(s)")

_BULLET_RE = re.compile(r"^\s*(?:[-*•·●▪◦+>]|\d{1,2}[.)]|[a-z][.)])\s+")
_AND_RE = re.compile(r"(?<![ \t])[ \t]++(?:y|e|and|&)[ \t]++", re.IGNORECASE)


def _split_outside_parentheses(text: str, separators: str) -> list[str]:
    # " y " (and) separates items too, but not inside "Microsoft 365 (Exchange y Teams)".
    marked = _AND_RE.sub(lambda m: "\x00" if _depth_at(text, m.start()) == 0 else m.group(0), text)
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in marked:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        if (char in separators or char == "\x00") and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _depth_at(text: str, position: int) -> int:
    before = text[:position]
    return sum(before.count(c) for c in "([{") - sum(before.count(c) for c in ")]}")


def split_list(raw: str) -> list[str]:
    """Items of a list value: one per line, bullet, comma, semicolon or "y"."""
    items: list[str] = []
    try:
        if not raw or not isinstance(raw, str):
            return items
        seen: set[str] = set()
        for line in raw[:20_000].splitlines():
            line = _BULLET_RE.sub("", line)
            for piece in _split_outside_parentheses(line, ",;|\t"):
                item = re.sub(r"\s+", " ", piece).strip(" .:-–—*\"'")
                key = fold(item)
                if item and key not in seen:
                    seen.add(key)
                    items.append(item)
    except Exception:
        return items
    return items
