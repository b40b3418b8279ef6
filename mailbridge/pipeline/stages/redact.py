"""Redact: keep only the new text of a reply, staff commands apart, secrets out of what we keep."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from mailbridge.parse.ahead import Ahead
from mailbridge.parse.quotes import strip_quotes
from mailbridge.parse.replies import parse_staff_commands
from mailbridge.parse.secrets import redact_secrets
from mailbridge.pipeline.context import (
    FLOW_CASE,
    FLOW_TARGET,
    ROLE_STAFF,
    Guess,
    MailContext,
    Outcome,
)


class Redact:
    name = "redact"
    description = "Keep only the new text of a reply; staff commands apart; secrets out"
    flows = frozenset({FLOW_CASE, FLOW_TARGET})

    def run(self, ctx: MailContext) -> Outcome | None:
        text = ctx.mail.text
        if ctx.ticket is not None or ctx.flow == FLOW_TARGET:
            text = strip_quotes(text)
        ctx.new_text = text
        if ctx.sender_role == ROLE_STAFF:
            ctx.commands, text = parse_staff_commands(text)
        ctx.body, ctx.secret_kinds = redact_secrets(text)
        if ctx.mail.text_cut:
            ctx.body = f"{ctx.body.rstrip()}\n\n{cut_notice(ctx.mail.text_cut)}"
        if ctx.secret_kinds:
            # The archived raw copy must not keep what the stored text dropped.
            ctx.inbound.raw, _ = redact_raw(ctx.inbound.raw)
        return None

    def predict(self, ahead: Ahead, guess: Guess) -> None:
        text = guess.mail.text
        if guess.reply or guess.flow == FLOW_TARGET:
            text = ahead.compute(strip_quotes, text)
            if guess.staff and guess.flow == FLOW_CASE:
                _commands, text = ahead.compute(parse_staff_commands, text)
        guess.body, _kinds = ahead.compute(redact_secrets, text)


NOTICE = "[mensaje retirado por contener información sensible]"


def cut_notice(dropped: int) -> str:
    """What the case shows under the head of a text too long to read whole."""
    if dropped >= 1024 * 1024:
        size = f"{dropped / (1024 * 1024):.1f}".replace(".", ",") + " MB"
    else:
        size = f"{max(1, round(dropped / 1024))} KB"
    return (f"[Texto recortado: el mensaje continúa con {size} más que no se muestran aquí. "
            "El correo original se conserva completo.]")


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
