"""The sender of a mail from its From header, salvaged from the broken forms real mail has.

A mail must always be attributed to someone, so when no parser finds an address in
From, `salvage_sender` reads what a person would read as the address. It never makes an
address that was not written: an address taken from a broken header is the addr-spec
as written, or, when its local part has spaces (`"x" <power quadrant system@example.com>`),
that local part quoted as RFC 5322 allows (`"power quadrant system"@example.com`). Joining
the words instead (`powerquadrantsystem@…`) would let a stranger who writes
`<ana perez@compensar.example>` be taken for the registered contact `anaperez@…`; the
quoted form is a different address, which matches a registered contact only if that is
the address registered. Such a sender is an unknown sender: the mail is kept and
attributed, and whatever answer it gets follows the unknown-sender rules (with refusals
sent as RFC 3834 §4 says, to the envelope sender and only when it matches From, the
quoted form gets none unless the envelope says the same). Before, such a From gave no
address at all and the pipeline fell back to the envelope sender, which opened a case in
a contact's name for a mail whose From was not theirs.

Salvaged forms, each only when the header gave no address otherwise:
- a missing angle bracket: `Ana <ana@x.example` or `Ana ana@x.example>`;
- an encoded word around the address (`=?utf-8?q?Ana_<ana@x.example>?=`, RFC 2047 forbids it);
- trailing junk after the address, a doubled bracket, a dot ending the domain;
- words around a bare address (`Big Bug bb@bug.example`), and two addresses with no comma:
  the first one, as for a From with two mailboxes. Without brackets the words are the name
  (`ana perez@x.example` is `perez@x.example`, named "ana"): that address is written in
  the header as it stands, so taking it gives a stranger nothing a plain forged From
  would not.
`user @ example.com` and comments (`ana@x.example (Ana)`) are RFC 5322 and read by the
parsers already. Addresses inside quoted display names are never taken: in
`"ana@x.example" <mal formed@y.example>` the address is the one in brackets.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header

_QUOTED = re.compile(r'"(?:\\.|[^"\\])*"?')
_COMMENT = re.compile(r"\((?:\\.|[^()\\])*\)")
_BRACKET = re.compile(r"<([^<>]*@[^<>]*)(?:>|$)")
_BARE = re.compile(r"((?:\x00\d+\x00|[^\s<>@,;\x00])+)\s*@\s*([^\s<>@,;\"()\x00]+)")
_MASK = re.compile(r"\x00(\d+)\x00")
_DOT_ATOM = re.compile(r"[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*")
_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)*[^\W_](?:[\w-]{0,61}[^\W_])?"
                     r"|\[[^\[\]\s\\]+\]")
_WS = re.compile(r"\s+")
MAX_ADDRESS = 254  # RFC 5321


def usable_address(address: str) -> bool:
    """An addr-spec a reply could be sent to: local@domain, no spaces outside quotes."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not _DOMAIN.fullmatch(domain):
        return False
    return bool(_DOT_ATOM.fullmatch(local)) or (
        len(local) > 2 and local.startswith('"') and local.endswith('"')
    )


def pick_sender(pairs: list[tuple[str, str]], header: str | None,
                defects: list[str] | None = None) -> tuple[str, str]:
    """(name, address) of the author: the first usable parsed address, else salvaged."""
    for name, address in pairs:
        address = (address or "").strip().lower()
        if usable_address(address):
            return name or "", address
    salvaged = salvage_sender(header or "")
    if salvaged is not None:
        if defects is not None:
            defects.append(f"From {_shorten(header or '')!r}: sender read as {salvaged[1]!r}")
        return salvaged
    name = next((n for n, _ in pairs if n), "")
    return name, ""


def _shorten(value: str) -> str:
    value = _WS.sub(" ", value).strip()
    return value if len(value) <= 120 else value[:117] + "..."


def salvage_sender(header: str) -> tuple[str, str] | None:
    """(name, address) a person reads in a From header no parser accepted; None if none."""
    text = _decoded(header)
    if "@" not in text:
        return None
    quoted: list[str] = []

    def mask(match: re.Match[str]) -> str:
        quoted.append(match.group(0))
        return f"\x00{len(quoted) - 1}\x00"

    masked = _QUOTED.sub(mask, text)
    comments = [c[1:-1].strip() for c in _COMMENT.findall(masked)]
    masked = _COMMENT.sub(" ", masked)
    unmask = lambda value: _MASK.sub(lambda m: quoted[int(m.group(1))], value)  # noqa: E731
    found = _BRACKET.search(masked)
    if found is not None:
        address = _address_in_brackets(unmask(found.group(1)))
        name_part = masked[:found.start()]
    else:
        bare = _BARE.search(masked)
        if bare is None:
            return None
        address = _address(unmask(bare.group(1)), bare.group(2))
        name_part = masked[:bare.start()]
    if address is None:
        return None
    name = _display_name(unmask(name_part)) or next((c for c in comments if c), "")
    return name, address


def _decoded(header: str) -> str:
    """The header with encoded words decoded, wherever they are, on one line."""
    try:
        text = str(make_header(decode_header(header)))
    except Exception:  # a broken encoded word: the header as it is
        text = header
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return _WS.sub(" ", text).strip()


def _address_in_brackets(inside: str) -> str | None:
    inside = inside.strip()
    if inside.startswith("@") and ":" in inside:  # obsolete source route: @a,@b:user@host
        inside = inside.split(":", 1)[1]
    local, _, domain = inside.rpartition("@")
    return _address(local, domain)


def _address(local: str, domain: str) -> str | None:
    """local@domain as an addr-spec: a local part with spaces is quoted, never joined."""
    local = re.sub(r"\s*\.\s*", ".", local.strip())  # FWS around dots is RFC 5322 (obs)
    domain = re.sub(r"\s*\.\s*", ".", domain.strip()).rstrip(".").lower()
    if not local or not _DOMAIN.fullmatch(domain):
        return None
    if not _DOT_ATOM.fullmatch(local) and not (
        len(local) > 2 and local.startswith('"') and local.endswith('"')
        and _QUOTED.fullmatch(local)
    ):
        plain = local.strip('"').replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{_WS.sub(" ", plain).strip()}"'
        if local == '""':
            return None
    address = f"{local}@{domain}".lower()
    return address if len(address) <= MAX_ADDRESS else None


def _display_name(text: str) -> str:
    text = _WS.sub(" ", text).strip().strip(",;").strip()
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    return text.strip()
