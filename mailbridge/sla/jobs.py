"""The SLA timers: APScheduler 3 with a persistent job store in mailbridge's own database.

Design (SPEC §6: timers survive restarts and run once even with several workers):

- One interval job per sweep kind (`sweep.SWEEP_KINDS`), ids `sla-sweep:<kind>`, stored in
  the `scheduler_jobs` table (created by the migration) through SQLAlchemyJobStore. A
  restarted daemon finds its jobs there with their next run time; a run missed while it
  was down fires once at start (`coalesce=True`, `misfire_grace_time=None`: never
  dropped for being late). Existing jobs are left as they are at start (not replaced),
  so a restart does not push a due run back by an interval.
- APScheduler 3 does not coordinate schedulers sharing a job store: two daemons on one
  PostgreSQL database may both run a sweep. That is safe by construction: a job carries
  only its kind, and each sweep claims every action with a database-side guard
  (`case_actions` unique key, or an UPDATE whose WHERE still requires the old state), so
  each escalation, attempt, closing, breach and late-ack log happens once.
- The scheduler only wakes things up: the sweep takes `now` from an injected clock, and
  tests drive it with a fake one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from mailbridge.db import Database, make_engine, utcnow
from mailbridge.rules import Rules
from mailbridge.settings import Settings
from mailbridge.sla.sweep import SWEEP_KINDS, run_sweep
from mailbridge.tickets.models import SchedulerJob

log = logging.getLogger(__name__)

JOBS_TABLE = SchedulerJob.__tablename__
JOB_PREFIX = "sla-sweep:"
# How soon the scheduler retries after its job store failed (the database was away).
_STORE_RETRY = timedelta(seconds=30)


def job_id(kind: str) -> str:
    return f"{JOB_PREFIX}{kind}"


def sweep_interval(settings: Settings) -> float:
    """Seconds between sweeps (MAILBRIDGE_SLA_SWEEP_INTERVAL); 0 turns the scheduler off."""
    return float(settings.sla_sweep_interval)


@dataclass
class SweepRuntime:
    """What a job needs in this process; jobs in the store carry only their kind."""

    db: Database
    rules: Callable[[], Rules]
    clock: Callable[[], datetime] = utcnow
    on_outbox: Callable[[], None] = lambda: None


_runtime_lock = threading.Lock()
_runtime: SweepRuntime | None = None


def run_sweep_job(kind: str) -> None:
    """The job body stored in the job store (by reference): one sweep at the clock's now."""
    with _runtime_lock:
        runtime = _runtime
    if runtime is None:
        log.warning("sla sweep fired with no runtime in this process", extra={"kind": kind})
        return
    result = run_sweep(kind, runtime.db, runtime.rules(), runtime.clock())
    if result.mails:
        runtime.on_outbox()


class ResilientJobStore(SQLAlchemyJobStore):
    """SQLAlchemyJobStore whose failures do not kill the scheduler thread.

    APScheduler 3 survives a failing `get_due_jobs`, but an exception from `update_job` or
    `get_next_run_time` ends its main loop for good. A database outage must only delay the
    sweeps: a failed update leaves the job due (it runs again; sweeps are idempotent) and a
    failed lookup retries soon.
    """

    def update_job(self, job: Any) -> None:
        try:
            super().update_job(job)
        except SQLAlchemyError as exc:
            log.warning("scheduler could not save a job", extra={"job": job.id,
                                                                 "error": str(exc)[:300]})

    def get_next_run_time(self) -> datetime | None:
        try:
            return super().get_next_run_time()  # type: ignore[no-any-return]
        except SQLAlchemyError as exc:
            log.warning("scheduler could not read its jobs", extra={"error": str(exc)[:300]})
            return datetime.now(UTC) + _STORE_RETRY


class _Scheduler(BackgroundScheduler):
    """BackgroundScheduler that leaves due jobs alone once shut down.

    APScheduler 3's main loop runs one more pass after `shutdown()`: it cannot submit the
    due jobs any more (the executor is closed) yet moves their next run time on, so a sweep
    due at that moment would be lost instead of running at the next start.
    """

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        return super()._process_jobs()  # type: ignore[no-any-return]


class SlaScheduler:
    """Starts and stops the SLA timers of one process (`mailbridge run`)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        rules: Callable[[], Rules],
        *,
        interval: float | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_outbox: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.interval = sweep_interval(settings) if interval is None else interval
        self.runtime = SweepRuntime(db, rules, clock, on_outbox or (lambda: None))
        self.scheduler: _Scheduler | None = None
        self._engine = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def start(self) -> None:
        global _runtime
        if not self.enabled:
            log.info("sla scheduler off (sweep interval 0)")
            return
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per run is noise
        with _runtime_lock:
            _runtime = self.runtime
        # Its own engine: the job store disposes it at shutdown.
        self._engine = make_engine(self.db.url)
        self.scheduler = _Scheduler(
            jobstores={"default": ResilientJobStore(engine=self._engine, tablename=JOBS_TABLE)},
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._after_run, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self.scheduler.start()
        self.ensure_jobs()
        log.info("sla scheduler started", extra={"interval": self.interval,
                                                 "jobs": [job_id(k) for k in SWEEP_KINDS]})

    def ensure_jobs(self) -> None:
        """Add the sweep jobs the store lacks; keep the others (and their next run) as they are."""
        assert self.scheduler is not None
        wanted = timedelta(seconds=self.interval)
        for kind in SWEEP_KINDS:
            existing = self.scheduler.get_job(job_id(kind))
            if existing is None:
                try:
                    self.scheduler.add_job(
                        run_sweep_job, IntervalTrigger(seconds=self.interval, timezone=UTC),
                        args=[kind], id=job_id(kind), name=f"SLA sweep: {kind}",
                        replace_existing=False,
                    )
                except ConflictingIdError:
                    pass  # another daemon added it a moment ago
            elif getattr(existing.trigger, "interval", None) != wanted:
                self.scheduler.reschedule_job(
                    job_id(kind), trigger=IntervalTrigger(seconds=self.interval, timezone=UTC)
                )

    def _after_run(self, event: JobExecutionEvent) -> None:
        if event.exception is not None:
            log.error("sla sweep failed", extra={"job": event.job_id,
                                                  "error": repr(event.exception)})

    def run_now(self, kind: str) -> None:
        """Run the stored job of `kind` in this thread, as the scheduler would (tests, CLI)."""
        assert self.scheduler is not None
        job = self.scheduler.get_job(job_id(kind))
        if job is None:
            raise LookupError(f"no job {job_id(kind)} in the job store")
        job.func(*job.args, **job.kwargs)

    def stop(self, wait: bool = True) -> None:
        global _runtime
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=wait)
            self.scheduler = None
        with _runtime_lock:
            if _runtime is self.runtime:
                _runtime = None
