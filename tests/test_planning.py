"""The planner: a fingerprint of synthetic folders, the settings it picks, bad input, and ``train --plan-only``."""

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from skimage.draw import disk, line

from napari_unet_seg.config import TrainConfig
from napari_unet_seg.errors import UserError
from napari_unet_seg.model_file import load_model
from napari_unet_seg.planning import SAMPLE, fingerprint, plan


def _write(folder, masks, images=None, seed=0):
    """Write gray noisy images brighter where ``masks`` are set; returns (images, masks) folders."""
    rng = np.random.default_rng(seed)
    image_dir, mask_dir = folder / "images", folder / "masks"
    image_dir.mkdir(parents=True)
    mask_dir.mkdir()
    for index, mask in enumerate(masks):
        image = images[index] if images is not None else \
            (rng.normal(60, 10, mask.shape) + 120 * (mask > 0)).clip(0, 255).astype(np.uint8)
        iio.imwrite(image_dir / f"im{index:02d}.png", image)
        iio.imwrite(mask_dir / f"im{index:02d}.png", (mask > 0).astype(np.uint8) * 255)
    return image_dir, mask_dir


def _discs(count=6, size=96):
    """One large disc per image, about half the image side."""
    masks = []
    for k in range(count):
        mask = np.zeros((size, size), np.uint8)
        shift = k % 5
        mask[disk((size // 2 + shift, size // 2 - shift), size // 4 + shift, shape=mask.shape)] = 1
        masks.append(mask)
    return masks


def _lines(count=6, size=96):
    """A grid of thin lines across the image (membrane-like)."""
    masks = []
    for k in range(count):
        mask = np.zeros((size, size), np.uint8)
        for start in range(5 + k, size, 20):
            mask[line(start, 0, start, size - 1)] = 1
            mask[line(0, start, size - 1, (start * 7) % size)] = 1
        masks.append(mask)
    return masks


def _rare(count=6, size=128):
    """A few tiny dots per image: foreground well under 1 %."""
    masks = []
    for k in range(count):
        mask = np.zeros((size, size), np.uint8)
        for y, x in ((20 + k, 30), (90, 100 - k), (60, 15)):
            mask[disk((y, x), 2)] = 1
        masks.append(mask)
    return masks


def test_large_discs_are_trained_on_resized_whole_images(tmp_path):
    measured = fingerprint(*_write(tmp_path, _discs()))
    assert measured.count == measured.sampled == 6 and measured.sizes == [[96, 96, 96]] * 2
    assert measured.channels == [1] and measured.values == [0, 255] and measured.objects == 1
    assert 0.45 < measured.extent < 0.75 and measured.fill > 0.7 and 0.15 < measured.foreground < 0.35
    chosen = plan(measured, device="cpu")
    assert chosen.settings["resize"] == 256 and chosen.settings["batch_size"] <= 6
    assert chosen.proposals["postprocess"] == ["keep_largest", "fill_holes"]
    assert "whole image" in chosen.reasons["resize"]
    assert all(name in chosen.reasons for name in (*chosen.settings, *chosen.proposals))


def test_thin_lines_are_trained_on_patches_at_full_resolution(tmp_path):
    measured = fingerprint(*_write(tmp_path, _lines()))
    assert measured.fill < 0.3
    chosen = plan(measured, device="cpu")
    assert chosen.settings["resize"] is None and chosen.settings["patch_size"] == 96
    assert "thin" in chosen.reasons["resize"] and chosen.proposals["postprocess"] == []


def test_rare_foreground_gets_oversampled(tmp_path):
    measured = fingerprint(*_write(tmp_path, _rare()))
    assert measured.foreground < 0.01 and measured.objects == 3
    chosen = plan(measured, device="cpu")
    assert chosen.settings["resize"] is None and chosen.settings["foreground_sampling"] == 0.33
    assert "rare" in chosen.reasons["foreground_sampling"]
    common = plan(fingerprint(*_write(tmp_path / "lines", _lines())), device="cpu")
    assert common.settings["foreground_sampling"] == 0
    whole = plan(fingerprint(*_write(tmp_path / "discs", _discs())), device="cpu")
    assert whole.settings["foreground_sampling"] == 0 and "whole images" in whole.reasons["foreground_sampling"]


def test_train_centres_the_planned_share_of_patches_on_rare_foreground(tmp_path):
    images, masks = _write(tmp_path, _rare(count=3))
    run = tmp_path / "run"
    done = cli("train", "--images", images, "--masks", masks, "--out", run, "--device", "cpu", "--epochs", 1,
               "--width", 0.25, "--val-fraction", 0.34)
    assert done.returncode == 0, done.stderr
    assert "--foreground-sampling 0.33: foreground is rare" in done.stderr
    assert "33% of the patches centred on foreground" in done.stderr
    assert load_model(run / "best.pt").config["foreground_sampling"] == 0.33
    mine = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "mine", "--device", "cpu",
               "--epochs", 1, "--width", 0.25, "--val-fraction", 0.34, "--foreground-sampling", 1)
    assert mine.returncode == 0, mine.stderr
    assert "--foreground-sampling 1.0 (yours kept" in mine.stderr and "100% of the patches" in mine.stderr
    bad = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "bad", "--foreground-sampling", 1.5)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "napari-unet-seg: error: --foreground-sampling must be in [0, 1], got 1.5"]
    assert not (tmp_path / "bad").exists()


