"""glibc's malloc hands a big freed buffer back once tune_malloc() ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailbridge.memory import _glibc_version, tune_malloc

REPO = Path(__file__).resolve().parent.parent

# Three 25 MB buffers in a row, as three big mails: how much RSS stays after the last free.
PROBE = """
import sys
from mailbridge.memory import tune_malloc

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

done = tune_malloc() if sys.argv[1] == "tune" else None
base = rss()
for _ in range(3):
    block = bytearray(25_000_000)
    block[::4096] = bytes(len(range(0, 25_000_000, 4096)))
    del block
print(done, rss() - base)
"""


def _kept_after_free(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True, cwd=REPO, env=env)
    result, kept = done.stdout.split()
    return result, int(kept)


@pytest.mark.skipif(_glibc_version() is None or not Path("/proc/self/status").exists(),
                    reason="glibc on Linux only")
def test_big_freed_buffers_do_not_stay_resident() -> None:
    result, kept = _kept_after_free("tune")
    assert result == "True"
    assert kept < 5_000_000, f"{kept / 1e6:.1f} MB still resident"


def test_tune_malloc_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailbridge.memory._glibc_version", lambda: None)
    assert tune_malloc() is False


def test_the_environment_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    if _glibc_version() is None:
        pytest.skip("glibc only")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_malloc() is True
