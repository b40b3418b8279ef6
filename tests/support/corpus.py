"""The shared corpus of real mail (../shared/corpus, or MAILBRIDGE_CORPUS), for every test.

Tests that read it skip with a clear message when it is absent: it is never copied here.
"""

from __future__ import annotations

import email
import email.policy
import os
from email.message import Message
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    return Path(os.environ.get("MAILBRIDGE_CORPUS", REPO.parent / "shared" / "corpus"))


def corpus(sub: str = "") -> Path:
    """A folder of the corpus; skips the test when it is absent."""
    path = corpus_dir() / sub if sub else corpus_dir()
    if not path.is_dir():
        pytest.skip(f"shared corpus {path} is absent (set MAILBRIDGE_CORPUS to run it)")
    return path


def read_raw(path: Path) -> bytes:
    """A corpus file as intake would store it: mbox "From " line dropped, bare CRs as LFs."""
    raw = path.read_bytes()
    if raw.startswith(b"From ") and b"\n" in raw:
        raw = raw.split(b"\n", 1)[1]
    if b"\r" in raw and b"\n" not in raw:
        raw = raw.replace(b"\r", b"\n")
    return raw


def load(path: Path) -> Message:
    """A corpus file parsed by the stdlib, as read_raw gives it."""
    return email.message_from_bytes(read_raw(path), policy=email.policy.compat32)


# What the corpus holds beside its mail (notes, indexes, the scripts that made it).
NOT_MAIL = {".md", ".json", ".tsv", ".rb", ".py", ".gitattributes"}


def mail_files(messages: Path) -> list[Path]:
    """Every test message (`*.eml` under `messages`), then every mail of the shared
    corpus when it is there (its notes, indexes and licences left out)."""
    files = sorted(messages.rglob("*.eml"))
    root = corpus_dir()
    if root.is_dir():
        files += sorted(
            p for p in root.rglob("*")
            if p.is_file() and p.suffix not in NOT_MAIL
            and not p.name.startswith(("LICENSE", "."))
        )
    return files
