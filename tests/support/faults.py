"""Faults injected on purpose: a stage that raises, as a bug would (the real runner
quarantines the mail, with its webhook event)."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import Daemon, opening_mail


class ExplodingStage:
    name = "explode"
    description = "raises"

    def run(self, ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom in a stage")


def quarantine_one(daemon: Daemon, subject: str = "TEN-1001 Falla que explota") -> int:
    """Store a mail in the daemon's database and run it through the real pipeline with a
    stage that raises (the daemon is not running: nobody else takes it). Its id."""
    import mailbridge.models  # noqa: F401
    from mailbridge.db import Database
    from mailbridge.pipeline import Pipeline
    from mailbridge.pipeline.stages import STAGES
    from mailbridge.rules import load_rules
    from mailbridge.settings import Settings
    from mailbridge.spool import new_inbound, store_inbound

    assert daemon.proc is None or daemon.proc.poll() is not None, "stop the daemon first"
    settings = Settings(data_dir=daemon.data_dir, rules=Path(daemon.env["MAILBRIDGE_RULES"]),
                        database_url=daemon.database_url, _env_file=None)
    rules = load_rules(settings.rules)
    db = Database(daemon.database_url)
    try:
        (inbound_id,) = store_inbound(db, [new_inbound(
            opening_mail(subject=subject).as_bytes(), channel="smtp",
            mail_from="ana@compensar.example", rcpt_tos=["soporte-a@mesa.example"])])
        broken = Pipeline(db, settings, lambda: rules,
                          stages=[*STAGES[:4], ExplodingStage(), *STAGES[4:]])
        result = broken.process(inbound_id)
        assert result is not None and result.outcome == "quarantined"
    finally:
        db.dispose()
    return int(inbound_id)
