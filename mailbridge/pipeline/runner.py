"""The pipeline's runner: stored mail → case, the stages in one transaction per mail."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import bindparam, update
from sqlalchemy.exc import (
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from mailbridge import metrics
from mailbridge.db import Database, utcnow
from mailbridge.outbound.webhooks import emit_quarantined
from mailbridge.parse.ahead import Ahead
from mailbridge.parse.mime import ParsedMail, parse_mail
from mailbridge.pipeline.context import (
    FLOW_CASE,
    Guess,
    MailContext,
    Outcome,
    envelope_sender_of,
)
from mailbridge.pipeline.stages import STAGES, Stage, work_ahead
from mailbridge.rules import Rules
from mailbridge.settings import Settings
from mailbridge.spool import (
    STATE_DONE,
    STATE_NEW,
    InboundMail,
    claim,
    next_pending,
    pending_mail,
    quarantine,
)
from mailbridge.tickets.models import Ticket
from mailbridge.workers import BackgroundLoop

log = logging.getLogger(__name__)


# Database trouble that says nothing about the mail (locked, gone, schema behind):
# the mail stays queued and is retried; only errors caused by the mail quarantine it.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError, InternalError, ProgrammingError)


class StageError(Exception):
    """A stage raised; carries the stage's name for the quarantine record."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error!r}")
        self.stage = stage
        self.error = error


_FINISH = (
    update(InboundMail.__table__)
    .where(InboundMail.__table__.c.id == bindparam("inbound_pk"))
    .values({name: bindparam(name) for name in
             ("message_id", "state", "outcome", "processed_at", "ticket_id")})
)

# A batch stops growing at this many bytes of raw mail: parsed mails wait in memory
# for the batch's transaction, so a big one goes alone.
BATCH_BYTES = 2 * 1024 * 1024
# …and commits once it has held the write lock this long (seconds): intake waits for it.
BATCH_HOLD = 0.010


@dataclass
class _Parsed:
    inbound_id: int
    mail: ParsedMail | None
    error: Exception | None
    size: int
    ahead: Ahead = field(default_factory=Ahead)


def guess_for(mail: ParsedMail, mail_from: str, channel: str, rules: Rules) -> Guess:
    """What the stages will probably see of this mail (for their work done ahead): a reply
    has In-Reply-To/References or the case token."""
    sender = mail.from_addr or mail_from.lower().strip("<>")
    return Guess(
        mail=mail, rules=rules, envelope_sender=envelope_sender_of(channel, mail_from),
        sender=sender, flow=FLOW_CASE, staff=rules.is_staff(sender),
        reply=bool(mail.in_reply_to or mail.references)
        or f"[{rules.desk.case_token}" in mail.subject,
    )


@dataclass
class _Done:
    outcome: Outcome
    number: int | None
    channel: str
    opened_priority: str | None = None  # the priority of the case this mail opened


@dataclass
class ProcessResult:
    inbound_id: int
    outcome: str
    ticket_number: int | None = None


