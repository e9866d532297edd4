"""Freed memory back to the system on the CPU, where torch allocates with the C library's malloc.

glibc serves a request of at least its mmap threshold with a mapping of its own, unmapped when
freed, and smaller ones from its heap, which gives memory back only from its top. The threshold
starts at 128 KiB but rises to the size of each mapped block freed, up to 32 MiB, so after the
first big tensor is freed, a learner step's activations come from the heap, interleaved with
longer-lived tensors (gradients, optimizer state), and the holes they leave are reused only in
part: the process holds far more than its live tensors (docs/benchmarks.md, "Memory of the main
job").

`tune` fixes the threshold at `MMAP_THRESHOLD`: big blocks (activations of big micro-batches,
logits chunks) get mappings of their own and leave no holes; small ones (each weight's gradient
and optimizer state of a small model) stay on the heap. A lower threshold holds resident memory
closer still to the live tensors, but every block of that size made anew costs page faults.
`release` (``malloc_trim``) gives the heap's free pages back after a phase (generation, a learner
step), so the next phase starts from the live tensors. Where a tensor's memory comes from changes
no value computed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any

log = logging.getLogger("sapo.local")

MMAP_THRESHOLD = 8 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
_libc: Any = None  # the C library once found to be glibc; False where it is not


def _glibc() -> Any:
    """glibc, or None with another C library, on another platform, or with ``SAPO_MALLOC_TUNING=0``."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim"):
                    _libc = libc
            except OSError:
                pass
    return _libc if _libc and os.environ.get("SAPO_MALLOC_TUNING", "1") != "0" else None


def tune() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD`; True when it was set.

    Nothing happens with another C library or platform, with ``SAPO_MALLOC_TUNING=0``, or where
    the user chose a threshold (``MALLOC_MMAP_THRESHOLD_``, ``glibc.malloc.mmap_threshold`` in
    ``GLIBC_TUNABLES``).
    """
    libc = _glibc()
    if (
        libc is None
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
    ):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; milliseconds)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
