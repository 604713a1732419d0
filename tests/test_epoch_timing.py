"""Timing a plan's training steps on the device, and the epochs a plan fits to its budget from that time."""

import re

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_seg.config import TrainConfig
from napari_unet_seg.epoch_timing import StepTime, time_training_steps
from napari_unet_seg.planning import fingerprint, plan, plan_training
from test_planning import _lines, _write


@pytest.mark.parametrize("dims, shape, spacing", [(2, (32, 32), None), (3, (4, 16, 16), [4.0, 1.0, 1.0])])
def test_steps_are_timed_without_touching_the_run_or_its_random_streams(dims, shape, spacing):
    config = TrainConfig(batch_size=2, device="cpu", spatial_dims=dims, spacing=spacing, width=0.25)
    before, state = config.to_dict(), torch.get_rng_state()
    measured = time_training_steps(config, shape, channels=1, repeats=2)
    assert measured.step > 0 and measured.forward > 0
    assert config.to_dict() == before and torch.equal(torch.get_rng_state(), state)


def test_an_epoch_is_its_steps_and_the_validation_voxels():
    assert StepTime(step=0.5, forward=1e-6).epoch(steps=10, val_voxels=2e6) == pytest.approx(5 + 2)


def _fixed(step, forward=0.0, calls=None):
    def timer(shape, batch, spacing):
        if calls is not None:
            calls.append((tuple(shape), batch, spacing))
        return StepTime(step, forward)
    return timer


def test_the_epochs_fill_the_budget_at_the_timed_step(tmp_path):
    measured = fingerprint(*_write(tmp_path, _lines(count=10, size=512)))
    calls = []
    chosen = plan(measured, device="cpu", budget=10, val_fraction=0.1, timer=_fixed(1.0, 1e-6, calls))
    # 9 training images x 4 patches of 256² in batches of 8: 5 steps of 1 s, then 1 validation image of 512²
    assert calls == [((256, 256), chosen.settings["batch_size"], None)] and chosen.settings["batch_size"] == 8
    seconds = 5 * 1.0 + 512 * 512 * 1e-6
    assert chosen.settings["epochs"] == int(10 * 60 / seconds)
    assert "5 steps of 1.00 s timed here" in chosen.reasons["epochs"]
    assert f"~{seconds:.1f} s an epoch" in chosen.reasons["epochs"]


def test_thin_3d_patches_are_timed_per_step(tmp_path):
    """The stack of a strongly anisotropic EM volume: patches of 6 x 64 x 64 voxels, many steps an epoch
    (the per-voxel estimate put such an epoch at a tenth of its measured time)."""
    folder = tmp_path / "data"
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    volume = np.random.default_rng(0).integers(0, 255, (24, 256, 256), dtype=np.uint8)
    for name in ("a", "b"):
        tifffile.imwrite(folder / "images" / f"{name}.tif", volume, photometric="minisblack")
        tifffile.imwrite(folder / "masks" / f"{name}.tif", (volume > 200).astype(np.uint8), photometric="minisblack")
    calls = []
    chosen = plan(fingerprint(folder / "images", folder / "masks"), device="cpu", budget=10, spatial_dims=3,
                  spacing=[50.0, 4.0, 4.0], timer=_fixed(0.1, 0.0, calls))
    (shape, batch, spacing), = calls
    assert shape == (6, 64, 64) and batch == 2 and spacing == [50.0, 4.0, 4.0]
    steps = -(-round(24 * 256 * 256 / (6 * 64 * 64)) // 2)  # one training volume's patches, 2 a batch
    assert f"{steps} steps of 0.10 s timed here" in chosen.reasons["epochs"]
    assert chosen.settings["epochs"] == min(300, int(10 * 60 / (steps * 0.1)))


def test_a_failed_timing_falls_back_to_the_assumed_speed_and_says_why(tmp_path):
    measured = fingerprint(*_write(tmp_path, _lines(count=4, size=256)))

    def out_of_memory(shape, batch, spacing):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    failed = plan(measured, device="cpu", budget=5, timer=out_of_memory)
    assumed = plan(measured, device="cpu", budget=5)
    assert failed.settings["epochs"] == assumed.settings["epochs"]
    assert "timing the steps failed (CUDA out of memory. Tried to allocate 2.00 GiB), so" in failed.reasons["epochs"]


def test_plan_training_times_the_steps_only_when_it_plans_the_epochs(tmp_path, monkeypatch):
    images, masks = _write(tmp_path, _lines(count=4, size=128))
    calls = []

    def recorded(config, shape, channels, repeats=3):
        calls.append((config.batch_size, config.model, shape, channels))
        return StepTime(0.01, 0.0)

    monkeypatch.setattr("napari_unet_seg.epoch_timing.time_training_steps", recorded)
    config = TrainConfig(images=str(images), masks=str(masks), device="cpu", model="basic_unet")
    lines = plan_training(config, budget=1)
    assert calls == [(config.batch_size, "basic_unet", (config.patch_size,) * 2, 1)]
    assert re.search(r"--epochs \d+: .*steps? of 0.01 s timed here", "\n".join(lines))
    calls.clear()
    plan_training(TrainConfig(images=str(images), masks=str(masks), device="cpu", epochs=3), given={"epochs"})
    assert calls == []


def test_a_real_timing_gives_a_plan_of_the_same_form(tmp_path):
    """Unmocked: a few real steps on this machine give a positive time and epochs within the bounds."""
    config = TrainConfig(width=0.25, **dict(zip(("images", "masks"),
                                                map(str, _write(tmp_path, _lines(count=3, size=64))))))
    lines = "\n".join(plan_training(config, budget=0.05))
    assert 20 <= config.epochs <= 300 and "timed here" in lines
