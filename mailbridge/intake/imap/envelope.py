"""The envelope of a mail fetched over IMAP, read from the headers its MTA wrote."""

from __future__ import annotations

import email.parser
import email.policy

HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def header_block(raw: bytes) -> bytes:
    """The message up to and including the blank line that ends its headers."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[: end + 2]


def envelope_from_headers(raw: bytes, queue_address: str) -> tuple[str, list[str], str | None]:
    """(mail_from, rcpt_tos, message_id) as the delivering MTA left them in the headers.

    The recipients are the Delivered-To/X-Original-To the MTA wrote (the envelope),
    else the support address the account stands for.
    """
    headers = HEADER_PARSER.parsebytes(header_block(raw))
    rcpts: list[str] = []
    for name in ("Delivered-To", "X-Original-To"):
        for value in headers.get_all(name) or []:
            address = bare_address(str(value))
            if address and address.lower() not in rcpts:
                rcpts.append(address.lower())
    return_path = headers.get("Return-Path")
    mail_from = bare_address(str(return_path)) if return_path is not None else ""
    message_id = headers.get("Message-ID")
    mid = " ".join(str(message_id).split())[:998] if message_id is not None else None
    return mail_from, rcpts or [queue_address.lower()], mid or None


def message_id_in(header_bytes: bytes) -> str | None:
    """The Message-ID of a fetched header block, whitespace folded (None without one)."""
    mid = HEADER_PARSER.parsebytes(header_bytes).get("Message-ID")
    return " ".join(str(mid).split()) if mid is not None else None


def bare_address(value: str) -> str:
    """`Name <a@b>` → `a@b`; a bare address as it is, unfolded."""
    value = " ".join(value.split())
    if "<" in value and ">" in value:
        value = value[value.index("<") + 1 : value.rindex(">")]
    return value.strip()


def message_id_variants(mid: str | None) -> list[str]:
    """The spellings a stored Message-ID may have: as given, bare, in angle brackets."""
    if not mid:
        return []
    bare = mid.strip().strip("<>")
    return list({mid, bare, f"<{bare}>"})
