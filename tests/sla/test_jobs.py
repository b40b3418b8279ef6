"""The SLA timers in APScheduler's persistent job store, in the real SQLite database.

Time inside the sweeps comes from a fake clock; the scheduler itself only wakes them up.
Nothing here sleeps to let time pass: where the scheduler's own thread must run a job,
the test waits (bounded) for that job's effect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from mailbridge.sla.jobs import JOB_PREFIX, SlaScheduler, job_id
from mailbridge.sla.sweep import SWEEP_KINDS
from mailbridge.tickets.models import SchedulerJob
from tests.sla.helpers import (
    BOGOTA,
    SANTIAGO,
    FakeClock,
    deliver_at,
    events,
    local,
    opening,
    outbox,
    rewind_stored_jobs,
    sla_rules,
)

HOUR = 3600.0


@pytest.fixture
def rules():  # type: ignore[no-untyped-def]
    return sla_rules()


@pytest.fixture
def schedulers() -> Iterator[list[SlaScheduler]]:
    started: list[SlaScheduler] = []
    yield started
    for scheduler in started:
        scheduler.stop()


def _start(db, settings, rules, clock, started, interval=HOUR) -> SlaScheduler:  # type: ignore[no-untyped-def]
    scheduler = SlaScheduler(db, settings, lambda: rules, interval=interval, clock=clock)
    started.append(scheduler)
    scheduler.start()
    return scheduler


def _jobs(db) -> dict[str, float | None]:  # type: ignore[no-untyped-def]
    with db.reader() as session:
        return dict(session.execute(select(SchedulerJob.id, SchedulerJob.next_run_time)).all())


def _sweeps(kind: str) -> float:
    return REGISTRY.get_sample_value("mailbridge_sla_sweeps_total",
                                     {"kind": kind, "outcome": "ok"}) or 0.0


def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the scheduler did not run the job in time")
        time.sleep(0.02)


def test_one_job_per_sweep_is_stored_in_the_database(db, settings, rules, schedulers) -> None:
    before = time.time()
    scheduler = _start(db, settings, rules, FakeClock(datetime.now(UTC)), schedulers)
    jobs = _jobs(db)
    assert sorted(jobs) == sorted(f"{JOB_PREFIX}{kind}" for kind in SWEEP_KINDS)
    for next_run in jobs.values():
        assert next_run is not None and before + HOUR - 5 <= next_run <= time.time() + HOUR
    scheduler.stop()
    schedulers.clear()
    assert _jobs(db) == jobs  # stopping keeps them: they are the timers' memory


def test_a_restart_keeps_the_jobs_and_runs_a_missed_sweep_once(
    db, settings, rules, schedulers
) -> None:
    """Downtime across three sweep times: at start each job runs once (coalesced, never
    dropped as a misfire), then waits a whole interval again."""
    opened = local(BOGOTA, 2026, 3, 21, 2)
    deliver_at(db, settings, rules, opening(), opened)
    clock = FakeClock(opened + timedelta(hours=25))
    _start(db, settings, rules, clock, schedulers).stop()
    schedulers.clear()
    # The daemon stayed down across three sweep times.
    rewind_stored_jobs(settings.resolved_database_url,
                       datetime.now(UTC) - timedelta(hours=3, seconds=1))
    stored = _jobs(db)
    assert all(next_run < time.time() - 3 * HOUR for next_run in stored.values())
    runs = {kind: _sweeps(kind) for kind in SWEEP_KINDS}
    _start(db, settings, rules, clock, schedulers)
    _wait_for(lambda: all(_sweeps(kind) == runs[kind] + 1 for kind in SWEEP_KINDS))
    assert set(_jobs(db)) == set(stored)  # the same jobs, not added again
    assert all(next_run > time.time() + HOUR - 60 for next_run in _jobs(db).values())
    assert len(outbox(db, "escalation")) == 1  # the catch-up sweep escalated the case
    time.sleep(0.3)  # nothing else is due: no second run appears
    assert all(_sweeps(kind) == runs[kind] + 1 for kind in SWEEP_KINDS)


def test_two_schedulers_on_one_database_share_the_jobs(db, settings, rules, schedulers) -> None:
    clock = FakeClock(datetime.now(UTC))
    _start(db, settings, rules, clock, schedulers)
    _start(db, settings, rules, clock, schedulers)
    assert len(_jobs(db)) == len(SWEEP_KINDS)


def test_a_changed_interval_reschedules_the_stored_jobs(db, settings, rules, schedulers) -> None:
    clock = FakeClock(datetime.now(UTC))
    _start(db, settings, rules, clock, schedulers).stop()
    schedulers.clear()
    scheduler = _start(db, settings, rules, clock, schedulers, interval=120)
    job = scheduler.scheduler.get_job(job_id("closing"))
    assert job.trigger.interval == timedelta(seconds=120)
    assert _jobs(db)[job_id("closing")] <= time.time() + 121


def test_the_fake_clock_drives_the_stored_jobs_through_nights_weekends_holiday_and_dst(
    db, settings, rules, schedulers
) -> None:
    """The stored jobs, run as the scheduler runs them, with `now` from a fake clock."""
    clock = FakeClock(local(BOGOTA, 2026, 3, 20, 8))
    scheduler = _start(db, settings, rules, clock, schedulers)

    def tick(at: datetime) -> None:
        clock.set(at)
        for kind in SWEEP_KINDS:
            scheduler.run_now(kind)

    # 1 — Premium URGENTE, Saturday 02:00: due at 03:00 that night, escalated Sunday 02:00.
    deliver_at(db, settings, rules, opening(), local(BOGOTA, 2026, 3, 21, 2))
    # 2 — Profesional MEDIA in Bogotá, Friday 16:00: San José Monday → due Tuesday 17:00.
    deliver_at(db, settings, rules,
               opening(tenant="TEN-8008", sender="pedro@colsubsidio.example", name="Pedro",
                       to="soporte-b@mesa.example"),
               local(BOGOTA, 2026, 3, 20, 16), rcpt="soporte-b@mesa.example")
    # 3 — Profesional MEDIA in Santiago, Thursday 2 April 15:00 (UTC-3): Good Friday, then
    # clocks go back on Sunday → due Monday 6 April 16:00 at UTC-4.
    deliver_at(db, settings, rules,
               opening(tenant="TEN-9009", sender="carolina@falabella.example", name="Carolina",
                       to="soporte-b@mesa.example"),
               local(SANTIAGO, 2026, 4, 2, 15), rcpt="soporte-b@mesa.example")

    def breached() -> list[int]:
        return [n for n in (1, 2, 3) if events(db, n, "sla_breached")]

    tick(local(BOGOTA, 2026, 3, 21, 2, 59))
    assert breached() == []
    tick(local(BOGOTA, 2026, 3, 21, 3, 1))  # the night does not stop a 7x24 clock
    assert breached() == [1]
    tick(local(BOGOTA, 2026, 3, 22, 1, 59))
    assert outbox(db, "escalation") == []
    tick(local(BOGOTA, 2026, 3, 22, 2, 0))  # Sunday: 24 clock hours
    assert [m.rcpt_tos for m in outbox(db, "escalation")] == [["ejecutivo.compensar@mesa.example"]]
    tick(local(BOGOTA, 2026, 3, 23, 17))  # San José: the office case does not run
    assert breached() == [1]
    tick(local(BOGOTA, 2026, 3, 24, 16, 59))
    assert breached() == [1]
    tick(local(BOGOTA, 2026, 3, 24, 17, 1))
    assert breached() == [1, 2]
    tick(local(SANTIAGO, 2026, 4, 6, 15, 59))  # one hour later than UTC-3 arithmetic says
    assert breached() == [1, 2]
    tick(local(SANTIAGO, 2026, 4, 6, 16, 1))
    assert breached() == [1, 2, 3]
    assert events(db, 3, "sla_breached")[0]["data"]["due_at"] == "2026-04-06T20:00:00+00:00"
    # Every tick above was also an acks sweep: the three unsent acks were told once each.
    assert [len(events(db, n, "ack_late")) for n in (1, 2, 3)] == [1, 1, 1]


def test_a_sweep_due_when_the_daemon_stops_is_left_for_the_next_start(
    db, settings, rules, schedulers
) -> None:
    """APScheduler 3 makes one more pass after shutdown and would move a due job on without
    running it; ours leaves it due."""
    scheduler = _start(db, settings, rules, FakeClock(datetime.now(UTC)), schedulers)
    scheduler.scheduler.pause()  # the jobs fall due while nothing runs them …
    # A pass that began before the pause holds the job stores' lock: let it end first,
    # or under load it may find the rewound jobs below due and run them.
    with scheduler.scheduler._jobstores_lock:
        pass
    due = datetime.now(UTC) - timedelta(seconds=5)
    rewind_stored_jobs(settings.resolved_database_url, due)
    scheduler.stop()  # … and then SIGTERM
    schedulers.clear()
    assert all(abs(next_run - due.timestamp()) < 0.01 for next_run in _jobs(db).values())
