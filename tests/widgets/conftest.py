"""Fixtures of the widget tests (``synthetic_dir`` and ``tiny_model`` come from ``tests/conftest.py``)."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op torch thread for the widget tests (set before the session's ``tiny_model`` trains).

    The Qt main thread needs a free core to stay responsive while a job runs in its worker thread, and
    on a busy 2-core machine OpenMP threads spinning against each other make training ~100x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def wait_job(qtbot):
    """``wait_job(job, timeout=...)``: wait until a widget job is no longer running; return its state."""

    def wait(job, timeout: int = 30_000) -> str:
        assert job is not None, "the widget refused to start the job"
        qtbot.waitUntil(lambda: not job.running, timeout=timeout)
        qtbot.wait(10)  # let the finish callbacks' signals settle
        return job.state

    return wait


#: The event loop's limits while a job runs: 99th percentile and largest gap between 20 ms timer ticks.
GAP_P99_S, GAP_MAX_S = 0.100, 0.250


@pytest.fixture
def check_gaps():
    """``check_gaps(gaps, what)``: assert the limits on measured gaps and print them (``pytest -s``)."""

    def check(gaps: np.ndarray, what: str) -> None:
        p99, largest = np.percentile(gaps, 99), gaps.max()
        print(f"\nevent-loop gaps while {what}: p99 {p99 * 1000:.0f} ms, max {largest * 1000:.0f} ms "
              f"({len(gaps)} ticks)")
        assert p99 < GAP_P99_S, f"{what}: p99 gap {p99 * 1000:.0f} ms"
        assert largest < GAP_MAX_S, f"{what}: the event loop stalled for {largest * 1000:.0f} ms"

    return check


@contextmanager
def _collections_timed():
    """Record how long each of the garbage collector's passes takes (seconds) while the block runs."""
    spans: list[float] = []
    began: list[float] = []

    def callback(phase: str, _info: dict) -> None:
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            spans.append(time.perf_counter() - began.pop())

    gc.callbacks.append(callback)
    try:
        yield spans
    finally:
        gc.callbacks.remove(callback)


@pytest.fixture
def event_loop_gaps(wait_job, qtbot):
    """``event_loop_gaps(start)``: start a widget job with ``start()`` while a 20 ms QTimer ticks; return
    the gaps between ticks (seconds) from the click to the job's end (the start itself included).

    Before the click, the viewer's pending events (the first paint of the test's layers) are handled and
    the objects alive are moved out of the collector's reach (``gc.freeze``): after hundreds of tests this
    process holds far more of them than a napari session, and one full collection over them paused the
    event loop for 1.5 s once in CI. Objects made during the job are collected as usual; the start's own
    time and the collector's passes are printed, so a failure says where the time went.
    """

    def measure(start, timeout: int = 60_000) -> np.ndarray:
        from qtpy.QtCore import QTimer

        ticks: list[float] = []
        jobs = []
        timer = QTimer()
        timer.setInterval(20)
        # ticks until the worker ends: adding the result layer afterwards is main-thread work
        timer.timeout.connect(lambda: (not jobs or jobs[0].running) and ticks.append(time.perf_counter()))
        qtbot.wait(50)
        gc.collect()
        gc.freeze()
        try:
            with _collections_timed() as collections:
                timer.start()
                ticks.append(time.perf_counter())
                jobs.append(start())
                started = time.perf_counter() - ticks[0]
                assert wait_job(jobs[0], timeout=timeout) == "done"
        finally:
            timer.stop()
            gc.unfreeze()
        print(f"\nstart() took {started * 1000:.0f} ms; {len(collections)} garbage collections, the longest "
              f"{max(collections, default=0) * 1000:.0f} ms")
        assert len(ticks) > 10
        return np.diff(ticks)

    return measure


@pytest.fixture
def notifications(monkeypatch):
    """Messages sent through napari's ``show_error``/``show_warning``/``show_info`` from the widgets."""
    from napari_unet_seg.widgets import _worker

    sent: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(_worker, f"show_{level}", lambda text, level=level: sent.append((level, str(text))))
    return sent
