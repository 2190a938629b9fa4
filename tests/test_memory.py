"""glibc's allocator settings (``bench.run.memory``): a freed block of a batch's size stays in the
process for the next one, where without them it goes back to the kernel; other systems are left
alone."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from bench.run import memory

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")

PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from bench.run.memory import keep_freed_memory

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    size = 24 << 20  # a batch's activations
    before = libc.mallinfo2()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    # kept: the heap's free memory once the block is freed (a block placed partly in free memory
    # the heap already had grows the heap by less than its size)
    print(applied, during.hblkhd - before.hblkhd, after.fordblks, size)
    """
)


def probe(mode: str) -> tuple[str, int, int, int]:
    # glibc's defaults: no thresholds from the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    cmd = [sys.executable, "-c", PROBE, mode]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    applied, mapped, kept, size = out.stdout.split()
    return applied, int(mapped), int(kept), int(size)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_a_freed_batch_sized_block_stays_in_the_process():
    applied, mapped, kept, size = probe("on")
    assert applied == "True"
    assert mapped == 0  # from the heap, not a mapping of its own
    assert kept >= size  # and still there once freed


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_without_it_glibc_maps_the_block_and_hands_it_back():
    applied, mapped, kept, size = probe("off")
    assert applied == "False"
    assert mapped >= size
    assert kept < size


def test_another_system_is_left_alone(monkeypatch):
    memory.keep_freed_memory.cache_clear()
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    try:
        assert memory.keep_freed_memory() is False
    finally:
        memory.keep_freed_memory.cache_clear()
