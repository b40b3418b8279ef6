"""The pipeline in child processes, so intake and processing use more than one core.

`mailbridge run` with `MAILBRIDGE_PIPELINE_PROCESSES=N` (N ≥ 1) starts N children
(`python -m mailbridge.pipeline.processes`), each running the same `Pipeline` on
the same database; child k takes the stored mails whose id is k modulo N, so no
two children parse the same mail. Nothing changes for durability: a mail is
still processed in one transaction, and a child killed midway leaves its mail
`new` for the restarted child (the parent restarts a child that dies).

Parent and child talk over a socket pair:
- parent → child, one byte each: `w` new mail stored, `r` reload the rules, `s` stop
  (finish the stored queue, then exit);
- child → parent, JSON: how many outbound mails and IMAP mails it finished (the
  parent wakes its sender and IMAP pollers) and its counter increments (the parent's
  /metrics stays the one place to scrape).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from mailbridge import metrics

if TYPE_CHECKING:
    from mailbridge.settings import Settings

log = logging.getLogger("mailbridge.pipeline.processes")

WAKE, RELOAD, STOP = b"w", b"r", b"s"
_ENV_SETTINGS = "MAILBRIDGE_CHILD_SETTINGS"
_ENV_SHARD = "MAILBRIDGE_CHILD_SHARD"
_ENV_FD = "MAILBRIDGE_CHILD_FD"
_ENV_PARENT = "MAILBRIDGE_CHILD_PARENT"
RESTART_BACKOFF_MAX = 30.0


def _counters() -> dict[str, Counter]:
    return {c._name: c for c in vars(metrics).values() if isinstance(c, Counter)}


class CounterDeltas:
    """Increments of this process's counters since the last call (sent to the parent)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def take(self) -> list[list[Any]]:
        deltas: list[list[Any]] = []
        for name, counter in _counters().items():
            for family in counter.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    key = (name, tuple(sorted(sample.labels.items())))
                    delta = sample.value - self._last.get(key, 0.0)
                    if delta:
                        deltas.append([name, dict(key[1]), delta])
                        self._last[key] = sample.value
        return deltas


def apply_counter_deltas(deltas: list[list[Any]]) -> None:
    counters = _counters()
    for name, labels, delta in deltas:
        counter = counters.get(name)
        if counter is None:
            continue
        (counter.labels(**labels) if labels else counter).inc(delta)


class _Child:
    """The parent's handle on one child: its process and its end of the socket pair."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.send_lock = threading.Lock()
        self.started_at = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, message: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        with self.send_lock:
            try:
                conn.send_bytes(message)
            except OSError:
                pass  # the child is gone; its reader thread restarts it


class _Signal:
    """`wakeup.set()` as the service calls it: coalesced, never blocks the caller."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def set(self) -> None:
        self._event.set()


