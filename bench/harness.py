"""Processes the benchmarks drive: the daemon, the sinks, py-spy; and small measuring helpers.

Everything listens on 127.0.0.1 with ports the OS chose; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable  # run the benchmarks with .venv/bin/python


def mono_now() -> float:
    return time.monotonic()


def wall_to_mono(wall: float) -> float:
    """A wall-clock instant (e.g. a DB timestamp) on this process's monotonic clock."""
    return wall - (time.time() - time.monotonic())


def db_time_to_mono(value: str | datetime | None) -> float | None:
    """Timestamps written by mailbridge (SQLite text or PostgreSQL datetimes; UTC)."""
    if not value:
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return wall_to_mono(dt.timestamp())


def percentiles(values: Iterable[float]) -> dict[str, float | int | None]:
    data = sorted(values)
    if not data:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}

    def pick(q: float) -> float:
        # nearest-rank: the smallest value with at least q of the data at or below it
        rank = max(1, int(-(-q * len(data) // 1)))
        return data[min(len(data), rank) - 1]

    return {
        "count": len(data),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": data[-1],
        "mean": sum(data) / len(data),
    }


def make_workdir(prefix: str, base: str | None = None) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"mailbridge-bench-{prefix}-", dir=base))


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far (gone ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# --- sinks -------------------------------------------------------------------------------


class SinkProcess:
    """bench/reference_sink.py in its own process (so it does not take our GIL)."""

    def __init__(
        self,
        mode: str,
        workdir: Path,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        max_seconds: float = 3600.0,
    ) -> None:
        self.mode = mode
        self.workdir = workdir
        self.on_event = on_event
        self.max_seconds = max_seconds
        self.port = 0
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.spool = workdir / "reference.spool"
        self.stderr_path = workdir / f"sink-{mode}.log"

    def cpu_seconds(self) -> float:
        """The sink process's user + system CPU seconds so far."""
        return process_cpu_seconds([self.proc.pid] if self.proc is not None else [])

    def start(self, timeout: float = 20.0) -> SinkProcess:
        cmd = [PYTHON, str(BENCH / "reference_sink.py"), "--mode", self.mode,
               "--max-seconds", str(self.max_seconds)]
        if self.mode == "reference":
            cmd += ["--spool", str(self.spool)]
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=err, cwd=self.workdir)
        err.close()
        assert self.proc.stdout is not None
        ready = threading.Event()
        first: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not first:
                    first.append(line)
                    ready.set()
                    continue
                if not line:
                    continue
                event = json.loads(line)
                with self.lock:
                    self.events.append(event)
                if self.on_event is not None:
                    self.on_event(event)
            ready.set()

        self._reader = threading.Thread(target=read, name=f"sink-{self.mode}", daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not first or not first[0].startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"{self.mode} sink did not start: {self.stderr_path.read_text()}")
        self.port = int(first[0].split()[1])
        return self

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self._reader is not None:
            self._reader.join(10)


# --- the daemon --------------------------------------------------------------------------


def prepare_tree(spec: str, workdir: Path) -> Path:
    """The mailbridge source to benchmark: the work tree, a git revision, or a directory.

    Other people edit the work tree while a benchmark runs; `--tree HEAD` (or any
    revision) measures a committed snapshot instead, exported with `git archive`.
    """
    if spec in ("", "working", "."):
        return REPO
    if Path(spec).is_dir() and (Path(spec) / "mailbridge").is_dir():
        return Path(spec).resolve()  # a patched copy, e.g. to measure a proposed change
    target = workdir / f"tree-{spec.replace('/', '_')}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", spec], capture_output=True,
                             check=True, timeout=120)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True,
                   timeout=120)
    return target


def bench_rules(tree: Path, workdir: Path, overrides: dict[str, Any]) -> tuple[Path, str]:
    """rules.yaml of `tree` with the desk settings the benchmark needs.

    Three registered contacts send thousands of mails an hour: the RFC 3834 limit on
    automatic mail per address (a few per hour) would suppress almost every ack.
    Returns the file and a note; the unchanged file if the tree knows no such key.
    """
    import yaml

    original = tree / "rules.yaml"
    path = workdir / "bench-rules.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    env.update({"MAILBRIDGE_RULES": str(path), "MAILBRIDGE_DATA_DIR": str(workdir)})
    if tree != REPO:
        env["PYTHONPATH"] = str(tree)

    def accepted(desk_overrides: dict[str, Any]) -> tuple[bool, str]:
        data = yaml.safe_load(original.read_text(encoding="utf-8"))
        data.setdefault("desk", {}).update(desk_overrides)
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
        check = subprocess.run([PYTHON, "-m", "mailbridge", "check-config"], env=env,
                               cwd=workdir, capture_output=True, timeout=60, check=False)
        why = (check.stdout + check.stderr).decode(errors="replace").strip()[-300:]
        return check.returncode == 0, why

    ok, why = accepted(overrides)
    if ok:
        return path, f"rules.yaml with desk overrides {overrides}"
    # An older or newer tree may not know every key (desk settings forbid extras).
    kept = {k: v for k, v in overrides.items() if accepted({k: v})[0]}
    if kept and accepted(kept)[0]:
        return path, f"rules.yaml with desk overrides {kept} (refused: {why})"
    return original, f"rules.yaml unchanged: check-config refused the bench overrides: {why}"


