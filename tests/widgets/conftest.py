"""Fixtures of the widget tests (``synthetic_dir`` and ``tiny_model`` come from ``tests/conftest.py``)."""

from __future__ import annotations

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
def notifications(monkeypatch):
    """Messages sent through napari's ``show_error``/``show_warning``/``show_info`` from the widgets."""
    from napari_unet_seg.widgets import _worker

    sent: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(_worker, f"show_{level}", lambda text, level=level: sent.append((level, str(text))))
    return sent