class PipelineProcesses:
    """The parent side: starts, wakes, restarts and stops the pipeline children."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        on_outbox: Callable[[], None],
        on_imap_done: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.count = count
        self.on_outbox = on_outbox
        self.on_imap_done = on_imap_done or (lambda: None)
        self._wake = threading.Event()
        self.wakeup = _Signal(self._wake)
        self._stopping = threading.Event()
        self.children = [_Child(i) for i in range(count)]
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
            thread = threading.Thread(
                target=self._watch, args=(child,), name=f"pipeline-{child.index}-watch",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        waker = threading.Thread(target=self._waker, name="pipeline-waker", daemon=True)
        waker.start()
        self._threads.append(waker)

    def stop(self, timeout: float = 30.0) -> None:
        """Children finish the stored queue and exit; killed after `timeout`."""
        self._stopping.set()
        self._wake.set()
        for child in self.children:
            child.send(STOP)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("pipeline process did not finish in time; killed",
                          extra={"pid": child.process.pid, "index": child.index})
                child.process.kill()
                child.process.wait()
        for thread in self._threads:
            thread.join(2.0)

    def reload(self) -> None:
        for child in self.children:
            child.send(RELOAD)

    def readiness(self) -> dict[str, Any]:
        alive = sum(1 for child in self.children if child.alive)
        return {"ok": alive == self.count, "processes": self.count, "alive": alive}

    # -- internals ---------------------------------------------------------------
    def _spawn(self, child: _Child) -> None:
        parent_end, child_end = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k != "MAILBRIDGE_RELAY_PASSWORD"}
        # The pipeline sends nothing itself: the relay's password stays with the parent.
        env[_ENV_SETTINGS] = self.settings.model_dump_json(exclude={"relay_password"})
        env[_ENV_SHARD] = f"{child.index}/{self.count}"
        env[_ENV_FD] = str(child_end.fileno())
        env[_ENV_PARENT] = str(os.getpid())
        try:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "mailbridge.pipeline.processes"],
                env=env, pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        child.conn = Connection(parent_end.detach())
        child.started_at = time.monotonic()
        log.info("pipeline process started",
                 extra={"pid": child.process.pid, "index": child.index, "of": self.count})

    def _waker(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            for child in self.children:
                child.send(WAKE)

    def _watch(self, child: _Child) -> None:
        """Read what the child reports; restart it when it dies (not when stopping)."""
        backoff = 1.0
        while True:
            conn = child.conn
            assert conn is not None
            try:
                while True:
                    self._handle(json.loads(conn.recv_bytes()))
            except (EOFError, OSError, ValueError):
                pass
            conn.close()
            child.conn = None
            process = child.process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                if code:
                    log.error("pipeline process exited with an error",
                              extra={"pid": process.pid, "index": child.index, "code": code})
                return
            # A child that lived a while was not failing at start: the backoff starts over.
            if time.monotonic() - child.started_at > 60:
                backoff = 1.0
            log.error("pipeline process died; restarting",
                      extra={"pid": process.pid, "index": child.index, "code": code,
                             "restart_in": backoff})
            while True:
                if self._stopping.wait(backoff):
                    return
                backoff = min(RESTART_BACKOFF_MAX, backoff * 2)
                try:
                    self._spawn(child)
                    break
                except OSError as exc:  # no memory, no process slots: try again later
                    log.error("pipeline process could not start",
                              extra={"index": child.index, "error": str(exc),
                                     "restart_in": backoff})
            self._wake.set()

    def _handle(self, report: dict[str, Any]) -> None:
        apply_counter_deltas(report.get("counters", []))
        if report.get("outbox"):
            self.on_outbox()
        if report.get("imap"):
            self.on_imap_done()


# -- the child ---------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Linux: get SIGTERM when the parent dies, so no orphan keeps processing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(0)


class _ShardFilter(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.pipeline_process = self.index
        return True


class _Flag:
    """A stop flag the SIGTERM handler may set. `threading.Event.set` takes a lock: a
    signal arriving while this thread holds it (setting the same event after the parent's
    socket closed, the moment the parent's death signal comes) deadlocked the child for
    good (seen once in the crash test: a child left alive with no parent)."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


def child_main() -> int:
    # The pipeline's own imports register every table it writes (see Database).
    from mailbridge.db import Database
    from mailbridge.logs import setup_logging
    from mailbridge.memory import tune_malloc
    from mailbridge.outbound.webhooks import load_webhook_targets, record_events
    from mailbridge.pipeline import Pipeline, run_pipeline_loop
    from mailbridge.rules import RulesHolder
    from mailbridge.settings import Settings

    tune_malloc()
    settings = Settings(**json.loads(os.environ[_ENV_SETTINGS]))
    index, count = (int(part) for part in os.environ[_ENV_SHARD].split("/"))
    conn = Connection(int(os.environ[_ENV_FD]))
    setup_logging(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ShardFilter(index))
    _die_with_parent(int(os.environ[_ENV_PARENT]))

    stop = _Flag()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent reloads and tells us
    parent = int(os.environ[_ENV_PARENT])
    parent_gone = _Flag()

    def on_sigterm(*_: object) -> None:
        # systemd signals the whole group: drain like the parent does. The parent's
        # death signal (PR_SET_PDEATHSIG) is SIGTERM too: then stop after the mail in hand.
        if os.getppid() != parent:
            parent_gone.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)

    rules = RulesHolder(settings.rules)
    db = Database(settings.resolved_database_url)
    # As the parent: events only when a webhook target is configured (it checked them).
    record_events(db, load_webhook_targets(settings.webhooks, path=settings.webhooks_file))
    report: dict[str, int] = {"outbox": 0, "imap": 0}
    deltas = CounterDeltas()

    def flush(counters_too: bool = True) -> None:
        counters = deltas.take() if counters_too else []
        if not (report["outbox"] or report["imap"] or counters):
            return
        try:
            conn.send_bytes(json.dumps({**report, "counters": counters}).encode())
        except OSError:
            parent_gone.set()
            stop.set()
        report["outbox"] = report["imap"] = 0

    def on_outbox() -> None:
        report["outbox"] += 1
        flush(counters_too=False)  # the parent's sender wakes per mail: the ack leaves at once

    def on_imap_done() -> None:
        report["imap"] += 1

    def wait(timeout: float) -> None:
        flush()
        try:
            if not conn.poll(timeout):
                return
            while conn.poll(0):
                message = conn.recv_bytes()
                if message == STOP:
                    stop.set()
                elif message == RELOAD:
                    rules.reload()
        except (EOFError, OSError):
            parent_gone.set()
            stop.set()

    pipeline = Pipeline(
        db, settings, rules, on_outbox=on_outbox, on_imap_done=on_imap_done,
        shard=(index, count), batch_size=settings.pipeline_batch,
    )
    log.info("pipeline process ready", extra={"index": index, "of": count})
    run_pipeline_loop(
        pipeline, settings.worker_poll_interval, wait, stop.is_set, halt=parent_gone.is_set
    )
    flush()
    db.dispose()
    log.info("pipeline process stopped",
             extra={"index": index, "parent_gone": parent_gone.is_set()})
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
