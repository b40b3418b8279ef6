"""Addresses on the wire: internationalised domains in their ASCII form, SMTPUTF8 when needed."""

from __future__ import annotations


def transport_form(address: str) -> str:
    """The address as it is sent: a non-ASCII domain in its IDNA (xn--) form when the local
    part is ASCII, so that any relay takes it; otherwise unchanged, which needs SMTPUTF8."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return address
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDNA name: only SMTPUTF8 can carry it
        return address
    return f"{local}@{ascii_domain}"


def needs_smtputf8(address: str) -> bool:
    """True when the address cannot be written in ASCII (a non-ASCII local part)."""
    return not transport_form(address).isascii()


def header_block_is_ascii(raw: bytes) -> bool:
    """Whether a rendered message's headers are 7-bit (then no SMTPUTF8 is needed for them)."""
    end = raw.find(b"\r\n\r\n")
    return (raw if end < 0 else raw[:end]).isascii()
