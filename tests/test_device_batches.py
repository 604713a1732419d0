"""Tests of device_batches.py: crops and batched augmentation made on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet_seg.dataset import PatchDataset, samples_from_arrays
from napari_unet_seg.device_batches import DeviceBatches, augment_batch
from napari_unet_seg.sample_data import synthetic_pair

NONE = {"method": "none"}


def _discs(count: int, size: int = 64):
    pairs = [synthetic_pair((size, size), seed=i, objects=4) for i in range(count)]
    # the image is its own mask: after any geometric transform the two must still agree
    return [((mask > 0).astype(np.float32), mask) for _, mask in pairs]


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_augmentation_keeps_image_and_mask_aligned_and_changes_the_batch(preset):
    samples, _ = samples_from_arrays(_discs(8), classes=2, normalization=NONE)
    batches = DeviceBatches(samples, None, preset, torch.device("cpu"))
    images = torch.stack([torch.from_numpy(s.image).float() for s in samples])
    changed = 0
    for seed in range(4):
        for aug_images, aug_masks in batches.epoch(8, seed):
            assert aug_images.shape == (8, 1, 64, 64) and aug_masks.shape == (8, 1, 64, 64)
            assert set(torch.unique(aug_masks).tolist()) <= {0.0, 1.0}
            agree = ((aug_images > 0.5) == (aug_masks > 0.5)).float().mean(dim=(1, 2, 3))
            assert agree.min() > 0.97
            changed += int((aug_masks != 0).ne(images != 0).any(dim=(1, 2, 3)).sum())
    assert changed > 16  # most of the 32 items were flipped, turned or warped


def test_none_keeps_the_crops_and_a_seed_repeats_an_epoch():
    samples, _ = samples_from_arrays(_discs(3, 40), classes=2, normalization=NONE)
    plain = DeviceBatches(samples, 16, "none", torch.device("cpu"))
    for images, masks in plain.epoch(4, seed=0):
        assert torch.equal(images > 0.5, masks > 0.5)  # crops of image and mask at the same place
    strong = DeviceBatches(samples, 16, "strong", torch.device("cpu"))
    first, again, other = (list(strong.epoch(4, seed)) for seed in (3, 3, 4))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_an_epoch_serves_as_many_patches_as_the_dataset_and_pads_small_images():
    big = (np.ones((64, 64), np.float32), np.ones((64, 64), np.uint8))
    small = (np.ones((10, 20), np.float32), np.ones((10, 20), np.uint8))
    samples, _ = samples_from_arrays([big, small], classes=2, normalization=NONE)
    batches = DeviceBatches(samples, 32, "none", torch.device("cpu"))
    assert len(batches) == len(PatchDataset(samples, 32)) == 5
    served = list(batches.epoch(2, seed=0))
    assert [len(images) for images, _ in served] == [2, 2, 1] == [2] * (batches.batch_count(2) - 1) + [1]
    padded = [masks[i, 0] for _, masks in served for i in range(len(masks)) if masks[i].mean() < 1]
    assert len(padded) == 1 and padded[0][:10, :20].all() and not padded[0][10:].any()


def test_multi_class_masks_keep_their_ids():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30], mask[35:60, 30:60] = 1, 2
    images, masks = augment_batch(torch.from_numpy(rng.random((4, 1, 64, 64), np.float32)),
                                  torch.from_numpy(np.stack([mask[None]] * 4)).float(), "strong",
                                  torch.Generator().manual_seed(0))
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0, 2.0}


def test_processes_share_an_epoch_without_overlap():
    samples, _ = samples_from_arrays(_discs(7, 32), classes=2, normalization=NONE)
    batches = DeviceBatches(samples, None, "none", torch.device("cpu"))
    alone = torch.cat([images for images, _ in batches.epoch(3, seed=5)])
    shares = [torch.cat([images for images, _ in batches.epoch(2, seed=5, rank=r, world=2)]) for r in (0, 1)]
    assert [len(s) for s in shares] == [4, 4] and batches.batch_count(2, world=2) == 2
    # the two shares interleave to the single process's order (one item repeated to even them out)
    merged = torch.stack([shares[i % 2][i // 2] for i in range(7)])
    assert torch.equal(merged, alone)
