"""The parse modules skip scans a cheap test says cannot find anything: the results with
and without those prechecks are the same, on the test messages, the shared corpus of real
mail and the secret-shaped texts of the unit tests (also with their letters disguised)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from email.message import Message
from functools import lru_cache
from pathlib import Path
from re import _constants, _parser  # type: ignore[attr-defined]

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.parse import bounces, classify, fieldvalues, secrets
from mailbridge.parse.bounces import (
    MessageView,
    content_type,
    decoded_header,
    part_types,
    report_type,
)
from mailbridge.parse.mime import parse_mail
from mailbridge.parse.replies import close_subjects, normalise_subject, subject_words
from tests.parse.test_secrets import NOT_SECRETS, REDACTIONS
from tests.support.corpus import mail_files, read_raw

MESSAGES = Path(__file__).resolve().parent.parent / "messages"


def _mail_files() -> list[Path]:
    return mail_files(MESSAGES)


@lru_cache(maxsize=1)
def mail_texts() -> tuple[str, ...]:
    texts: list[str] = []
    for path in _mail_files():
        try:
            mail = parse_mail(read_raw(path))
        except Exception:  # noqa: S112 - the parse tests cover those
            continue
        texts.append(mail.text)
    return tuple(texts)


# Non-ASCII characters that re.IGNORECASE lets stand for an ASCII letter.
_ALL_NON_ASCII = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1)
                         if not 0xD800 <= c <= 0xDFFF)


def test_the_odd_caseless_characters_are_all_of_them() -> None:
    found = set()
    for letter in "abcdefghijklmnopqrstuvwxyz":
        found |= set(re.findall(f"(?i){letter}", _ALL_NON_ASCII))
        found |= set(re.findall(f"(?i)[{letter}]", _ALL_NON_ASCII))
    assert found == set(fieldvalues.CASELESS_ODD)


def test_needles_are_lower_case() -> None:
    for needles in (secrets._BEARER_NEEDLES, secrets._KEYED_TOKEN_NEEDLES,
                    secrets._PASSWORD_NEEDLES):
        assert all(needle == needle.lower() for needle in needles)


def _disguised(text: str) -> Iterator[str]:
    yield text
    yield text.upper()
    yield text.swapcase()
    yield f"x{text}y\n{text}"
    for odd, letter in (("\u212a", "k"), ("\u017f", "s"), ("\u0131", "i"), ("\u0130", "i")):
        yield text.replace(letter, odd).replace(letter.upper(), odd)


SECRET_TEXTS = [t for text, _stored, _kinds in REDACTIONS for t in _disguised(text)] + [
    t for text in NOT_SECRETS for t in _disguised(text)
]


@pytest.mark.parametrize("text", SECRET_TEXTS)
def test_secret_prechecks_hide_nothing_in_unit_texts(text: str) -> None:
    assert secrets._find_spans(text) == secrets._find_spans(text, precheck=False)


def test_secret_prechecks_hide_nothing_in_mail() -> None:
    texts = mail_texts()
    assert len(texts) > 50
    found = 0
    for text in texts:
        with_precheck = secrets._find_spans(text)
        assert with_precheck == secrets._find_spans(text, precheck=False)
        found += bool(with_precheck)
    assert found  # the corpus does hold secret-shaped text


# --- classification reads each header once, and a missing one without a search ---

_NAMES_READ = (
    "Subject", "From", "X-Failed-Recipients", "Auto-Submitted", "X-Auto-Response-Suppress",
    "Precedence", "X-Precedence", "X-Apple-Action", "X-POST-MessageClass", "X-Mailer",
    "X-MS-Exchange-Inbox-Rules-Loop", "List-Id", "List-Unsubscribe", "x-autoreply", "FROM",
)


@lru_cache(maxsize=1)
def mail_messages() -> tuple[Message, ...]:
    found: list[Message] = []
    for path in _mail_files():
        try:
            found.append(parse_mail(read_raw(path)).message)
        except Exception:  # noqa: S112 - the parse tests cover those
            continue
    return tuple(found)


def test_message_view_reads_headers_as_decoded_header_does() -> None:
    messages = mail_messages()
    assert len(messages) > 50
    for message in messages:
        view = MessageView(message)
        names = [*_NAMES_READ, *message.keys(), *(k.upper() for k in message.keys())]
        for _round in range(2):  # the second answers come from the view's memory
            for name in names:
                assert view.header(name) == decoded_header(message, name), name
            assert view.content_type() == content_type(message)
            assert view.report_type() == report_type(message)
            assert view.part_types() == part_types(message)


# --- severity: the text folded once; _URGENTE_RE only searched when its capitals are there ---

SEVERITY_TEXTS = ["URGENTE", "Es URGENT!", "CRÍTICO", "nivel CRITICA", "-URGENTE-", "P1", "crítico"]


def test_urgente_precheck_hides_nothing() -> None:
    for text in [*SEVERITY_TEXTS, *mail_texts()]:
        if fieldvalues._URGENTE_RE.search(text):
            assert any(needle in text for needle in fieldvalues._URGENTE_NEEDLES)


def test_severity_of_folded_text_is_detect_severity() -> None:
    for text in [*SEVERITY_TEXTS, *mail_texts()]:
        text = text[:200_000]
        assert fieldvalues.severity_of_folded(text, fieldvalues.fold(text)) == (
            fieldvalues.detect_severity(text)
        )


# --- close subjects: the cheap tests first, the same answer ---


def _close_subjects_as_before(a: frozenset[str], b: frozenset[str]) -> bool:
    refs_a = {w for w in a if not w.isalpha()}
    refs_b = {w for w in b if not w.isalpha()}
    if refs_a and refs_b and refs_a != refs_b:
        return False
    shared = len(a & b)
    return shared >= 2 and shared / len(a | b) >= 0.6


_WORDS = st.frozensets(st.sampled_from(
    ["fall", "report", "enlace", "2", "1", "inc1000", "inc1001", "vpn", "correo", "lent"]
), max_size=8)


@given(_WORDS, _WORDS)
@settings(max_examples=1000, deadline=None)
def test_close_subjects_answers_as_before(a: frozenset[str], b: frozenset[str]) -> None:
    assert close_subjects(a, b) == _close_subjects_as_before(a, b)


def test_close_subjects_answers_as_before_on_mail_subjects() -> None:
    keys = sorted({subject_words(normalise_subject(decoded_header(m, "Subject")))
                   for m in mail_messages()}, key=sorted)
    for a in keys:
        for b in keys:
            assert close_subjects(a, b) == _close_subjects_as_before(a, b)


# --- classification: subject patterns searched only when a word they need is there ---


def _literal_runs(items: list[tuple[object, object]]) -> list[str]:
    """The runs of characters a sequence of parsed regex items always matches in a row."""
    runs, current = [], ""
    for op, av in items:
        if op is _constants.LITERAL:
            current += chr(av)  # type: ignore[arg-type]
            continue
        if op is _constants.SUBPATTERN:
            inner = list(av[3])  # type: ignore[index]
            if not any(o is _constants.BRANCH for o, _a in inner):
                for run in _literal_runs(inner):
                    current += run
                    runs.append(current)
                    current = run
                continue
        runs.append(current)
        current = ""
    runs.append(current)
    return runs


@pytest.mark.parametrize(("pattern", "needles"), [
    (bounces.BOUNCE_SUBJECT_RE, bounces.BOUNCE_SUBJECT_NEEDLES),
    (classify._OUT_OF_OFFICE_SUBJECT_RE, classify._OUT_OF_OFFICE_SUBJECT_NEEDLES),
    (secrets._BEARER_RE, secrets._BEARER_NEEDLES),
    (secrets._PASSWORD_RE, secrets._PASSWORD_NEEDLES),
])
def test_every_alternative_holds_a_needle(pattern: re.Pattern[str], needles: tuple[str, ...]) -> None:
    assert pattern.flags & re.IGNORECASE
    assert all(n.isascii() and n == n.lower() for n in needles)
    tree = _parser.parse(pattern.pattern, pattern.flags)
    items = list(tree)
    # Down to the alternation: the patterns may open with assertions or a named group.
    while not any(op is _constants.BRANCH for op, _av in items):
        nested = [av[3] for op, av in items if op is _constants.SUBPATTERN]  # type: ignore[index]
        assert nested, pattern.pattern
        items = list(nested[0])
    branch = next(av for op, av in items if op is _constants.BRANCH)
    for alternative in branch[1]:  # type: ignore[index]
        runs = [run.lower() for run in _literal_runs(list(alternative))]
        assert any(n in run for run in runs for n in needles), runs


def test_subject_prechecks_hide_nothing() -> None:
    subjects = [decoded_header(m, "Subject") for m in mail_messages()]
    subjects += ["Undeliverable: hola", "Respuesta automática: Caso 7", "AUTOREPLY", "OOO",
                 "Mail delivery failed", "Fuera de la oficina", "frånvaro", "Returned mail"]
    hits = 0
    for subject in subjects:
        for pattern, needles in (
            (bounces.BOUNCE_SUBJECT_RE, bounces.BOUNCE_SUBJECT_NEEDLES),
            (classify._OUT_OF_OFFICE_SUBJECT_RE, classify._OUT_OF_OFFICE_SUBJECT_NEEDLES),
        ):
            if pattern.search(subject):
                hits += 1
                assert fieldvalues.may_hold_caseless(subject, needles), subject
    assert hits > 10


# --- severity patterns tried only where one of their starts is ---

_SKIPPED = {_constants.AT, _constants.ASSERT, _constants.ASSERT_NOT}


def _heads(items: list[tuple[object, object]]) -> list[str]:
    """The literal text each match of a parsed pattern opens with, per alternative."""
    index = 0
    while index < len(items) and items[index][0] in _SKIPPED:
        index += 1
    assert index < len(items)
    op, av = items[index]
    if op is _constants.LITERAL:
        run = ""
        while index < len(items) and items[index][0] is _constants.LITERAL:
            run += chr(items[index][1])  # type: ignore[arg-type]
            index += 1
        return [run]
    if op is _constants.SUBPATTERN:
        return _heads([*av[3], *items[index + 1:]])  # type: ignore[index]
    if op is _constants.BRANCH:
        return [h for alternative in av[1] for h in _heads([*alternative, *items[index + 1:]])]  # type: ignore[index]
    raise AssertionError(f"no literal start: {op}")


@pytest.mark.parametrize(("pattern", "starts"), [
    (fieldvalues._KEYWORD_LEVEL_RE, fieldvalues._KEYWORD_STARTS),
    (fieldvalues._LEVEL_KEYWORD_RE, fieldvalues._LEVEL_STARTS),
    (fieldvalues._P_CODE_RE, fieldvalues._P_CODE_STARTS),
    (fieldvalues._IMPACT_LEVEL_RE, fieldvalues._IMPACT_STARTS),
])
def test_every_severity_match_opens_with_a_start(pattern: re.Pattern[str],
                                                 starts: tuple[str, ...]) -> None:
    assert not pattern.flags & re.IGNORECASE
    heads = _heads(list(_parser.parse(pattern.pattern, pattern.flags)))
    assert heads
    for head in heads:
        assert any(head.startswith(start) for start in starts), head


def test_severity_at_starts_is_severity_everywhere() -> None:
    texts = [*SEVERITY_TEXTS, *mail_texts(), "muy\talta prioridad", "prioridad: muy\nalta",
             "Sev-2", "P3 impacto bajo", "impacto alto", "gravedad 1", "x P1 P2"]
    for text in texts:
        text = text[:200_000]
        folded = fieldvalues.fold(text)
        assert fieldvalues._severity(text, folded) == (
            fieldvalues._severity(text, folded, at_starts=False)
        ), text
        for pattern, starts, where in (
            (fieldvalues._KEYWORD_LEVEL_RE, fieldvalues._KEYWORD_STARTS, folded),
            (fieldvalues._LEVEL_KEYWORD_RE, fieldvalues._LEVEL_STARTS, folded),
            (fieldvalues._P_CODE_RE, fieldvalues._P_CODE_STARTS, text),
            (fieldvalues._IMPACT_LEVEL_RE, fieldvalues._IMPACT_STARTS, folded),
        ):
            assert [m.span() for m in fieldvalues._matches(pattern, starts, where)] == [
                m.span() for m in pattern.finditer(where)
            ]


# --- fold: a long text's ASCII runs lower-cased in one pass ---


def test_ascii_folds_to_lower_case_but_odd_blanks() -> None:
    for code in range(128):
        char = chr(code)
        expected = " " if char in fieldvalues._ODD_ASCII_BLANKS else char.lower()
        assert fieldvalues._FOLD[code] == expected == char.translate(fieldvalues._FOLD)


def test_fold_of_long_text_is_translate() -> None:
    texts = [*mail_texts(), "Á" * 300, "a" * 300, "É\x0b" * 200, "İ" + "x" * 300, "ab\u0130" * 100]
    for text in texts:
        assert fieldvalues.fold(text) == text.translate(fieldvalues._FOLD)
