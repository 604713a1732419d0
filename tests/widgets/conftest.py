"""Fixtures of the widget tests (``synthetic_dir`` and ``tiny_model`` come from ``tests/conftest.py``)."""

from __future__ import annotations

import time

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


@pytest.fixture
def event_loop_gaps(wait_job):
    """``event_loop_gaps(start)``: start a widget job with ``start()`` while a 10 ms QTimer ticks; return
    the gaps between ticks (seconds) during the job's work in its worker thread."""

    def measure(start, timeout: int = 60_000) -> np.ndarray:
        from qtpy.QtCore import QTimer

        ticks: list[float] = []
        jobs = []
        timer = QTimer()
        timer.setInterval(10)
        # only ticks while the worker computes: adding the result layer afterwards is main-thread work
        timer.timeout.connect(lambda: jobs and jobs[0].running and ticks.append(time.perf_counter()))
        timer.start()
        try:
            jobs.append(start())
            assert wait_job(jobs[0], timeout=timeout) == "done"
        finally:
            timer.stop()
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
