"""Tests of device_batches.py: crops and batched augmentation made on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet_seg.dataset import PatchDataset, Sample, build_augmentation, samples_from_arrays
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


REFERENCE = Path(__file__).parent / "data" / "batches_2d_reference.npz"


#: The reference images hold raw values up to 235: interpolation (grid_sample, MONAI's warps) run by
#: another thread count or vector path differs by up to 1.4e-4 there (float32 rounding of the sampling
#: coordinates); another random draw or transform differs by whole intensity levels.
IMAGE_ATOL = 1e-3


def _reference_samples():
    """The 2D samples of ``data/batches_2d_reference.npz``, which holds the batches the code before 3D
    support (commit 5af2392) made from them: DeviceBatches(patch 16, batch 4, seed 3) with ``none`` and
    ``strong``, and every item of PatchDataset(patch 16, seed 5) with ``none`` and ``light``."""
    pairs = [synthetic_pair((40, 48), seed=i, objects=3) for i in range(2)] + [synthetic_pair((12, 20), seed=9,
                                                                                              objects=1)]
    return samples_from_arrays(pairs, classes=2, normalization=NONE)[0]


@pytest.mark.parametrize("preset", ["none", "strong"])
def test_2d_batches_are_those_of_the_code_before_3d(preset):
    reference = np.load(REFERENCE)
    batches = list(DeviceBatches(_reference_samples(), 16, preset, torch.device("cpu")).epoch(4, seed=3))
    images, masks = torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy()
    assert np.array_equal(masks, reference[f"device_{preset}_masks"])
    assert np.allclose(images, reference[f"device_{preset}_images"], rtol=0, atol=IMAGE_ATOL)
    same = list(DeviceBatches(_reference_samples(), (16, 16), preset, torch.device("cpu"),
                              foreground=0.0).epoch(4, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, same))


@pytest.mark.parametrize("preset", ["none", "light"])
def test_2d_patch_dataset_items_are_those_of_the_code_before_3d(preset):
    reference = np.load(REFERENCE)
    ds = PatchDataset(_reference_samples(), 16, build_augmentation(preset, 16), seed=5)
    items = [ds[i] for i in range(len(ds))]
    assert np.array_equal(torch.stack([i[1] for i in items]).numpy(), reference[f"dataset_{preset}_masks"])
    assert np.allclose(torch.stack([i[0] for i in items]).numpy(), reference[f"dataset_{preset}_images"],
                       rtol=0, atol=IMAGE_ATOL)


def _volume_with_rare_foreground(shape=(24, 48, 48)):
    """A volume whose image is its mask: one 5x5x5 cube of foreground (about 0.2 % of the voxels)."""
    mask = np.zeros(shape, np.uint8)
    mask[3:8, 30:35, 10:15] = 1
    return mask.astype(np.float32), mask


def test_3d_crops_have_the_patch_shape_and_pad_small_volumes():
    big = (np.ones((20, 40, 40), np.float32), np.ones((20, 40, 40), np.uint8))
    small = (np.ones((5, 12, 30), np.float32), np.ones((5, 12, 30), np.uint8))
    samples, _ = samples_from_arrays_3d([big, small])
    batches = DeviceBatches(samples, (8, 16, 16), "none", torch.device("cpu"))
    assert len(batches) == len(PatchDataset(samples, (8, 16, 16))) == round(20 * 40 * 40 / (8 * 16 * 16)) + 1
    served = [(images, masks) for images, masks in batches.epoch(3, seed=0)]
    assert all(i.shape[1:] == (1, 8, 16, 16) and m.shape[1:] == (1, 8, 16, 16) for i, m in served)
    padded = [m[j, 0] for _, m in served for j in range(len(m)) if m[j].mean() < 1]
    assert len(padded) == 1 and padded[0][:5, :12].all() and not padded[0][5:].any() and not padded[0][:, 12:].any()
    cube = DeviceBatches(samples, 8, "none", torch.device("cpu"))
    assert next(cube.epoch(2, seed=0))[0].shape == (2, 1, 8, 8, 8)
    whole = DeviceBatches(samples[:1], None, "none", torch.device("cpu"))
    assert next(whole.epoch(1, seed=0))[1].shape == (1, 1, 20, 40, 40)


def samples_from_arrays_3d(pairs):
    """3D samples (``image (1, Z, Y, X)`` float16, ``mask (Z, Y, X)`` uint8) as dataset.Sample holds them."""
    return [Sample(f"volume {i}", image[None].astype(np.float16), (mask > 0).astype(np.uint8))
            for i, (image, mask) in enumerate(pairs)], 1


@pytest.mark.parametrize("source", ["device", "dataset"])
@pytest.mark.parametrize("shape, patch", [((24, 48, 48), (8, 16, 16)), ((80, 96), (16, 16))])
def test_foreground_oversampling_finds_rare_structures(source, shape, patch):
    mask = np.zeros(shape, np.uint8)
    mask[(slice(3, 8),) * (len(shape) - 2) + (slice(30, 35), slice(10, 15))] = 1  # 0.2-0.3 % foreground
    samples, _ = samples_from_arrays_3d([(mask.astype(np.float32), mask)] * 2) if len(shape) == 3 else \
        samples_from_arrays([(mask.astype(np.float32), mask)] * 2, classes=2, normalization=NONE)
    per_epoch = 2 * round(mask.size / np.prod(patch))

    def hits(foreground: float) -> float:
        """Share of 6 epochs' crops that hold foreground; random crops: about 12 % (3D), 7 % (2D)."""
        if source == "device":
            batches = DeviceBatches(samples, patch, "none", torch.device("cpu"), foreground=foreground)
            masks = torch.cat([m for seed in range(6) for _, m in batches.epoch(3, seed)])
        else:
            ds = PatchDataset(samples, patch, seed=1, foreground=foreground)
            masks = torch.stack([ds[i][1] for _ in range(6) for i in range(len(ds))])
        assert masks.shape == (6 * per_epoch, 1, *patch)
        return float(masks.flatten(1).amax(dim=1).mean())

    rare, oversampled, always = hits(0.0), hits(0.33), hits(1.0)
    assert rare < 0.2 and 0.3 < oversampled < 0.55 and always == 1.0, (rare, oversampled)


