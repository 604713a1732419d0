"""Prediction of volumes by 3D networks: 3D sliding windows, block by block.

:func:`~napari_unet_seg.inference.predict_steps` hands a 3D model's input here. A volume ``(Z, Y, X)``
(or colour ``(Z, Y, X, 3|4)``) is cut into near-cubic blocks of at most
:data:`~napari_unet_seg.tiling.BLOCK_3D` voxels, each read (from numpy, dask, zarr or a memmap: only that
block is loaded) with :data:`BLOCK_HALO_3D` voxels of context, predicted with MONAI's
``sliding_window_inference`` (3D tiles, gaussian blending) and written into the labels (which may be the
caller's ``out`` array). The intensity range is the whole volume's, measured on an even strided subsample
of at most about :data:`~napari_unet_seg.normalization.STATS_SAMPLE` voxels (every voxel for small
volumes), so every block is scaled alike in bounded memory. Probabilities and uncertainty are kept whole,
and only when asked.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from .events import Message, Tiles
from .inference import (TILE_STEPS, Prediction, _store, _TileMeter, _with_tiles, postprocess, probabilities,
                        views)
from .instances import instance_labels
from .model_file import SegmentationModel
from .normalization import STATS_SAMPLE, intensity_range, normalize
from .tiling import AUTO_TILE_3D, BLOCK_3D, auto_tiling, block_shape, blocks, window_count

__all__ = ["BLOCK_HALO_3D", "patch_shape", "predict_volume_steps", "volume_range"]

#: Context read around each block of a large volume (voxels), cut off again after prediction.
BLOCK_HALO_3D = 16


def channels_first(block: np.ndarray, in_channels: int, colour: bool) -> np.ndarray:
    """A volume block as ``(C, Z, Y, X)``: colour is averaged to gray for 1-channel models (alpha dropped)."""
    if not colour:
        return block[None]
    block = block[..., :3]
    if in_channels == 1:
        return block.astype(np.float32).mean(axis=-1)[None]
    return np.moveaxis(block, -1, 0)


def volume_range(array: Any, model: SegmentationModel, colour: bool) -> dict[str, float]:
    """The whole volume's :func:`~napari_unet_seg.normalization.intensity_range`, from every ``s``-th
    voxel along each axis (``s`` the smallest step that keeps about :data:`STATS_SAMPLE` voxels): one
    strided read, never the whole volume in memory."""
    spatial = tuple(array.shape[:3])
    step = max(1, math.ceil((math.prod(spatial) / STATS_SAMPLE) ** (1 / 3)))
    sample = np.asarray(array[::step, ::step, ::step])
    return intensity_range(channels_first(sample, model.in_channels, colour), model.normalization)


def patch_shape(model: SegmentationModel) -> tuple[int, int, int]:
    """The training patch per axis: ``config["patch_shape"]``, else ``patch_size`` on every axis (64 if unknown)."""
    shape = model.config.get("patch_shape")
    if shape:
        return tuple(int(v) for v in shape)
    return (int(model.config.get("patch_size") or 64),) * 3


def _multiples(network: torch.nn.Module) -> list[int]:
    """What each axis of the network's input must be a multiple of to need no padding."""
    multiples = list(getattr(network, "multiples", [1]))
    return multiples * 3 if len(multiples) == 1 else multiples


