import ctypes.util
import os
import subprocess
import sys

import pytest
import torch

from napari_unet_seg import heap


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_overlapping_blocks_retain_once_and_give_back_after_the_last(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", libc)
    with heap.retained_heap():
        assert libc.calls == [("mallopt", p, v) for p, v in heap._RETAINING.items()]
        with heap.retained_heap():
            pass
        assert len(libc.calls) == len(heap._RETAINING)  # the inner block ends: still retaining
    settled = [("mallopt", p, v) for p, v in heap._SETTLED.items()]
    assert libc.calls[len(heap._RETAINING):] == settled + [("trim", 0)]
    libc.calls.clear()
    with pytest.raises(RuntimeError), heap.retained_heap():
        raise RuntimeError("a failed job")
    assert libc.calls[-1] == ("trim", 0) and heap._users == 0
    libc.calls.clear()
    with heap.retained_heap(enabled=False):
        pass
    assert libc.calls == []


def test_retained_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_LIBC", None)
    with heap.retained_heap():
        assert heap._users == 0


#: Two 48 MiB allocations (above glibc's mmap threshold, below a thread arena's 64 MiB) filled, outside a
#: block and in one, counted in minor page faults in a fresh process (4 KiB pages: torch's huge pages off),
#: so that no earlier test's jobs have left the heap in another state.
_FAULTS = """
import resource, torch
from napari_unet_seg import heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        torch.empty(48 * 2**20, dtype=torch.uint8).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
outside = faults()
with heap.retained_heap():
    torch.empty(128 * 2**20, dtype=torch.uint8).fill_(1)  # the heap grows once, beyond what follows
    inside = faults()
print(outside, inside)
"""


@pytest.mark.skipif(heap._LIBC is None or not sys.platform.startswith("linux") or not ctypes.util.find_library("c"),
                    reason="glibc only")
def test_memory_freed_in_the_block_is_reused_without_page_faults():
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}
    done = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    outside, inside = map(int, done.stdout.split())
    assert outside > 2 * 48 * 2**20 // 4096 // 2 and inside * 4 < outside, (outside, inside)
