"""What a live daemon holds (from /proc), and starting one with fewer file descriptors."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.daemon import Daemon


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no Threads line")


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError("no Max open files line")


@contextlib.contextmanager
def fewer_files(soft: int) -> Iterator[None]:
    """Processes started by `subprocess.Popen` inside get a soft RLIMIT_NOFILE of `soft`
    (set in the child before it runs; this process keeps its own)."""
    original = subprocess.Popen

    def limit() -> None:
        _old, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    subprocess.Popen = functools.partial(original, preexec_fn=limit)  # type: ignore[misc]
    try:
        yield
    finally:
        subprocess.Popen = original  # type: ignore[misc]


def start_with_nofile(daemon: Daemon, soft: int) -> Daemon:
    with fewer_files(soft):
        daemon.start()
    assert daemon.proc is not None
    assert soft_nofile(daemon.proc.pid) == soft
    return daemon


def log_lines(daemon: Daemon) -> list[str]:
    return daemon.log_path.read_text(errors="replace").splitlines()