def test_foreground_batches_are_seeded_and_samples_without_foreground_get_random_crops():
    samples, _ = samples_from_arrays_3d([_volume_with_rare_foreground(), (np.zeros((24, 48, 48), np.float32),
                                                                          np.zeros((24, 48, 48), np.uint8))])
    batches = DeviceBatches(samples, (8, 16, 16), "light", torch.device("cpu"), foreground=0.5)
    first, again, other = (list(batches.epoch(4, seed)) for seed in (2, 2, 3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    empty = DeviceBatches(samples[1:], (8, 16, 16), "none", torch.device("cpu"), foreground=1.0)
    assert len(list(empty.epoch(2, seed=0))) == empty.batch_count(2)


def _balls(count: int, shape=(16, 32, 32), seed: int = 0):
    """Volumes of a few random balls; each image is its own mask."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    volumes = []
    for _ in range(count):
        mask = np.zeros(shape, np.uint8)
        for _ in range(3):
            r = rng.uniform(3, 6)
            z, y, x = (rng.uniform(r, s - r) for s in shape)
            mask |= ((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < r**2).astype(np.uint8)
        volumes.append((mask.astype(np.float32), mask))
    return volumes


@pytest.mark.parametrize("preset", ["light", "strong"])
@pytest.mark.parametrize("spacing", [None, (2.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
def test_3d_augmentation_keeps_image_and_mask_aligned(preset, spacing):
    samples, _ = samples_from_arrays_3d(_balls(6))
    batches = DeviceBatches(samples, (16, 32, 32), preset, torch.device("cpu"), spacing=spacing)
    originals = torch.stack([torch.from_numpy(s.mask) for s in samples])[:, None]
    changed = 0
    for seed in range(3):
        for images, masks in batches.epoch(6, seed):
            assert images.shape == masks.shape == (6, 1, 16, 32, 32)
            assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
            agree = ((images > 0.5) == (masks > 0.5)).float().mean(dim=(1, 2, 3, 4))
            assert agree.min() > 0.97
            changed += int(sum(not any(torch.equal(m, o) for o in originals) for m in masks))
    assert changed > 9  # most of the 18 volumes were flipped, turned or warped


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_anisotropic_volumes_are_turned_and_warped_only_across_the_coarse_axis(preset):
    # slabs along z (the coarse axis): whatever happens in the (y, x) planes, each slice stays uniform
    z = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], (16, 32, 32))
    mask = (z % 8 < 3).astype(np.uint8)
    samples, _ = samples_from_arrays_3d([(z / 16, mask)] * 4)
    turned = 0
    for spacing in [(4.0, 1.0, 1.0), None]:
        batches = DeviceBatches(samples, 16, preset, torch.device("cpu"), spacing=spacing)
        for seed in range(4):
            for images, masks in batches.epoch(4, seed):
                uniform = (masks.amax(dim=(3, 4)) == masks.amin(dim=(3, 4))).all(dim=(1, 2))
                if spacing is None:
                    turned += int((~uniform).sum())
                    continue
                assert uniform.all()
                if preset == "light":  # (strong adds noise to the images)
                    assert torch.allclose(images.amax(dim=(3, 4)), images.amin(dim=(3, 4)), atol=1e-4)
    assert turned > 4  # isotropic voxels: the slabs are also turned and rotated out of their planes


def test_3d_multi_class_masks_keep_their_ids_and_a_seed_repeats_the_warp():
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 24, 24), np.uint8)
    mask[2:8, 3:12, 3:12], mask[9:15, 10:20, 5:22] = 1, 2
    images = torch.from_numpy(rng.random((4, 1, 16, 24, 24), np.float32))
    masks = torch.from_numpy(np.stack([mask[None]] * 4)).float()
    first = augment_batch(images, masks, "strong", torch.Generator().manual_seed(1), spacing=(1.5, 1.0, 1.0))
    again = augment_batch(images, masks, "strong", torch.Generator().manual_seed(1), spacing=(1.5, 1.0, 1.0))
    assert set(torch.unique(first[1]).tolist()) == {0.0, 1.0, 2.0}
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
