"""How an image plane or volume is cut for prediction: blocks (bounded memory) of tiles (the network's input).

A plane (or volume) larger than a block is predicted block by block, each block read with a ``halo`` of
context that is cut off again, so host and GPU memory stay bounded whatever the image size. Inside a
block, MONAI's ``sliding_window_inference`` cuts tiles of :func:`auto_tiling`'s size. Planes are cut in
square blocks of :data:`BLOCK` pixels a side, volumes in near-cubic blocks of at most :data:`BLOCK_3D`
voxels (:func:`block_shape`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch

__all__ = ["AUTO_TILE", "AUTO_TILE_3D", "BLOCK", "BLOCK_3D", "auto_tiling", "block_shape", "blocks", "window_count"]

#: Largest tile edge and pixels per tile batch chosen automatically, per device type. On the CPU whole
#: images up to 2048 px are one tile (no overlap overhead); see benchmarks/bench_predict.py.
AUTO_TILE = {"cpu": (2048, 2048 * 2048), "cuda": (1024, 32 * 512 * 512)}

#: Edge of the blocks a large plane is predicted in, per device type: a 4096² block holds ~16 Mpixel,
#: i.e. about 0.4 GB of float32 working arrays (input, blended output, weights).
BLOCK = {"cpu": 4096, "cuda": 4096}

#: The same for 3D networks: largest tile edge and voxels per tile batch. A tile's activations grow with
#: its voxels, so 3D tiles are smaller than 2D ones (benchmarks/bench_predict.py --spatial-dims 3).
AUTO_TILE_3D = {"cpu": (192, 192 ** 3), "cuda": (256, 2 * 256 ** 3)}

#: Most voxels of a block a volume is predicted in, per device type (without its halo): 2**25 voxels
#: (~322³; a 165x384x512 volume is one block) hold about 0.5 GB of float32 working arrays.
BLOCK_3D = {"cpu": 2 ** 25, "cuda": 2 ** 25}


def window_count(size: tuple[int, int], roi: tuple[int, int], overlap: float) -> int:
    """How many windows ``sliding_window_inference`` cuts from ``size`` with tiles ``roi``."""
    count = 1
    for extent, length in zip(size, roi):
        if extent <= length:
            continue
        interval = max(1, int(length * (1 - overlap)))
        count *= math.ceil((extent - length) / interval) + 1
    return count


def auto_tiling(shape: tuple[int, ...], device: torch.device, *, minimum: int | Sequence[int], overlap: float,
                batch_size: int | None = None, multiple: int | Sequence[int] = 32) -> tuple[tuple[int, ...], int]:
    """``(tile shape), tile batch``: per axis the smallest tile (a multiple of ``multiple``, at least
    ``minimum``, at most the device's cap: :data:`AUTO_TILE` for planes, :data:`AUTO_TILE_3D` for
    volumes) that covers the axis with the fewest overlapping windows; the batch fills the device's
    pixels (voxels) per batch."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    cap, batch_pixels = (AUTO_TILE if len(shape) == 2 else AUTO_TILE_3D)[kind]
    minimums = _per_axis(minimum, len(shape))
    multiples = _per_axis(multiple, len(shape))
    roi = []
    for extent, least, step in zip(shape, minimums, multiples):
        edge = max(cap, least)
        if extent <= edge:
            roi.append(extent)
            continue
        windows = math.ceil((extent - edge * overlap) / (edge * (1 - overlap)))
        size = math.ceil(extent / (windows - (windows - 1) * overlap))
        roi.append(min(edge, max(least, -(-size // step) * step)))
    batch = batch_size or max(1, batch_pixels // math.prod(roi))
    return tuple(roi), batch


def _per_axis(value: int | Sequence[int], count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, (int, float)) else [int(v) for v in value]


def block_shape(shape: Sequence[int], voxels: int) -> tuple[int, ...]:
    """The largest near-cubic block edges (one per axis) whose blocks cut ``shape`` in equal parts of at
    most ``voxels`` voxels: the axis with the longest part is cut once more until a part fits."""
    counts = [1] * len(shape)
    while math.prod(math.ceil(e / c) for e, c in zip(shape, counts)) > voxels:
        longest = max(range(len(shape)), key=lambda axis: math.ceil(shape[axis] / counts[axis]))
        counts[longest] += 1
    return tuple(math.ceil(e / c) for e, c in zip(shape, counts))


Region = tuple[slice, ...]


def blocks(shape: tuple[int, ...], block: int | Sequence[int], halo: int | Sequence[int],
           multiple: int | Sequence[int] = 32) -> Iterator[tuple[Region, Region]]:
    """``(outer, inner)`` regions covering ``shape`` (any number of axes) in row-major order: ``outer`` is
    a block of at most ``block`` pixels a side (one edge, or one per axis) plus at least ``halo`` of
    context on each side (clipped at the border), grown where the image allows to a multiple of
    ``multiple`` (the network then pads nothing, which would change its output near the edge); ``inner``
    is the block itself, relative to ``outer``. The inner regions tile the image exactly."""
    spans = []
    for extent, edge, margin, step in zip(shape, *(_per_axis(v, len(shape)) for v in (block, halo, multiple))):
        count = max(1, math.ceil(extent / edge))
        edges = [round(i * extent / count) for i in range(count + 1)]  # equal blocks, no sliver at the end
        axis = []
        for a, b in zip(edges, edges[1:]):
            start, stop = max(0, a - margin), min(extent, b + margin)
            grow = min(-(stop - start) % step, extent - (stop - start))  # as far as the image allows
            after = min(grow, extent - stop)
            start, stop = start - (grow - after), stop + after
            axis.append((slice(start, stop), slice(a - start, b - start)))
        spans.append(axis)
    for parts in itertools.product(*spans):
        yield tuple(outer for outer, _ in parts), tuple(inner for _, inner in parts)
