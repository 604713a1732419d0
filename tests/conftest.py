"""Shared fixtures: synthetic image/mask folders, a tiny trained model, a tiny SegNet, the real data beside the
clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("NUS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
QT_FIXTURES = {"qapp", "qtbot", "make_napari_viewer", "make_napari_viewer_proxy"}
HOW_TO_RUN = ("to run them install Xvfb (`apt-get install xvfb`; pytest-xvfb starts it) or run under a desktop "
              "session; `bash .ci/run` does it all")
NO_DISPLAY = pytest.StashKey[str]()


def in_ci() -> bool:
    """Whether this run is a CI job (``CI`` set to a true value, as every CI service does)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def display_problem() -> str | None:
    """Why Qt cannot open a window here (None when it can); probed in a subprocess, since Qt aborts the
    whole process when it finds no display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: DISPLAY is unset and Xvfb is not on PATH"
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "Qt did not start within 60 s"
    if out.returncode == 0:
        return None
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith(("  ", "Fatal", "Current"))]
    return f"Qt cannot open a window ({lines[0].strip() if lines else f'exit {out.returncode}'})"


def _needs_qt(item) -> bool:
    return bool(item.get_closest_marker("gui")) or bool(QT_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
    if any(_needs_qt(item) for item in items):
        problem = display_problem()
        if problem:
            config.stash[NO_DISPLAY] = problem



@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Widget tests without a display: skipped with one reason (a failure under CI), before Qt can abort."""
    problem = item.config.stash.get(NO_DISPLAY, None)
    if problem and _needs_qt(item):
        if in_ci():
            pytest.fail(f"widget tests cannot run under CI: {problem}; {HOW_TO_RUN}", pytrace=False)
        pytest.skip(f"widget tests skipped: {problem}; {HOW_TO_RUN}")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> tuple[Path, Path]:
    """Eight 64x64 gray pairs of bright discs (images/, masks/ with the same names)."""
    from napari_unet_seg.sample_data import write_synthetic_folder

    return write_synthetic_folder(tmp_path_factory.mktemp("synthetic"), 8, (64, 64))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synthetic_dir) -> Path:
    """A small U-Net trained for a few epochs on the synthetic discs (path of its best.pt), without the
    post-processing that training chose for it (tests compare its plain predictions: threshold 0.5, nothing
    else; tests/test_tuning.py covers the choice)."""
    from napari_unet_seg.model_file import load_model, save_model
    from napari_unet_seg.training import train

    images, masks = synthetic_dir
    result = train(images=images, masks=masks, out=tmp_path_factory.mktemp("tiny") / "run", epochs=4,
                   batch_size=4, patch_size=32, width=0.25, lr=1e-2, augment="none", device="cpu")
    model = load_model(result.best)
    assert "threshold" in model.postprocess  # training chose one
    model.postprocess = {}
    return save_model(result.best, model)


@pytest.fixture(scope="module")
def segnet_model(tmp_path_factory):
    """A tiny SegNet (width 0.125) saved as a model file; batch-norm statistics set so its output varies."""
    import torch
    from torch import nn

    from napari_unet_seg.model_file import SegmentationModel, save_model
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    network = build_network("segnet", 1, 1, **network_kwargs("segnet", width=0.125)).eval()
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):  # at init the deep activations vanish and the output is constant
            module.running_var.uniform_(0.07, 0.14, generator=generator)
            module.running_mean.normal_(0.0, 0.05, generator=generator)
    model = SegmentationModel(network, {"name": "segnet", "kwargs": network_kwargs("segnet", width=0.125)}, 1, 2,
                              default_normalization(), info={"authors": ["Ada Lovelace"], "license": "MIT"})
    return save_model(tmp_path_factory.mktemp("segnet") / "segnet.pt", model)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the clone; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this clone")
    return SHARED_DATA
