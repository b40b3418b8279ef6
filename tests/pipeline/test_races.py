"""Two workers racing on the same database: no number twice, no copy twice, nothing quarantined."""

from __future__ import annotations

import threading

from mailbridge.db import Database
from mailbridge.pipeline import Pipeline
from mailbridge.spool import new_inbound, store_inbound
from tests.support.daemon import opening_mail


def test_two_pipelines_racing_from_the_first_case(db, settings, rules) -> None:
    mails = [
        new_inbound(
            opening_mail(sender="ana@compensar.example" if n % 2 else "luis@compensar.example",
                         subject=f"TEN-1001 Incidente {n}").as_bytes(),
            channel="smtp", mail_from="ana@compensar.example", rcpt_tos=["soporte-a@mesa.example"],
        )
        for n in range(20)
    ]
    # The same mail twice (an MTA retry through another worker).
    copy = opening_mail(message_id="<copia@compensar.example>", subject="TEN-1001 Copia").as_bytes()
    mails += [new_inbound(copy, channel="smtp", mail_from="ana@compensar.example",
                          rcpt_tos=["soporte-a@mesa.example"]) for _ in range(2)]
    store_inbound(db, mails)
    other = Database(db.url)
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(database: Database) -> None:
        pipeline = Pipeline(database, settings, lambda: rules)
        for result in pipeline.process_pending():
            with lock:
                outcomes.append(result.outcome)

    threads = [threading.Thread(target=work, args=(d,)) for d in (db, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.dispose()
    assert "quarantined" not in outcomes
    assert sorted(outcomes).count("ticket") == 21
    assert outcomes.count("duplicate") == 1
    from sqlalchemy import text

    with db.reader() as session:
        numbers = [r[0] for r in session.execute(text("SELECT number FROM tickets ORDER BY number"))]
    assert numbers == list(range(1, 22))
