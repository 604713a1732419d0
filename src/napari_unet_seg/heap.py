"""Host memory kept for reuse while the CPU runs a network on large tiles.

glibc serves each allocation above its mmap threshold (at most 32 MiB) with fresh pages from the kernel and
returns them when freed, so every large activation of a network on a 2048² tile is faulted in page by page
again: on the 2-core CPU this doubled the network's time (``benchmarks/bench_predict.py``; docs/performance.md).
:func:`retained_heap` keeps freed memory in the process for the duration of a job (``mallopt``: no mmap,
no trimming) and gives it back to the system at the end (``malloc_trim``); elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters (malloc.h). After a block, glibc is left where its dynamic thresholds settle once a
# program has freed a chunk of 32 MiB or more (any network on a large tile does): mmap above 32 MiB (its
# maximum on 64-bit), trim above twice that. (Setting any of them stops glibc adjusting them, so its
# defaults, 128 KiB each, would trim and fault in again every freed MONAI window: 2.4x slower, measured.)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_SETTLED = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20}
_RETAINING = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}  # mallopt takes an int

_lock = threading.Lock()
_users = 0


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def _set(libc: ctypes.CDLL, retain: bool) -> None:
    for parameter, value in (_RETAINING if retain else _SETTLED).items():
        libc.mallopt(parameter, value)


@contextmanager
def retained_heap(enabled: bool = True) -> Iterator[None]:
    """Within the block, freed host memory stays in the process for the next allocation; after the last
    of the blocks running at the same time (jobs may overlap), what is free goes back to the system.

    Memory use does not grow: a freed tile's activations are reused instead of being given back and
    faulted in again. The settings are the process's, so memory that other threads free meanwhile (napari
    closing a layer during a training job) also stays until the block ends. This works for the allocations of the thread that runs the block's main work
    (glibc's other arenas map chunks above 64 MiB anyway: torch's huge pages cover those).
    """
    global _users
    libc = _LIBC if enabled else None
    if libc is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            _set(libc, retain=True)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _set(libc, retain=False)
                libc.malloc_trim(0)
