"""RefuseEncrypted: an encrypted opening mail is answered, not opened (seed 004)."""

from __future__ import annotations

from mailbridge.parse.ahead import Ahead
from mailbridge.parse.encryption import is_encrypted
from mailbridge.pipeline.context import FLOW_CASE, Guess, MailContext, Outcome
from mailbridge.pipeline.mailing import queue_auto_reply


class RefuseEncrypted:
    name = "encrypted"
    description = "An encrypted opening mail is answered, not opened (seed 004)"
    flows = frozenset({FLOW_CASE})

    def run(self, ctx: MailContext) -> Outcome | None:
        if ctx.ticket is not None or not is_encrypted(ctx.mail.message):
            return None
        queue_auto_reply(
            ctx, template="encrypted.txt.j2", kind="refusal",
            context={"subject": ctx.mail.subject},
            subject=f"No podemos leer su mensaje cifrado: {ctx.mail.subject}"[:200],
        )
        return Outcome("refused:encrypted", "S/MIME or PGP opening mail")

    def predict(self, ahead: Ahead, guess: Guess) -> None:
        if not guess.reply:
            ahead.compute(is_encrypted, guess.mail.message)