def wait_settled(db: Database, inbound_id: int, timeout: float = 10.0) -> ProcessResult | None:
    """What became of a mail another worker took (a replay raced by the pipeline
    processes): its outcome and case once it has left `new`, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        with db.reader() as session:
            mail = session.get(InboundMail, inbound_id)
            if mail is not None and mail.state != STATE_NEW:
                number = (session.get(Ticket, mail.ticket_id).number  # type: ignore[union-attr]
                          if mail.ticket_id is not None else None)
                return ProcessResult(inbound_id, mail.outcome or mail.state, number)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


class Pipeline:
    """Processes stored mail; `rules` is read per mail so SIGHUP reloads apply."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        rules: Callable[[], Rules],
        stages: list[Stage] | None = None,
        on_outbox: Callable[[], None] | None = None,
        on_imap_done: Callable[[], None] | None = None,
        shard: tuple[int, int] | None = None,
        batch_size: int = 1,
    ) -> None:
        self.db = db
        # (k, n): this worker takes the mails whose id is k modulo n (pipeline processes).
        self.shard = shard
        # SQLite: up to this many mails share one write transaction (see process_batch).
        self.batch_size = batch_size
        self.settings = settings
        self.rules = rules
        self.stages = stages if stages is not None else STAGES
        self.on_outbox = on_outbox or (lambda: None)
        # IMAP mail is moved on the server once processed: tell the poller.
        self.on_imap_done = on_imap_done or (lambda: None)

    def process(self, inbound_id: int) -> ProcessResult | None:
        """Process one stored mail, retrying once when a concurrent worker won a race.

        A unique-key conflict (two workers creating the same counter row or storing
        two copies of one Message-ID at once) says nothing about the mail: the second
        attempt sees the winner's rows and decides again (e.g. "duplicate").
        """
        for _attempt in range(2):
            try:
                return self._process_once(inbound_id)
            except IntegrityError:
                log.info("concurrent write conflict; retrying", extra={"inbound_id": inbound_id})
        try:
            return self._process_once(inbound_id)
        except IntegrityError as exc:
            # Not a race after all: the mail itself conflicts. Keep it, say why.
            detail = "".join(traceback.format_exception(exc))
            quarantine(self.db, inbound_id, stage="store", error=detail, then=emit_quarantined)
            metrics.PROCESSED.labels(outcome="quarantined").inc()
            return ProcessResult(inbound_id, "quarantined")

    def _process_once(self, inbound_id: int) -> ProcessResult | None:
        """Process one stored mail; None when another worker has it or it is done.

        Transient database errors propagate (the row stays `new` and is
        retried); any other error quarantines the mail with its stage.
        """
        parsed = self._read_and_parse(inbound_id)
        if parsed is None:
            return None
        try:
            with self.db.transaction() as session:
                done = self._apply(session, parsed)
        except StageError as exc:
            return self._quarantined(inbound_id, exc)
        return self._finished(parsed, done)

    def _read_and_parse(self, inbound_id: int, session: Session | None = None) -> _Parsed | None:
        """Read and parse outside the write transaction (on SQLite the write lock is
        the whole database, and intake is waiting for it); None if not waiting."""
        if session is None:
            with self.db.reader() as session:
                found = pending_mail(session, inbound_id)
        else:
            found = pending_mail(session, inbound_id)
        if found is None:
            return None
        raw, mail_from, channel = found
        del found
        size = len(raw)
        try:
            mail = parse_mail(raw)
        except Exception as exc:  # parse_mail never raises; if it does, keep the mail
            return _Parsed(inbound_id, None, exc, size)
        del raw
        parsed = _Parsed(inbound_id, mail, None, size)
        try:
            work_ahead(parsed.ahead, guess_for(mail, mail_from, channel, self.rules()),
                       self.stages)
        except Exception:  # the stage will meet it again, and quarantine with its name
            parsed.ahead = Ahead()
        return parsed

    def _apply(self, session: Session, parsed: _Parsed) -> _Done | None:
        """The stages for one mail in the caller's transaction; None if not claimable."""
        inbound = claim(session, parsed.inbound_id)
        if inbound is None:
            return None
        channel = inbound.channel
        stage_name = "parse"
        try:
            if parsed.error is not None:
                raise parsed.error
            mail = parsed.mail
            assert mail is not None
            ctx = MailContext(
                session=session,
                inbound=inbound,
                mail=mail,
                rules=self.rules(),
                settings=self.settings,
                now=utcnow(),
            )
            outcome = None
            with parsed.ahead.active():
                for stage in self.stages:
                    flows = getattr(stage, "flows", None)  # none declared: every flow
                    if flows is not None and ctx.flow not in flows:
                        continue  # the flow may change on the way (FromTarget)
                    stage_name = stage.name
                    outcome = stage.run(ctx)
                    if outcome is not None:
                        break
            outcome = outcome or ctx.outcome or Outcome("done")
        except (*TRANSIENT_DB_ERRORS, IntegrityError):
            raise
        except Exception as exc:
            raise StageError(stage_name, exc) from exc
        # Set with the outcome: one UPDATE of the row at the end, as a Core statement
        # (the unit of work's flush of this one row cost more than the statement); the
        # object takes the values as committed, so no second UPDATE follows.
        finished = {
            "message_id": mail.message_id[:998] if mail.message_id else None,
            "state": STATE_DONE,
            "outcome": outcome.name[:64],
            "processed_at": utcnow(),
            "ticket_id": ctx.ticket.id if ctx.ticket is not None else inbound.ticket_id,
        }
        session.connection().execute(_FINISH, {"inbound_pk": inbound.id, **finished})
        for key, value in finished.items():
            set_committed_value(inbound, key, value)
        number = ctx.ticket.number if ctx.ticket is not None else None
        opened = ctx.ticket.priority if ctx.opened_case and ctx.ticket is not None else None
        return _Done(outcome, number, channel, opened)

    def _quarantined(self, inbound_id: int, exc: StageError) -> ProcessResult:
        detail = "".join(traceback.format_exception(exc.error))
        quarantine(self.db, inbound_id, stage=exc.stage, error=detail, then=emit_quarantined)
        log.error(
            "mail quarantined",
            extra={"inbound_id": inbound_id, "stage": exc.stage, "error": repr(exc.error)},
        )
        metrics.PROCESSED.labels(outcome="quarantined").inc()
        self.on_imap_done()
        return ProcessResult(inbound_id, "quarantined")

    def _finished(self, parsed: _Parsed, done: _Done | None) -> ProcessResult | None:
        """After the commit: count, log, wake the sender (and the IMAP poller)."""
        if done is None:
            return None
        outcome = done.outcome
        metrics.PROCESSED.labels(outcome=outcome.name.split(":", 1)[0]).inc()
        if done.opened_priority is not None:
            metrics.TICKETS_CREATED.labels(priority=done.opened_priority).inc()
        log.info(
            "mail processed",
            extra={
                "inbound_id": parsed.inbound_id,
                "outcome": outcome.name,
                "case": done.number,
                "message_id": parsed.mail.message_id if parsed.mail is not None else None,
                "detail": outcome.detail,
            },
        )
        self.on_outbox()
        if done.channel == "imap":
            self.on_imap_done()
        return ProcessResult(parsed.inbound_id, outcome.name, done.number)

    def process_batch(self, inbound_ids: list[int]) -> list[ProcessResult]:
        """Several mails in one write transaction (SQLite).

        On SQLite every transaction takes the database's one write lock and ends in
        an fsync; a batch pays for both once. Should one mail's stage raise, or meet a
        unique-key conflict, the whole transaction is rolled back and the mails of
        that batch go again one at a time (`process`: quarantine, retry), so a bad
        mail spoils nothing but itself; that is rare enough not to pay for a
        savepoint per mail (0.16 ms each, under the lock). Database trouble
        propagates: every mail stays queued.
        """
        with self.db.reader() as reader:  # one read transaction for the batch
            parsed = [p for p in (self._read_and_parse(i, reader) for i in inbound_ids)
                      if p is not None]
        results: list[ProcessResult] = []
        while parsed:
            done: list[tuple[_Parsed, _Done | None]] = []
            taken: list[_Parsed] = []
            try:
                with self.db.transaction() as session:
                    # Intake waits for this lock before it may answer 250: a batch ends
                    # once it has held the lock for BATCH_HOLD, the rest goes next.
                    started = time.monotonic()
                    while parsed and (not taken or time.monotonic() - started < BATCH_HOLD):
                        item = parsed.pop(0)
                        taken.append(item)
                        done.append((item, self._apply(session, item)))
            except (StageError, IntegrityError) as exc:
                log.info("a mail spoiled its batch; the batch goes again one by one",
                         extra={"inbound_ids": [p.inbound_id for p in taken],
                                "error": repr(exc)[:300]})
                for item in taken:
                    result = self.process(item.inbound_id)
                    if result is not None:
                        results.append(result)
                continue
            results += [r for r in (self._finished(p, d) for p, d in done) if r is not None]
        return results

    def process_pending(
        self, limit: int = 100, halt: Callable[[], bool] | None = None
    ) -> list[ProcessResult]:
        """Process the oldest waiting mails (this worker's share); `halt` cuts the pass short."""
        with self.db.reader() as session:
            pending = next_pending(session, limit, self.shard)
        # Batches are SQLite's (one write lock for the database); elsewhere one mail each.
        batch_size = self.batch_size if self.db.is_sqlite else 1
        results: list[ProcessResult] = []
        for batch in _batches(pending, batch_size):
            if halt is not None and halt():
                break
            if len(batch) > 1:
                results += self.process_batch(batch)
            elif (result := self.process(batch[0])) is not None:
                results.append(result)
        return results