def test_arrays_and_the_sample_limit():
    masks = _discs(SAMPLE + 8, 48)
    images = [np.stack([m * 200] * 3, axis=-1).astype(np.uint8) for m in masks]
    measured = fingerprint(images, masks, seed=3)
    assert measured.count == SAMPLE + 8 and measured.sampled == SAMPLE and measured.channels == [3]
    assert measured.values == [0, 1] and measured.intensity == [0, 200]
    assert fingerprint(images, masks, seed=3) == measured  # seeded: the same sample again
    with pytest.raises(UserError, match="as many masks as images"):
        fingerprint(images, masks[:-1])
    stacks = [np.stack([m] * 5) for m in masks[:3]]
    measured = fingerprint([s * 100 for s in stacks], stacks)
    assert measured.ndim == 3 and measured.depth == [5, 5, 5] and "(Z stacks)" in measured.lines()[0]
    assert plan(measured, device="cpu").lines()  # a plan (the 2D rules; 3D planning is a later slice)
    labelled = [m * (1 + k % 2) for k, m in enumerate(masks[:6])]
    chosen = plan(fingerprint(images[:6], labelled), device="cpu")
    assert "3 mask values (0, 1, 2)" in chosen.reasons["classes"] and "--classes 3" in chosen.reasons["classes"]


def test_epochs_follow_the_budget(tmp_path):
    measured = fingerprint(*_write(tmp_path, _discs(count=4, size=64)))
    short, long = plan(measured, device="cpu", budget=0.01), plan(measured, device="cpu", budget=5)
    assert short.settings["epochs"] == 20  # the least
    assert short.settings["epochs"] < long.settings["epochs"] <= 300


def test_the_epochs_reason_tells_the_time_they_take_not_the_budget(tmp_path):
    """Capped at 300 (tiny images) or floored at 20, the epochs do not fill the budget: the reason says so."""
    import re

    measured = fingerprint(*_write(tmp_path, _discs(count=4, size=64)))
    for budget, epochs in ((600, 300), (0.01, 20)):
        chosen = plan(measured, device="cpu", budget=budget)
        assert chosen.settings["epochs"] == epochs
        reason = chosen.reasons["epochs"]
        each = float(re.search(r"at ~([0-9.]+) s an epoch", reason).group(1))
        took = re.match(r"about (\d+) min|under a minute", reason)
        assert took, reason
        assert (float(took.group(1)) if took.group(1) else 0) == pytest.approx(epochs * each / 60, abs=1)
        assert f"budget {budget:g} min, kept in 20..300" in reason


