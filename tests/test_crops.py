"""Tests of crops.py: patch shapes, padding, patch counts, foreground-centred crops, turn planes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet_seg.crops import (FOREGROUND_CAP, centred_corner, coarse_axis, foreground_locations, pad_to_patch,
                                   patch_count, patch_shape, spacing_of, turn_planes)
from napari_unet_seg.errors import UserError


def test_patch_shapes_and_counts():
    assert patch_shape(32, 2) == (32, 32) and patch_shape(16, 3) == (16, 16, 16)
    assert patch_shape((8, 32, 32), 3) == (8, 32, 32) and patch_shape(None, 3) is None
    with pytest.raises(UserError, match=r"patch size \(32, 32\) has 2 axes but the images have 3"):
        patch_shape((32, 32), 3)
    assert spacing_of([5, 4, 4], 3) == (5.0, 4.0, 4.0) and spacing_of(None, 3) is None
    with pytest.raises(UserError, match=r"spacing \(4.0, 4.0\) must hold 3 positive values"):
        spacing_of((4, 4), 3)
    assert patch_count((64, 64), (32, 32)) == 4 and patch_count((10, 20), (32, 32)) == 1
    assert patch_count((20, 40, 40), (8, 16, 16)) == 16 and patch_count((5, 5, 5), None) == 1


def test_padding_reaches_the_patch_on_every_axis():
    image, mask = pad_to_patch(np.ones((2, 5, 12, 40), np.float16), np.ones((5, 12, 40), np.uint8), (8, 16, 16))
    assert image.shape == (2, 8, 16, 40) and mask.shape == (8, 16, 40)
    assert mask[:5, :12].all() and not mask[5:].any() and not image[:, :, 12:].any()


def test_foreground_locations_per_class_and_capped():
    mask = np.zeros((4, 80, 90), np.uint8)  # 2 x 80 x 90 = 14400 voxels of class 1
    mask[1, 2, 3], mask[2:4] = 2, 1
    ones, twos = foreground_locations(mask)
    assert twos.tolist() == [[1, 2, 3]]
    assert len(ones) == FOREGROUND_CAP and (mask[tuple(ones.T)] == 1).all()
    assert ones[:, 0].min() == 2 and ones[:, 0].max() == 3  # spread through the whole foreground
    assert foreground_locations(np.zeros((3, 3), np.uint8)) == []


def test_centred_corners_keep_the_voxel_in_the_crop():
    rng = np.random.default_rng(0)
    shape, patch = (20, 30, 40), (8, 16, 16)
    for _ in range(200):
        voxel = [int(rng.integers(s)) for s in shape]
        jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in patch]
        corner = centred_corner(voxel, jitter, shape, patch)
        assert all(0 <= c <= s - p and c <= v < c + p for c, v, s, p in zip(corner, voxel, shape, patch))
    assert centred_corner([10, 15, 20], [0, 0, 0], shape, patch) == [6, 7, 12]


def test_turn_planes_and_coarse_axis_follow_extent_and_spacing():
    def allowed(shape, spacing):
        return [plane for plane, ok in turn_planes(shape, spacing) if ok]

    assert allowed((16, 16, 16), None) == [(-3, -2), (-3, -1), (-2, -1)]
    assert allowed((8, 16, 16), None) == allowed((16, 16, 16), (2.0, 1.0, 1.0)) == [(-2, -1)]
    assert allowed((32, 32), None) == [(-2, -1)] and allowed((16, 32), None) == []
    assert coarse_axis(None) is None and coarse_axis((2.0, 1.0, 1.0)) is None
    assert coarse_axis((5.0, 1.0, 1.0)) == 0 and coarse_axis((0.8, 0.8, 3.5)) == 2
