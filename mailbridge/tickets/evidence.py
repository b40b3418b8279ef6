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
    half-written file under a valid name; the same content is stored once.
    """
    digest = hashlib.sha256(payload).hexdigest()
    path = evidence_path(root, digest)
    if path.exists() and path.stat().st_size == len(payload):
        return digest
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return digest
