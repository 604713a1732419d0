"""Tests of dataset.PatchDataset and build_augmentation on volumes (the DataLoader path in 3D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet_seg.dataset import PatchDataset, Sample, build_augmentation


def _volumes(count: int, shape=(16, 32, 32), seed: int = 0) -> list[Sample]:
    """Volumes of random boxes whose image is their mask."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        mask = np.zeros(shape, np.uint8)
        for _ in range(3):
            lo = [int(rng.integers(0, s - 6)) for s in shape]
            mask[tuple(slice(a, a + int(rng.integers(3, 7))) for a in lo)] = 1
        samples.append(Sample(f"volume {i}", mask[None].astype(np.float16), mask))
    return samples


def test_3d_patches_have_the_patch_shape():
    ds = PatchDataset(_volumes(2, (20, 40, 40)), (8, 16, 16), seed=0)
    assert len(ds) == 2 * 16
    image, mask = ds[0]
    assert image.shape == mask.shape == (1, 8, 16, 16) and image.dtype == torch.float32
    whole = PatchDataset(_volumes(1), None)
    assert whole[0][1].shape == (1, 16, 32, 32)


@pytest.mark.parametrize("preset", ["light", "strong"])
@pytest.mark.parametrize("spacing", [None, (4.0, 1.0, 1.0)])
def test_3d_monai_augmentation_keeps_image_and_mask_aligned(preset, spacing):
    samples = _volumes(3)
    ds = PatchDataset(samples, (16, 32, 32), build_augmentation(preset, (16, 32, 32), 3, spacing), seed=0)
    changed = 0
    for seed in range(4):
        ds.reseed(seed)
        for i in range(len(ds)):
            image, mask = ds[i]
            assert mask.shape == (1, 16, 32, 32) and set(torch.unique(mask).tolist()) <= {0.0, 1.0}
            assert ((image > 0.5) == (mask > 0.5)).float().mean() > 0.95
            changed += int(not torch.equal(mask[0], torch.from_numpy(samples[i].mask).float()))
    assert changed > 6  # of 12


def test_3d_monai_turns_and_rotations_stay_across_the_coarse_axis():
    z = np.broadcast_to(np.arange(16)[:, None, None], (16, 16, 16))
    mask = (z % 8 < 3).astype(np.uint8)
    samples = [Sample("slabs", mask[None].astype(np.float16), mask)]
    uniform = {}
    for spacing in [(4.0, 1.0, 1.0), None]:
        ds = PatchDataset(samples, 16, build_augmentation("light", 16, 3, spacing), seed=0)
        masks = []
        for seed in range(24):
            ds.reseed(seed)
            masks.append(ds[0][1][0])
        uniform[spacing] = [bool((m.amax(dim=(1, 2)) == m.amin(dim=(1, 2))).all()) for m in masks]
    assert all(uniform[(4.0, 1.0, 1.0)]) and not all(uniform[None])


def test_3d_reseed_repeats_the_stream():
    ds = PatchDataset(_volumes(1), 16, build_augmentation("strong", 16, 3), seed=0, foreground=0.5)
    ds.reseed(3)
    first = [ds[i] for i in range(2)]
    ds.reseed(3)
    again = [ds[i] for i in range(2)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    ds.reseed(4)
    assert not torch.equal(first[0][0], ds[0][0])
