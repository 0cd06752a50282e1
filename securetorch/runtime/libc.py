"""The C library calls the runtime makes, in one place (Linux): the parent-death signal, so a
party dies with the process that started it, and glibc's ``malloc_trim``, so memory that
threads freed goes back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def _load() -> Any:
    """The C library on Linux (None elsewhere, or where it cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


LIBC = _load()


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent (the driver, or the driver's launcher) exits, so
    no party is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    if LIBC is None:
        raise OSError("cannot load the C library to ask for the parent-death signal")
    if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def trim_malloc() -> None:
    """Give what glibc's malloc arenas hold freed back to the system (nothing elsewhere)."""
    if LIBC is not None and hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)
