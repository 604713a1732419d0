"""Tests of tiling.py: automatic tile sizes and the blocks large planes are predicted in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet_seg.tiling import AUTO_TILE_3D, auto_tiling, block_shape, blocks, window_count


@pytest.mark.parametrize("shape, device, expected", [
    ((300, 200), "cpu", ((300, 200), 69)),        # whole image in one tile on the CPU
    ((2048, 2048), "cpu", ((2048, 2048), 1)),
    ((4096, 1000), "cpu", ((1664, 1000), 2)),      # three windows of 1664 cover 4096 with overlap 0.25
    ((4096, 4096), "cuda", ((1024, 1024), 8)),
])
def test_auto_tiling_covers_with_few_windows(shape, device, expected):
    roi, batch = auto_tiling(shape, torch.device(device), minimum=256, overlap=0.25)
    assert (roi, batch) == expected
    assert all(r % 32 == 0 or r == s for r, s in zip(roi, shape))


def test_window_count_matches_monai():
    from monai.inferers.utils import _get_scan_interval
    from monai.data.utils import dense_patch_slices

    for size, roi, overlap in [((300, 200), (128, 128), 0.25), ((1000, 999), (256, 320), 0.5), ((64, 64), (96, 96), 0)]:
        clipped = tuple(min(r, s) for r, s in zip(roi, size))
        interval = _get_scan_interval(size, clipped, 2, (overlap, overlap))
        assert window_count(size, roi, overlap) == len(dense_patch_slices(size, clipped, interval))


@pytest.mark.parametrize("shape, block, halo", [((1000, 700), 256, 32), ((300, 300), 4096, 64), ((513, 257), 256, 0)])
def test_blocks_tile_the_plane_exactly_with_bounded_context(shape, block, halo):
    covered = np.zeros(shape, np.int32)
    for outer, inner in blocks(shape, block, halo):
        region = covered[outer]
        assert all(s.stop - s.start <= block + 2 * halo + 31 for s in outer)
        assert all(s.stop - s.start <= block for s in inner)
        region[inner] += 1
        for axis, (o, i) in enumerate(zip(outer, inner)):
            # at least the halo on each side where the plane allows, and a multiple of 32 where it allows
            assert i.start >= min(halo, o.start + i.start)
            assert o.stop - o.start - i.stop >= min(halo, shape[axis] - (o.start + i.stop))
            assert (o.stop - o.start) % 32 == 0 or o.stop - o.start == shape[axis]
    assert (covered == 1).all()


@pytest.mark.parametrize("shape, minimum, multiple, expected", [
    ((165, 384, 512), 64, 16, ((165, 160, 160), 1)),     # 165 fits the cap 192; 3 and 4 windows of 160 cover 384, 512
    ((20, 40, 48), 32, 16, ((20, 40, 48), 184)),         # a small volume is one window, 184 to a batch
    ((300, 100, 100), (16, 64, 64), (4, 16, 16), ((172, 100, 100), 4)),  # two windows of 172 (multiple of 4)
])
def test_auto_tiling_in_3d(shape, minimum, multiple, expected):
    roi, batch = auto_tiling(shape, torch.device("cpu"), minimum=minimum, overlap=0.25, multiple=multiple)
    assert (roi, batch) == expected
    multiples = multiple if isinstance(multiple, tuple) else (multiple,) * 3
    assert all(r % m == 0 or r == s for r, m, s in zip(roi, multiples, shape))
    assert batch * np.prod(roi) <= AUTO_TILE_3D["cpu"][1]


@pytest.mark.parametrize("shape, voxels", [((165, 384, 512), 2 ** 25), ((165, 384, 512), 2 ** 22),
                                                  ((10, 1000, 30), 5000), ((512, 2048, 2048), 2 ** 25)])
def test_block_shape_is_near_cubic_and_within_the_budget(shape, voxels):
    edges = block_shape(shape, voxels)
    assert np.prod(edges) <= voxels or edges == tuple(shape)
    counts = [-(-s // e) for s, e in zip(shape, edges)]
    assert all(-(-s // c) == e for s, c, e in zip(shape, counts, edges))  # equal parts
    # only the longest part is cut again, so no cut axis ends much shorter than the longest
    assert all(e >= max(edges) / 2 - 1 for e, c in zip(edges, counts) if c > 1)


def test_blocks_tile_a_volume_exactly():
    shape = (40, 70, 50)
    covered = np.zeros(shape, np.int32)
    for outer, inner in blocks(shape, (16, 32, 25), 4, (8, 16, 16)):
        assert len(outer) == len(inner) == 3
        covered[outer][inner] += 1
        for axis, (o, step) in enumerate(zip(outer, (8, 16, 16))):
            assert (o.stop - o.start) % step == 0 or o.stop - o.start == shape[axis]
    assert (covered == 1).all()