def _batches(pending: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Consecutive ids in groups of `batch_size`; a big mail makes its own group."""
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for inbound_id, size in pending:
        if current and (len(current) >= batch_size or total + size > BATCH_BYTES):
            batches.append(current)
            current, total = [], 0
        current.append(inbound_id)
        total += size
    if current:
        batches.append(current)
    return batches


def run_pipeline_loop(
    pipeline: Pipeline,
    poll_interval: float,
    wait: Callable[[float], None],
    stopping: Callable[[], bool],
    halt: Callable[[], bool] | None = None,
) -> None:
    """Process waiting mail until `stopping()` and the queue is empty (or `halt()`).

    `wait(seconds)` returns early when new mail is stored. Database trouble backs
    off (0.5 s doubling to 30 s) and the mail stays queued.
    """
    backoff = 0.0
    while not (halt is not None and halt()):
        try:
            results = pipeline.process_pending(halt=halt)
            backoff = 0.0
        except TRANSIENT_DB_ERRORS as exc:
            backoff = min(30.0, max(0.5, backoff * 2))
            log.warning("database busy or gone; retrying", extra={"error": str(exc)[:300]})
            results = []
        except Exception:
            log.exception("pipeline pass failed")
            backoff = min(30.0, max(0.5, backoff * 2))
            results = []
        if stopping() and not results:
            return
        if results and not backoff:
            wait(0)  # no pause, but what came meanwhile is read (a reload, a stop)
            continue
        wait(backoff or poll_interval)


class PipelineWorker(BackgroundLoop):
    """A thread that processes stored mail as soon as intake signals it.

    On stop it finishes the mail in hand and the queue already stored.
    """

    thread_name = "pipeline"

    def __init__(self, pipeline: Pipeline, poll_interval: float) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.poll_interval = poll_interval

    def _run(self) -> None:
        def wait(timeout: float) -> None:
            self.wakeup.wait(timeout)
            self.wakeup.clear()

        run_pipeline_loop(self.pipeline, self.poll_interval, wait, self._stop.is_set)
