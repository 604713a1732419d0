import ctypes.util
import gc
import resource
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


def _faults_of_two_allocations() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        torch.empty(48 * 2**20, dtype=torch.uint8).fill_(1)  # above glibc's mmap threshold, below 64 MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(heap._LIBC is None or not sys.platform.startswith("linux") or not ctypes.util.find_library("c"),
                    reason="glibc only")
def test_memory_freed_in_the_block_is_reused_without_page_faults():
    gc.collect()  # a prediction generator left suspended (by a failed test) holds its block open
    assert heap._users == 0
    _faults_of_two_allocations()
    outside = _faults_of_two_allocations()
    with heap.retained_heap():
        _faults_of_two_allocations()  # the heap grows once
        inside = _faults_of_two_allocations()
    assert inside * 4 < outside, (inside, outside)