def _db_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


# What reading the daemon's database may raise (SQLite file or PostgreSQL).
DB_ERRORS = _db_errors()


class DaemonProcess:
    """A fresh `mailbridge run`: own data dir, `db upgrade` first, relay = our sink.

    `database_url` (PostgreSQL) puts its database elsewhere than the data dir's SQLite
    file; several daemons given the same URL are workers sharing the work.
    """

    def __init__(self, data_dir: Path, relay_port: int | None, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None, tree: Path = REPO,
                 rules: Path | None = None, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        base = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
        if tree != REPO:
            base["PYTHONPATH"] = str(tree)
        self.env = {
            **base,
            "MAILBRIDGE_DATA_DIR": str(data_dir),
            "MAILBRIDGE_RULES": str(rules or tree / "rules.yaml"),
            "MAILBRIDGE_SMTP_LISTEN": "127.0.0.1:0",
            "MAILBRIDGE_HTTP_LISTEN": "127.0.0.1:0",
            **({"MAILBRIDGE_RELAY": f"127.0.0.1:{relay_port}"} if relay_port else {}),
            **({"MAILBRIDGE_DATABASE_URL": database_url} if database_url else {}),
            **(env or {}),
        }
        self.wrapper = wrapper or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.smtp_port = 0
        self.http_port = 0
        self.log_path = data_dir / "daemon.log"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mailbridge.db"

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PYTHON, "-m", "mailbridge", *args], env=self.env,
                              capture_output=True, timeout=timeout, check=False,
                              cwd=self.data_dir)

    def upgrade(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        done = self.cli("db", "upgrade")
        if done.returncode != 0:
            raise RuntimeError(f"mailbridge db upgrade failed: {done.stderr.decode()[-2000:]}")

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        listen = self.data_dir / "run" / "listen.json"
        listen.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, PYTHON, "-m", "mailbridge", "run"],
            env=self.env, stdout=log, stderr=log, cwd=self.data_dir,
        )
        log.close()
        deadline = mono_now() + timeout
        while mono_now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log_tail()}")
            if listen.exists():
                try:
                    data = json.loads(listen.read_text())
                except json.JSONDecodeError:
                    data = None
                if data:
                    self.pid = int(data["pid"])
                    self.smtp_port = int(data["smtp"][1])
                    self.http_port = int(data["http"][1])
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon did not start in {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- what the kernel says about it ---------------------------------------------------
    def pids(self) -> list[int]:
        """The daemon and its child processes (pipeline processes, when configured)."""
        children: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):  # a restarted child has
            try:                                                # another thread as parent
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        return [self.pid, *sorted(children)]

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in bytes, summed over the daemon's processes.

        With pipeline processes the sum of peaks is an upper bound of the peak of the
        sum; `processes` says how many were counted, `main_VmRSS`/`main_VmHWM` are the
        parent's own.
        """
        out: dict[str, int] = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as handle:
                    found = {}
                    for line in handle:
                        key, _, value = line.partition(":")
                        if key in ("VmRSS", "VmHWM"):
                            found[key] = int(value.split()[0]) * 1024
            except OSError:
                continue
            out["processes"] += 1
            for key, value in found.items():
                out[key] += value
                if pid == self.pid:
                    out[f"main_{key}"] = value
        return out if out["processes"] else {}

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon (and its pipeline processes) so far."""
        return process_cpu_seconds(self.pids())

    def thread_cpu(self) -> dict[int, float]:
        """CPU seconds per native thread id (Python threads have no OS names here)."""
        ticks = os.sysconf("SC_CLK_TCK")
        out: dict[int, float] = {}
        for pid in self.pids():
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]
                except OSError:
                    continue
                parts = fields.split()
                out[int(tid)] = (int(parts[11]) + int(parts[12])) / ticks
        return out

    def db(self) -> Any:
        """A DB-API connection to the daemon's database (`with daemon.db() as conn`)."""
        if self.database_url:
            import psycopg

            return psycopg.connect(self.database_url, autocommit=True, connect_timeout=30)
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds passed."""
    deadline = mono_now() + timeout
    while True:
        if predicate():
            return True
        if mono_now() >= deadline:
            return False
        time.sleep(interval)


def wait_for_progress(
    measure: Callable[[], Any], finished: Callable[[Any], bool], *, stall: float,
    timeout: float, interval: float = 0.1,
) -> bool:
    """Poll until `finished(measure())`; give up after `timeout`, or after `stall`
    seconds in which the measured value did not change (nothing moves any more)."""
    deadline = mono_now() + timeout
    last_value: Any = object()
    last_change = mono_now()
    while True:
        value = measure()
        if finished(value):
            return True
        now = mono_now()
        if value != last_value:
            last_value, last_change = value, now
        if now >= deadline or now - last_change > stall:
            return False
        time.sleep(interval)


class Sampler:
    """Samples the daemon's queue depths and RSS every `interval` s in a thread."""

    def __init__(self, daemon: DaemonProcess, interval: float = 0.5,
                 max_seconds: float = 3600.0) -> None:
        self.daemon = daemon
        self.interval = interval
        self.max_seconds = max_seconds
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self.t0 = mono_now()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and mono_now() - self.t0 < self.max_seconds:
            depths = queue_depths(self.daemon)
            rss = self.daemon.memory().get("VmRSS", 0)
            self.samples.append({"t": round(mono_now() - self.t0, 2), **depths, "rss": rss})
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        if not self.samples:
            return {}
        worst = {key: max(self.samples, key=lambda s: s[key])
                 for key in ("inbound_new", "outbox_pending")}
        return {
            "max_inbound_new": worst["inbound_new"]["inbound_new"],
            "max_inbound_new_at": worst["inbound_new"]["t"],
            "max_outbox_pending": worst["outbox_pending"]["outbox_pending"],
            "max_outbox_pending_at": worst["outbox_pending"]["t"],
            "series": self.samples[:: max(1, len(self.samples) // 120)],
        }


def queue_depths(daemon: DaemonProcess) -> dict[str, int]:
    """Unprocessed inbound rows and unsent outbox rows (both 0 = drained)."""
    try:
        with daemon.db() as conn:
            new = conn.execute("SELECT count(*) FROM inbound WHERE state = 'new'").fetchone()[0]
            pending = conn.execute(
                "SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
        return {"inbound_new": int(new), "outbox_pending": int(pending)}
    except DB_ERRORS:
        return {"inbound_new": -1, "outbox_pending": -1}


# --- py-spy --------------------------------------------------------------------------------


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from `py-spy dump` ({} without py-spy)."""
    binary = Profiler.binary()
    if binary is None:
        return {}
    done = subprocess.run([binary, "dump", "--pid", str(pid), "--nonblocking"],
                          capture_output=True, text=True, timeout=60, check=False)
    names: dict[int, str] = {}
    for line in done.stdout.splitlines():
        if line.startswith("Thread "):
            parts = line.split()
            name = line.split('"')[1] if '"' in line else "?"
            try:
                names[int(parts[1], 0)] = name
            except ValueError:
                continue
    return names


def cpu_by_thread(before: dict[int, float], after: dict[int, float],
                  names: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent between two `thread_cpu()` snapshots, by thread name."""
    import re

    out: dict[str, float] = {}
    for tid, seconds in after.items():
        used = seconds - before.get(tid, 0.0)
        if used <= 0:
            continue
        name = re.sub(r"_\d+$", "_N", names.get(tid, f"tid {tid}"))
        out[name] = round(out.get(name, 0.0) + used, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class Profiler:
    """py-spy attached to the daemon (sampling, non-blocking, per thread)."""

    def __init__(self, pid: int, out: Path, rate: int = 100, gil: bool = True) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        # --gil samples only the thread holding the GIL: what limits throughput when
        # the daemon is CPU-bound on one interpreter. Without it, threads waiting in
        # fsync or on SQLite's lock show too.
        self.gil = gil
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        candidate = Path(PYTHON).parent / "py-spy"
        if candidate.exists():
            return str(candidate)
        from shutil import which

        return which("py-spy")

    def start(self) -> None:
        binary = self.binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--nonblocking", "--threads",
             "--subprocesses",  # the pipeline processes, when the daemon has them
             "--full-filenames", *(["--gil"] if self.gil else []),
             "--rate", str(self.rate), "--format", "raw", "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=open(self.out.with_suffix(".log"), "wb"),
        )
        time.sleep(0.5)  # let it attach before the load starts

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