def test_an_epoch_is_timed_by_the_patches_it_draws(tmp_path):
    whole = plan(fingerprint(*_write(tmp_path / "whole", _lines(count=4, size=256))), device="cpu", budget=0.5)
    tiled = plan(fingerprint(*_write(tmp_path / "tiled", _lines(count=4, size=512))), device="cpu", budget=0.5)
    assert whole.settings["patch_size"] == tiled.settings["patch_size"] == 256
    assert "x 1 sample of 256²" in whole.reasons["epochs"] and "x 4 patches of 256²" in tiled.reasons["epochs"]
    # four patches a 512² image (crops.patch_count), so four times the time an epoch, a quarter of the epochs
    assert whole.settings["epochs"] == pytest.approx(4 * tiled.settings["epochs"], abs=4)


def test_apply_fills_only_what_was_not_given(tmp_path):
    chosen = plan(fingerprint(*_write(tmp_path, _discs())), device="cpu")
    config = chosen.apply(TrainConfig(epochs=3), given={"epochs"})
    assert config.epochs == 3 and config.resize == 256 and config.extra["plan"]["kept"] == {"epochs": 3}
    assert config.extra["plan"]["settings"]["epochs"] == chosen.settings["epochs"]
    patches = plan(fingerprint(*_write(tmp_path / "b", _discs())), device="cpu")
    config = patches.apply(TrainConfig(patch_size=48, batch_size=8), given={"patch_size"})
    assert config.resize is None and config.patch_size == 48 and config.batch_size == 8  # size given: batch too
    lines = patches.lines()
    assert any(line.startswith("  --patch-size 48 (yours kept; ") for line in lines), lines
    assert any(line.startswith("  --resize none (kept with your --patch-size; ") for line in lines), lines


def test_the_batch_is_at_most_the_images_left_after_validation(tmp_path):
    chosen = plan(fingerprint(*_write(tmp_path, _discs(count=4))), device="cpu")  # 1 of 4 validates, as in train
    assert chosen.settings["batch_size"] == 3 and "at most the 3 training images" in chosen.reasons["batch_size"]


def test_a_3d_model_to_fine_tune_on_images_is_named_as_the_reason(tmp_path):
    from napari_unet_seg.planning import plan_training

    images, masks = _write(tmp_path, _discs(count=2))
    config = TrainConfig(images=str(images), masks=str(masks), device="cpu")
    with pytest.raises(UserError, match=r"^the model to fine-tune \(EM mitochondria \(3D U-Net\)\) is 3D, but 2 of "
                                        r"the 2 sampled images are 2D, not volumes; fine-tune a 2D model"):
        plan_training(config, given={"epochs"}, start=load_model("mitochondria-em3d"))


@pytest.mark.parametrize("case", ["one image", "all empty", "all foreground", "wildly different sizes",
                                  "blank images"])
