"""Fixtures of the widget tests: tiny synthetic data, one tiny trained model, waiting for jobs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP spinning makes two threads ~100x slower,
    and the Qt main thread needs a core to stay responsive while a job runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """``(images, masks)``: six 64x64 synthetic pairs (bright discs on a dark background)."""
    from napari_unet_seg.sample_data import write_synthetic_folder

    return write_synthetic_folder(tmp_path_factory.mktemp("tiny") / "data", 6, (64, 64))


@pytest.fixture(scope="session")
def tiny_model(tiny_folder, tmp_path_factory):
    """Path of a small U-Net trained for one epoch on ``tiny_folder`` (a few seconds)."""
    from napari_unet_seg.training import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, masks = tiny_folder
        result = train(images=images, masks=masks, out=tmp_path_factory.mktemp("tiny-run") / "run", epochs=1,
                       batch_size=2, patch_size=32, width=0.25)
    finally:
        torch.set_num_threads(before)
    return result.best


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
