"""glibc's malloc told to give freed tensors back (sapo_local.memory): set where it applies, left alone elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sapo_local import memory

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or memory._glibc() is None, reason="glibc only")


# In a fresh interpreter: in the test process, free heap memory left by earlier tests would take
# the blocks without growing the resident set.
FREED_BLOCKS = """
import ctypes, psutil
from sapo_local import memory
process = psutil.Process()
before = process.memory_info().rss
# 200 MiB in blocks of 64 KiB (under any mmap threshold: on the heap), all but the last freed:
# the last pins the heap's top, so only release() can give the rest back.
blocks = [ctypes.create_string_buffer(64 << 10) for _ in range(3200)]
del blocks[:-1]
held = process.memory_info().rss
memory.release()
print(held - before, held - process.memory_info().rss)
"""


@glibc
def test_freed_heap_memory_goes_back_to_the_system():
    done = subprocess.run([sys.executable, "-c", FREED_BLOCKS], capture_output=True, text=True, check=True)
    grown, released = map(int, done.stdout.split())
    assert grown > 150 << 20, "freed, the blocks stay in the process"
    assert released > 150 << 20


@glibc
def test_the_threshold_is_set_unless_the_user_chose_one_or_turned_it_off(monkeypatch):
    assert memory.tune()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not memory.tune()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert not memory.tune()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("SAPO_MALLOC_TUNING", "0")
    assert not memory.tune()
    memory.release()  # a no-op then
