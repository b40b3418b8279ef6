"""Several waiting mails in one write transaction (SQLite): a bad mail spoils only itself."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from mailbridge.pipeline import Pipeline
from mailbridge.pipeline.context import MailContext, Outcome
from mailbridge.pipeline.stages import STAGES
from mailbridge.spool import new_inbound, store_inbound
from tests.support.daemon import opening_mail


class Explode:
    """A stage that fails for one subject only (a bug met by one mail)."""

    name = "explode"
    description = "raises for the mail whose subject says so"

    def run(self, ctx: MailContext) -> Outcome | None:
        if "EXPLOTA" in ctx.mail.subject:
            raise RuntimeError("stage bug met by this mail")
        return None


def _store(db, subjects: list[str]) -> list[int]:  # type: ignore[no-untyped-def]
    mails = [
        new_inbound(opening_mail(subject=s).as_bytes(), channel="smtp",
                    mail_from="ana@compensar.example", rcpt_tos=["soporte-a@mesa.example"])
        for s in subjects
    ]
    return store_inbound(db, mails)


def _rows(db) -> list[tuple[int, str, str | None, str | None]]:  # type: ignore[no-untyped-def]
    with db.reader() as session:
        return [tuple(r) for r in session.execute(text(  # type: ignore[misc]
            "SELECT id, state, outcome, stage FROM inbound ORDER BY id")).all()]


def test_a_batch_opens_each_case_and_quarantines_only_the_bad_mail(db, settings, rules) -> None:
    if not db.is_sqlite:
        pytest.skip("batches are SQLite's (one write lock); PostgreSQL runs a mail a transaction")
    subjects = [f"TEN-1001 Caída del correo – INC{k}" for k in range(5)]
    subjects[2] = "TEN-1001 EXPLOTA el proceso – INC99"
    ids = _store(db, subjects)
    pipeline = Pipeline(db, settings, lambda: rules, stages=[Explode(), *STAGES], batch_size=16)

    results = pipeline.process_pending()

    assert sorted(r.inbound_id for r in results) == ids
    by_id = {r.inbound_id: r for r in results}
    assert by_id[ids[2]].outcome == "quarantined"
    assert [by_id[i].outcome for i in ids if i != ids[2]] == ["ticket"] * 4
    rows = _rows(db)
    assert [r[1] for r in rows] == ["done", "done", "quarantined", "done", "done"]
    assert rows[2][3] == "explode"
    # The bad mail left nothing behind: four cases, numbered without a gap, four acks.
    with db.reader() as session:
        numbers = [n for (n,) in session.execute(text("SELECT number FROM tickets ORDER BY 1"))]
        acks = session.execute(text("SELECT count(*) FROM outbox WHERE kind = 'ack'")).scalar()
    assert numbers == [1, 2, 3, 4]
    assert acks == 4


def test_batches_give_the_same_cases_as_one_mail_at_a_time(db, settings, rules) -> None:
    subjects = [f"TEN-1001 Caída del correo – INC{k}" for k in range(6)]
    subjects.append(subjects[0])  # the same subject again: joins case 1 as a look-alike
    _store(db, subjects)
    results = Pipeline(db, settings, lambda: rules, batch_size=4).process_pending()
    assert [r.outcome for r in results] == ["ticket"] * 6 + ["reply:look-alike"]
    assert [r.ticket_number for r in results] == [1, 2, 3, 4, 5, 6, 1]
    assert all(row[1] == "done" for row in _rows(db))
