"""Secrets out of what we keep: the text we store and the archived raw message."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from mailbridge.parse.secrets import redact_secrets

NOTICE = "[mensaje retirado por contener información sensible]"


def redact_raw(raw: bytes) -> tuple[bytes, list[str]]:
    """The raw message with secrets redacted in every text part; attachments kept.

    If the message cannot be rebuilt, only its headers are kept with a notice:
    a secret must not survive in the archive because the MIME was odd.
    """
    kinds: list[str] = []
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        for part in message.walk():
            if part.is_multipart() or part.get_content_maintype() != "text":
                continue
            if part.get_content_disposition() == "attachment":
                continue
            text = part.get_content()
            redacted, found = redact_secrets(text)
            if found:
                kinds.extend(k for k in found if k not in kinds)
                part.set_content(redacted, subtype=part.get_content_subtype(), charset="utf-8")
        return message.as_bytes(), kinds
    except Exception:
        header_end = raw.find(b"\r\n\r\n")
        if header_end < 0:
            header_end = raw.find(b"\n\n")
        headers = raw[:header_end] if header_end > 0 else b""
        return headers + b"\r\n\r\n" + NOTICE.encode() + b"\r\n", kinds or ["desconocido"]
