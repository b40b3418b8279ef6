"""Process memory: glibc's malloc told to hand big freed blocks back to the system.

glibc serves a block over its mmap threshold (128 KiB) with its own mapping and
unmaps it on free, but after such a block is freed it raises the threshold to the
block's size (up to 32 MiB). The next 25 MB message buffer then comes from the
heap, and after free it stays resident: a daemon that once took a big mail keeps
its peak. A fixed threshold (`mallopt(M_MMAP_THRESHOLD)`, or the environment
variable `MALLOC_MMAP_THRESHOLD_` that deploy/ sets) turns the raising off.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 128 * 1024
ENVIRONMENT_VARIABLE = "MALLOC_MMAP_THRESHOLD_"


def _glibc_version() -> str | None:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    return version if version and version.startswith("glibc") else None


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False (nothing done) off glibc.

    A threshold set in the environment is left as it is (and counts as done).
    """
    if _glibc_version() is None:
        return False
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused", extra={"threshold": threshold})
        return False
    return True
