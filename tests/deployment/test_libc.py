"""The runtime's C library calls (``runtime/libc.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from securetorch.runtime import libc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's prctl")

READ_BACK = """
import ctypes, signal
from securetorch.runtime import libc
before = ctypes.c_int(-1)
libc.LIBC.prctl(2, ctypes.byref(before))  # PR_GET_PDEATHSIG
libc.die_with_parent()
after = ctypes.c_int(-1)
libc.LIBC.prctl(2, ctypes.byref(after))
print(before.value, after.value, int(signal.SIGKILL))
"""


def test_die_with_parent_asks_the_kernel_for_sigkill_when_the_parent_exits() -> None:
    """The signal a party gets when its parent exits is SIGKILL once it asked (none before)."""
    out = subprocess.run([sys.executable, "-c", READ_BACK], capture_output=True, text=True, check=True).stdout
    before, after, sigkill = map(int, out.split())
    assert (before, after) == (0, sigkill)


def test_without_the_c_library_a_party_refuses_to_run_unguarded_and_trimming_does_nothing(monkeypatch) -> None:
    """A party that cannot ask for the parent-death signal says so instead of risking an
    orphan; trimming needs glibc's ``malloc_trim`` and is skipped without it (musl)."""
    monkeypatch.setattr(libc, "LIBC", None)
    with pytest.raises(OSError, match="parent-death signal"):
        libc.die_with_parent()
    libc.trim_malloc()

    class Musl:
        pass

    monkeypatch.setattr(libc, "LIBC", Musl())
    libc.trim_malloc()
