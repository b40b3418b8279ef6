"""A mail is always attributed to a sender, and a broken From never becomes someone else's address."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mailbridge.parse.mime as mime
from mailbridge.parse.senders import pick_sender, salvage_sender, usable_address
from mailbridge.rules import load_rules

REPO = Path(__file__).resolve().parents[2]
SENDERS = REPO / "tests" / "messages" / "senders"
CHARSETS = REPO / "tests" / "messages" / "charsets"

# file → (from_name, from_addr); each From header is in the file.
FIXTURES = {
    "spaces_in_local_part.eml": ("x", '"power quadrant system"@example.com'),
    "spaces_in_local_part_of_a_contact.eml": ("Ana", '"an a"@compensar.example'),
    "missing_closing_bracket.eml": ("Ana Gomez", "ana@compensar.example"),
    "missing_opening_bracket.eml": ("Ana Gomez", "ana@compensar.example"),
    "two_addresses_without_comma.eml": ("", "ana@compensar.example"),
    "encoded_word_around_address.eml": ("Ana Gómez", "ana@compensar.example"),
    "trailing_junk.eml": ("Ana Gomez", "ana@compensar.example"),
    "spaces_around_at.eml": ("", "ana@compensar.example"),
    "comment_as_name.eml": ("Ana Gomez", "ana@compensar.example"),
    "contact_address_in_quoted_name.eml": ("ana@compensar.example <ana@compensar.example>",
                                           '"soporte tecnico"@otra.example'),
}


def test_every_sender_fixture_is_listed() -> None:
    assert {p.name for p in SENDERS.glob("*.eml")} == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_broken_from_still_gives_a_sender_in_both_paths(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = (SENDERS / name).read_bytes()
    fast = mime.parse_mail(raw)
    monkeypatch.setattr(mime, "_parse_plain", lambda message, decoded=None: None)
    slow = mime.parse_mail(raw)
    for mail in (fast, slow):
        assert (mail.from_name, mail.from_addr) == FIXTURES[name]
    assert fast.defects == slow.defects


def test_salvaged_sender_is_reported() -> None:
    mail = mime.parse_mail((SENDERS / "spaces_in_local_part.eml").read_bytes())
    assert mail.defects[-1] == (
        "From '\"x\" <power quadrant system@example.com>': sender read as "
        "'\"power quadrant system\"@example.com'"
    )
    clean = mime.parse_mail((SENDERS / "comment_as_name.eml").read_bytes())
    assert clean.defects == []  # RFC 5322 as it is: nothing salvaged


def test_a_salvage_never_makes_a_stranger_a_registered_contact() -> None:
    rules = load_rules(REPO / "rules.yaml")
    assert rules.tenants_of_contact("ana@compensar.example")  # the demo contact
    # Joining the words of `<an a@compensar.example>` would give the contact's address;
    # the quoted local part is another mailbox.
    mail = mime.parse_mail((SENDERS / "spaces_in_local_part_of_a_contact.eml").read_bytes())
    assert mail.from_addr.replace('"', "").replace(" ", "") == "ana@compensar.example"
    assert not rules.tenants_of_contact(mail.from_addr)
    # A contact's address inside the display name is not the sender's.
    mail = mime.parse_mail((SENDERS / "contact_address_in_quoted_name.eml").read_bytes())
    assert not rules.tenants_of_contact(mail.from_addr)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('"x" <power quadrant system@example.com>', ("x", '"power quadrant system"@example.com')),
        ("Ana <ana@compensar.example", ("Ana", "ana@compensar.example")),
        ("Ana ana@compensar.example>", ("Ana", "ana@compensar.example")),
        ("Ana <ana@compensar.example>>", ("Ana", "ana@compensar.example")),
        ("Ana <ana@compensar.example.>", ("Ana", "ana@compensar.example")),  # root dot
        ("Ana <ana . gomez@compensar.example>", ("Ana", "ana.gomez@compensar.example")),  # obs FWS
        ("=?utf-8?b?YW5hQGNvbXBlbnNhci5leGFtcGxl?=", ("", "ana@compensar.example")),
        ("Ana <@relay.example:ana@compensar.example>", ("Ana", "ana@compensar.example")),
        ("(Ana) <an a@compensar.example>", ("Ana", '"an a"@compensar.example')),
        ('<power "quad" system@example.com>', ("", '"power \\"quad\\" system"@example.com')),
        ("José <josé luis@mächine.example>", ("José", '"josé luis"@mächine.example')),
        ("Big Bug bb@bug.example", ("Big Bug", "bb@bug.example")),
        ('"ana@compensar.example" <mal formed@otra.example>',
         ("ana@compensar.example", '"mal formed"@otra.example')),
        ("nobody at all", None),
        ("Ana <ana@>", None),
        ("Ana <ana@exa mple.example>", None),  # a domain with a space is no domain
        ("", None),
    ],
)
def test_salvage_sender(header: str, expected: tuple[str, str] | None) -> None:
    assert salvage_sender(header) == expected


def test_pick_sender_takes_the_first_usable_parsed_address() -> None:
    defects: list[str] = []
    pairs = [("Nadie", "undisclosed"), ("Luis", "Luis@Compensar.Example")]
    assert pick_sender(pairs, "Nadie <undisclosed>, Luis <luis@compensar.example>",
                       defects) == ("Luis", "luis@compensar.example")
    assert defects == []
    assert pick_sender([], "nothing", defects) == ("", "")


@pytest.mark.parametrize(
    ("address", "usable"),
    [("ana@compensar.example", True), ('"ana gomez"@compensar.example', True),
     ("root@localhost", True), ("ana@[192.0.2.1]", True), ("ana@mächine.example", True),
     ("ana gomez@compensar.example", False), ("@compensar.example", False), ("ana@", False),
     ("ana", False)],
)
def test_usable_address(address: str, usable: bool) -> None:
    assert usable_address(address) is usable


# --- `mailbridge parse FILE --json` shows both fixes -----------------------------------

def _parse_json(path: Path, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    env = {"MAILBRIDGE_RULES": str(REPO / "rules.yaml"), "MAILBRIDGE_DATA_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "mailbridge", "parse", str(path), "--json"],
                            env=env, capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_parse_json_shows_the_salvaged_sender_and_the_japanese_text(tmp_path: Path) -> None:
    report = _parse_json(SENDERS / "spaces_in_local_part.eml", tmp_path)
    assert report["from"] == '"power quadrant system"@example.com'
    assert report["from_name"] == "x"
    assert any("sender read as" in defect for defect in report["defects"])

    report = _parse_json(CHARSETS / "iso2022jp_7bit_body.eml", tmp_path)
    assert report["from"] == "ana@compensar.example" and report["from_name"] == "田中 花子"
    assert report["subject"] == "TEN-1001 メール障害のお知らせ"
    assert "メールサーバーに接続できません。" in report["body"] and "\x1b" not in report["body"]
    assert report["tenant_id"] == "TEN-1001"
    assert "メールサーバーに接続できません。" in report["fields"]["explicacion"]
    assert not (tmp_path / "mailbridge.db").exists()
