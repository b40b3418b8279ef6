"""A mail whose processing raises is kept with its stage and error, and can be replayed."""

from __future__ import annotations

import json
import subprocess
import sys

from mailbridge.pipeline import Pipeline
from mailbridge.pipeline.stages import STAGES
from mailbridge.spool import new_inbound, store_inbound
from tests.support.daemon import opening_mail


class ExplodingStage:
    """A fault: the stage after routing raises, as a bug would."""

    name = "explode"
    description = "raises"

    def run(self, ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom in a stage")


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {"MAILBRIDGE_DATA_DIR": str(settings.data_dir), "MAILBRIDGE_RULES": str(settings.rules),
           "MAILBRIDGE_DATABASE_URL": settings.resolved_database_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "mailbridge", *args], env=env, capture_output=True,
                          text=True, check=False, cwd=settings.data_dir)


def test_failing_stage_quarantines_then_replay_makes_the_case(db, settings, rules) -> None:
    (inbound_id,) = store_inbound(db, [new_inbound(opening_mail().as_bytes(), channel="smtp",
                                                   mail_from="ana@compensar.example",
                                                   rcpt_tos=["soporte-a@mesa.example"])])
    broken = Pipeline(db, settings, lambda: rules, stages=[*STAGES[:4], ExplodingStage(), *STAGES[4:]])
    result = broken.process(inbound_id)
    assert result is not None and result.outcome == "quarantined"

    listed = json.loads(_cli(settings, "quarantine", "list", "--json").stdout)
    assert [(e["id"], e["stage"]) for e in listed] == [(inbound_id, "explode")]
    assert "boom in a stage" in listed[0]["error"]
    shown = json.loads(_cli(settings, "quarantine", "show", str(inbound_id)).stdout)
    assert "Traceback" in shown["error"]
    # Nothing half-written: the failed transaction left no case behind.
    assert json.loads(_cli(settings, "tickets", "list", "--json").stdout) == []
    status = json.loads(_cli(settings, "status", "--json").stdout)
    assert status["inbound"]["quarantined"] == 1

    replay = _cli(settings, "quarantine", "replay", str(inbound_id))
    assert replay.returncode == 0, replay.stderr
    assert "ticket" in replay.stdout
    (case,) = json.loads(_cli(settings, "tickets", "list", "--json").stdout)
    assert case["tenant_id"] == "TEN-1001"
    assert json.loads(_cli(settings, "quarantine", "list", "--json").stdout) == []


def test_drop_keeps_the_raw_copy_but_leaves_the_list(db, settings, rules) -> None:
    (inbound_id,) = store_inbound(db, [new_inbound(b"Subject: x\r\n\r\nbody", channel="pipe")])
    Pipeline(db, settings, lambda: rules, stages=[ExplodingStage()]).process(inbound_id)
    assert _cli(settings, "quarantine", "drop", str(inbound_id)).returncode == 0
    assert json.loads(_cli(settings, "quarantine", "list", "--json").stdout) == []
    from mailbridge.spool import InboundMail

    with db.reader() as session:
        row = session.get(InboundMail, inbound_id)
        assert row is not None and row.state == "dropped"
        assert row.raw == b"Subject: x\r\n\r\nbody"