def test_bad_input_gives_a_plan_with_a_stated_fallback(tmp_path, case):
    images = None
    if case == "blank images":
        masks, note = _discs(count=3), "2 sampled image(s) are blank (one value everywhere); check the images"
        images = [np.zeros((96, 96), np.uint8), np.full((96, 96), 9, np.uint8), (masks[2] * 200).astype(np.uint8)]
    elif case == "one image":
        masks, note = _discs(count=1), "one pair"
    elif case == "all empty":
        masks, note = [np.zeros((64, 64), np.uint8)] * 3, "hold no foreground"
    elif case == "all foreground":
        masks, note = [np.ones((64, 64), np.uint8)] * 3, "all foreground"
    else:
        masks, note = [_lines(1, 32)[0], _lines(1, 600)[0], _lines(1, 96)[0]], None
    measured = fingerprint(*_write(tmp_path, masks, images))
    chosen = plan(measured, device="cpu")
    text = "\n".join(measured.lines() + chosen.lines())
    if note:
        assert note in chosen.reasons["data"] and note in text
    if case == "one image":  # a validation folder given: the one pair only trains
        assert "data" not in plan(measured, device="cpu", val_fraction=0.0).reasons
    if case in ("all empty", "all foreground"):
        assert chosen.settings["resize"] is None and "fallback" in chosen.reasons["resize"]
    if case == "wildly different sizes":
        assert measured.sizes[0] == [32, 96, 600] and chosen.settings["patch_size"] == 96
        assert "zero-padded" in chosen.reasons["patch_size"] and "differ 19x" in chosen.reasons["patch_size"]


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "napari_unet_seg", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_plan_only_prints_the_plan_and_trains_nothing(tmp_path):
    images, masks = _write(tmp_path, _discs())
    run = tmp_path / "run"
    done = cli("train", "--images", images, "--masks", masks, "--out", run, "--plan-only", "--device", "cpu",
               "--epochs", 7)
    assert done.returncode == 0, done.stderr
    assert "--resize 256: largest object spans" in done.stdout and "--epochs 7 (yours kept" in done.stdout
    assert "postprocess ['keep_largest', 'fill_holes'] (tried on the validation images after training" in done.stdout
    assert not run.exists()
    bad = cli("train", "--images", images, "--masks", masks, "--plan-only", "--budget", -1)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "napari-unet-seg: error: --budget must be > 0 minutes, got -1"]
    missing = cli("train", "--plan-only")
    assert missing.returncode == 2 and "give the training data" in missing.stderr


def test_train_prints_applies_and_stores_the_plan(tmp_path):
    images, masks = _write(tmp_path, _discs(count=4, size=48))
    run = tmp_path / "run"
    done = cli("train", "--images", images, "--masks", masks, "--out", run, "--device", "cpu", "--epochs", 1,
               "--width", 0.25, "--budget", 0.01)
    assert done.returncode == 0, done.stderr
    assert "plan (every choice" in done.stderr and "epoch 1/1" in done.stderr
    info = cli("info", run / "best.pt")
    assert info.returncode == 0, info.stderr
    assert "plan: --resize 256" in info.stdout
    assert "settings as a train command: napari-unet-seg train" in info.stdout and "--resize 256" in info.stdout
    assert info.stdout.split("settings as a train command: ")[1].split("\n")[0].endswith("--no-plan")
    plain = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "plain", "--device", "cpu",
                "--epochs", 1, "--width", 0.25, "--patch-size", 32, "--no-plan")
    assert plain.returncode == 0 and "plan (" not in plain.stderr


@pytest.mark.shared_data
@pytest.mark.parametrize("name, masks, whole", [
    ("ph2", "masks", True), ("isic2018", "masks", True), ("cervical-herlev", "masks", True),
    ("isbi2012-em", "masks_membrane", False), ("isbi2012-em", "masks", False)])
def test_real_sets_get_the_choice_their_evidence_points_to(shared_data, name, masks, whole):
    root = shared_data / name
    if not (root / masks).is_dir():
        pytest.skip(f"{name}/{masks} is not in ../shared/data")
    chosen = plan(fingerprint(root / "images", root / masks), device="cpu")
    assert (chosen.settings["resize"] == 256) is whole
    assert (chosen.proposals["postprocess"] != []) is whole


def test_a_one_slice_volume_is_refused_for_3d_before_training(tmp_path):
    import tifffile

    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "a.tif", np.zeros((1, 32, 32), np.uint8))
    done = cli("train", "--images", tmp_path / "images", "--masks", tmp_path / "masks", "--out", tmp_path / "run",
               "--spatial-dims", "3", "--plan-only")
    assert done.returncode == 2 and not (tmp_path / "run").exists()
    assert done.stderr.strip() == ("napari-unet-seg: error: --spatial-dims 3: a sampled volume has 1 slice; 3D "
                                   "training needs at least 2 (or use --spatial-dims 2)")
