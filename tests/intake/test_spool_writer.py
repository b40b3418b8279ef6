"""The SMTP group-commit writer lets go of each mail once it is committed."""

from __future__ import annotations

import asyncio
import gc
import weakref

from mailbridge.db import Database
from mailbridge.intake.smtp import SpoolWriter
from mailbridge.spool import InboundMail, new_inbound


def test_a_committed_mail_is_not_kept_until_the_next_one(db: Database) -> None:
    async def scenario() -> tuple[int, weakref.ref[InboundMail]]:
        stored: list[int] = []
        writer = SpoolWriter(db, on_stored=lambda: stored.append(1))
        writer.start()
        mail = new_inbound(bytearray(b"Subject: big\r\n\r\n" + b"x" * 100_000), channel="smtp")
        gone = weakref.ref(mail)
        inbound_id = await writer.store(mail)
        del mail
        await asyncio.sleep(0)  # the writer is back waiting for the next mail
        gc.collect()
        alive = gone() is not None
        await writer.stop()
        assert stored == [1]
        assert not alive, "the writer still holds the last mail (and its message buffer)"
        return inbound_id, gone

    inbound_id, _ = asyncio.run(scenario())
    with db.reader() as session:
        assert session.get(InboundMail, inbound_id).size == 100_016  # type: ignore[union-attr]
