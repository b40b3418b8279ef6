"""Evidence files (attachments, inline images): content-addressed on disk, written once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def evidence_path(root: Path, sha256: str) -> Path:
    return root / sha256[:2] / sha256[2:4] / sha256


def store_evidence(root: Path, payload: bytes) -> str:
    """Write `payload` under its SHA-256 unless it is there already; returns the hash.

    The file is fsynced and renamed into place, so a crash never leaves a
    half-written file under a valid name; the same content is stored once. The
    directories are fsynced too (the rename, and any fan-out directory made for it):
    the case's row that names the file is committed next, and after a power loss the
    file must be there as surely as the row.
    """
    digest = hashlib.sha256(payload).hexdigest()
    path = evidence_path(root, digest)
    if path.exists() and path.stat().st_size == len(payload):
        return digest
    made = _make_dirs(path.parent)
    tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for directory in [path.parent, *(d.parent for d in made)]:
        _fsync_dir(directory)
    return digest


def _make_dirs(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents; the ones made, deepest first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
    return missing


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
