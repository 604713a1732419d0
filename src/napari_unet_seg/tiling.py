"""How an image plane is cut for prediction: blocks (bounded memory) of tiles (the network's input).

A plane larger than a block is predicted block by block, each block read with a ``halo`` of context
that is cut off again, so host and GPU memory stay bounded whatever the image size. Inside a block,
MONAI's ``sliding_window_inference`` cuts tiles of :func:`auto_tiling`'s size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["AUTO_TILE", "BLOCK", "auto_tiling", "blocks", "window_count"]

#: Largest tile edge and pixels per tile batch chosen automatically, per device type. On the CPU whole
#: images up to 2048 px are one tile (no overlap overhead); see benchmarks/bench_predict.py.
AUTO_TILE = {"cpu": (2048, 2048 * 2048), "cuda": (1024, 32 * 512 * 512)}

#: Edge of the blocks a large plane is predicted in, per device type: a 4096² block holds ~16 Mpixel,
#: i.e. about 0.4 GB of float32 working arrays (input, blended output, weights).
BLOCK = {"cpu": 4096, "cuda": 4096}


def window_count(size: tuple[int, int], roi: tuple[int, int], overlap: float) -> int:
    """How many windows ``sliding_window_inference`` cuts from ``size`` with tiles ``roi``."""
    count = 1
    for extent, length in zip(size, roi):
        if extent <= length:
            continue
        interval = max(1, int(length * (1 - overlap)))
        count *= math.ceil((extent - length) / interval) + 1
    return count


def auto_tiling(shape: tuple[int, int], device: torch.device, *, minimum: int, overlap: float,
                batch_size: int | None = None) -> tuple[tuple[int, int], int]:
    """``(tile height, tile width), tile batch``: per axis the smallest tile (a multiple of 32, at least
    ``minimum``, at most the device's cap) that covers the axis with the fewest overlapping windows."""
    cap, batch_pixels = AUTO_TILE["cuda" if device.type == "cuda" else "cpu"]
    cap = max(cap, minimum)
    roi = []
    for extent in shape:
        if extent <= cap:
            roi.append(extent)
            continue
        windows = math.ceil((extent - cap * overlap) / (cap * (1 - overlap)))
        size = math.ceil(extent / (windows - (windows - 1) * overlap))
        roi.append(min(cap, max(minimum, -(-size // 32) * 32)))
    batch = batch_size or max(1, batch_pixels // (roi[0] * roi[1]))
    return (roi[0], roi[1]), batch


Region = tuple[slice, slice]


def blocks(shape: tuple[int, int], block: int, halo: int, multiple: int = 32) -> Iterator[tuple[Region, Region]]:
    """``(outer, inner)`` regions covering ``shape`` in row-major order: ``outer`` is a block of at most
    ``block`` pixels a side plus at least ``halo`` of context on each side (clipped at the plane's
    border), grown where the plane allows to a multiple of ``multiple`` (the network then pads nothing,
    which would change its output near the edge); ``inner`` is the block itself, relative to ``outer``.
    The inner regions tile the plane exactly."""
    spans = []
    for extent in shape:
        count = max(1, math.ceil(extent / block))
        edges = [round(i * extent / count) for i in range(count + 1)]  # equal blocks, no sliver at the end
        axis = []
        for a, b in zip(edges, edges[1:]):
            start, stop = max(0, a - halo), min(extent, b + halo)
            grow = min(-(stop - start) % multiple, extent - (stop - start))  # as far as the plane allows
            after = min(grow, extent - stop)
            start, stop = start - (grow - after), stop + after
            axis.append((a, b, start, stop))
        spans.append(axis)
    for y0, y1, oy0, oy1 in spans[0]:
        for x0, x1, ox0, ox1 in spans[1]:
            yield ((slice(oy0, oy1), slice(ox0, ox1)),
                   (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0)))