def _plan(model: SegmentationModel, spatial: tuple[int, int, int], device: torch.device, tile: int | None,
          batch_size: int | None, overlap: float, view_count: int) -> tuple[list, tuple[int, ...], int, list[int]]:
    """``(blocks, tile, tile batch, tile steps per block)`` of a volume (see :mod:`.tiling`)."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    multiples = _multiples(model.network)
    regions = list(blocks(spatial, block_shape(spatial, BLOCK_3D[kind]), BLOCK_HALO_3D, multiples))
    extents = [tuple(s.stop - s.start for s in outer) for outer, _ in regions]
    if tile:
        roi = (int(tile),) * 3
        batch_size = batch_size or max(1, AUTO_TILE_3D[kind][1] // math.prod(roi))
    else:
        roi, batch_size = auto_tiling(tuple(map(max, zip(*extents))), device, minimum=patch_shape(model),
                                      overlap=overlap, batch_size=batch_size, multiple=multiples)
    steps = [TILE_STEPS * view_count * window_count(extent, roi, overlap) for extent in extents]
    return regions, roi, batch_size, steps


def _isotropic_plane(model: SegmentationModel) -> bool:
    """Whether the y and x spacings are equal (or unknown): then turns in the y-x plane are fair views."""
    spacing = model.spacing
    return not spacing or len(spacing) < 2 or math.isclose(spacing[-1], spacing[-2], rel_tol=1e-3)


def predict_volume_steps(model: SegmentationModel, array: Any, network: torch.nn.Module, meter: _TileMeter,
                         labels: Any, *, colour: bool, device: torch.device, tile: int | None, overlap: float,
                         threshold: float, batch_size: int | None, tta: bool, uncertainty: bool, post: dict,
                         instances: str, min_distance: int, return_probabilities: bool,
                         precision: str, cancel: Any, progress: bool
                         ) -> Generator[Tiles | Message, None, Prediction]:
    """:func:`~napari_unet_seg.inference.predict_steps` for a 3D model (options checked there; ``labels``
    the array to fill, ``network`` and ``meter`` the working copy to run, ``post`` the options of
    :func:`~napari_unet_seg.postprocessing.postprocess`)."""
    spatial = tuple(int(n) for n in array.shape[:3])
    turns = _isotropic_plane(model)
    regions, roi, batch_size, windows = _plan(model, spatial, device, tile, batch_size, overlap,
                                              len(views(tta, uncertainty, 3, turns)))
    total = sum(windows)
    channels = 1 if model.num_classes == 2 else model.num_classes
    keep_probs = return_probabilities or instances == "watershed"
    probs_out = np.zeros(((channels,) if channels > 1 else ()) + spatial, np.float32) if keep_probs else None
    spread_out = np.zeros(spatial, dtype=np.float32) if uncertainty else None
    value_range = volume_range(array, model, colour)
    lowered: list[int] = []
    done = 0
    for (outer, inner), count in zip(regions, windows):
        block = np.asarray(array[outer + ((slice(None),) if colour else ())])
        tensor = torch.from_numpy(normalize(channels_first(block, model.in_channels, colour), model.normalization,
                                            value_range)).to(device)
        del block
        options = dict(num_classes=model.num_classes, tile=roi, overlap=overlap, batch_size=batch_size, tta=tta,
                       uncertainty=uncertainty, precision=precision, channels_last=True, turns=turns,
                       on_out_of_memory=lowered.append)
        probs = yield from _with_tiles(lambda report, stop, block=tensor: meter.run(report, lambda: probabilities(
            network, block, on_window=meter.windows_done, cancel=stop, **options)), cancel, done, count, total,
            progress)
        del tensor  # the block's input is not needed while its output is stored
        probs, spread = (probs[0], probs[1].mean(dim=0, keepdim=True)) if uncertainty else (probs, None)
        if lowered:
            batch_size = lowered[-1]
            yield Message(f"out of GPU memory: tile batch size lowered to {batch_size}", "warning")
            lowered.clear()
        target = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))
        _store((labels, probs_out, spread_out), target, inner, probs, spread, model.num_classes, threshold)
        del probs, spread
        done += count
    if any(post.values()) or instances != "none":  # these need the whole labels in memory
        whole = postprocess(np.asarray(labels[...]), **post, spatial_dims=3)
        if instances != "none":  # the watershed's distance in physical units when the voxel spacing is known
            spacing = model.spacing if model.spacing and len(model.spacing) == 3 else None
            whole = instance_labels(whole, probs_out, mode=instances, min_distance=min_distance, spatial_dims=3,
                                    spacing=spacing)
        labels[...] = whole
    return Prediction(labels, probs_out if return_probabilities else None, spread_out)

