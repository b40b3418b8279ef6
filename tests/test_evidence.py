"""Evidence files: written once under their hash, and durable before the case says so."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mailbridge.tickets import evidence
from mailbridge.tickets.evidence import evidence_path, store_evidence


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync was called on (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(evidence.os, "fsync", fsync)
    return seen


def test_a_new_file_its_directories_and_the_rename_are_synced(tmp_path: Path, synced) -> None:
    payload = b"%PDF-1.4 informe de falla"
    digest = store_evidence(tmp_path, payload)
    path = evidence_path(tmp_path, digest)
    assert digest == hashlib.sha256(payload).hexdigest() and path.read_bytes() == payload
    # The file's data, then the directory holding the rename, then each directory made
    # for it in the one above (after a power loss the name must be there).
    assert synced[0].endswith(".tmp")
    assert synced[1:] == [str(path.parent), str(path.parent.parent), str(tmp_path)]
    assert not list(path.parent.glob(".*.tmp"))


def test_the_same_content_is_stored_once_and_not_synced_again(tmp_path: Path, synced) -> None:
    first = store_evidence(tmp_path, b"captura")
    synced.clear()
    assert store_evidence(tmp_path, b"captura") == first
    assert synced == []
    other = store_evidence(tmp_path, b"otra captura")  # its fan-out directory may exist
    path = evidence_path(tmp_path, other)
    assert path.read_bytes() == b"otra captura"
    assert str(path.parent) in synced
