"""Is this mail encrypted (S/MIME or PGP)? Signed-only mail is not."""

from __future__ import annotations

from email.message import Message

from mailbridge.parse.ahead import ahead

__all__ = ["is_encrypted"]

_PGP_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
_SMIME_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
_ENCRYPTED_SMIME = {"enveloped-data", "authenveloped-data"}
_NOT_ENCRYPTED_SMIME = {"signed-data", "compressed-data", "certs-only"}
# Inline PGP is looked for only in the first bytes of text parts.
_INLINE_SCAN = 256 * 1024


def _part_is_encrypted(part: Message) -> bool:
    ctype = part.get_content_type()
    if ctype == "multipart/encrypted":
        return True
    if ctype == "application/pgp-encrypted":
        return True
    if ctype in _SMIME_TYPES:
        smime_type = str(part.get_param("smime-type", "") or "").strip().lower()
        if smime_type in _ENCRYPTED_SMIME:
            return True
        if smime_type in _NOT_ENCRYPTED_SMIME:
            return False
        # No smime-type: the usual enveloped message is named smime.p7m.
        name = str(part.get_filename() or part.get_param("name", "") or "").lower()
        return name.endswith(".p7m") or not name
    if ctype in ("text/plain", "text/html") or part.get_content_maintype() == "text":
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            return False
        if isinstance(payload, bytes) and _PGP_MESSAGE in payload[:_INLINE_SCAN]:
            return True
    return False


@ahead
def is_encrypted(message: Message) -> bool:
    """True for S/MIME enveloped data and PGP (PGP/MIME or inline); never raises."""
    try:
        for part in message.walk():
            if part.get_content_type() in ("application/pkcs7-signature", "multipart/signed"):
                continue  # the signature itself says nothing about encryption
            if _part_is_encrypted(part):
                return True
    except Exception:
        return False
    return False
