"""Prediction: tiled inference with MONAI's ``sliding_window_inference``, then labels.

``predict_steps`` is a generator that yields :class:`~napari_unet_seg.events.Tiles` progress and
returns a :class:`Prediction`; ``predict`` drains it. Stacks are predicted slice by slice.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .device import free_cuda_memory, is_out_of_memory, resolve_device
from .errors import JobCancelled, UserError, is_cancelled
from .events import Message, Tiles, drain
from .model_file import SegmentationModel, load_model
from .normalization import is_rgb, normalize, to_channels_first

__all__ = ["Prediction", "predict", "predict_steps", "probabilities", "labels_from_probabilities", "postprocess"]


@dataclass
class Prediction:
    """``labels``: uint8 class ids of the input's spatial shape; ``probabilities``: float32, when asked
    (foreground probability for binary models, ``(classes, ...)`` for multi-class)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def _window_count(size: tuple[int, int], roi: tuple[int, int], overlap: float) -> int:
    count = 1
    for extent, length in zip(size, roi):
        if extent <= length:
            continue
        interval = max(1, int(length * (1 - overlap)))
        count *= math.ceil((extent - length) / interval) + 1
    return count


#: Largest tile edge and pixels per tile batch chosen automatically, per device type. On the CPU whole
#: images up to 2048 px are one tile (no overlap overhead); see benchmarks/bench_predict.py.
AUTO_TILE = {"cpu": (2048, 2048 * 2048), "cuda": (1024, 32 * 512 * 512)}


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


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference: ``auto`` is float16 on CUDA and bfloat16 on CPUs with native
    bfloat16 (AVX512-BF16 or AMX), else float32 (None); ``fp32``, ``fp16``, ``bf16`` force one."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise UserError(f"precision {precision!r} is unknown; use auto, fp32, fp16 or bf16")
    if device.type == "cuda":
        return torch.float16
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # older torch: stay exact
        native = False
    return torch.bfloat16 if native else None


def probabilities(network: torch.nn.Module, image: torch.Tensor, *, num_classes: int, tile: int | tuple[int, int],
                  overlap: float = 0.25, batch_size: int = 4, tta: bool = False, precision: str = "auto",
                  channels_last: bool = False,
                  on_window: Callable[[int], None] | None = None, cancel: Any = None,
                  raw: bool = False, on_out_of_memory: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities ``(K, Y, X)`` of one normalized image ``(C, Y, X)`` already on the device.

    With ``raw=True`` the blended logits instead (validation computes its loss on them).
    ``K`` is 1 (foreground) for binary models, else ``num_classes``. Tiles of ``tile`` pixels overlap
    by ``overlap`` and are blended with a gaussian window. ``tta`` averages the four flips. The network
    runs under autocast (:func:`autocast_dtype`); ``channels_last`` feeds it NHWC tiles.
    When the GPU runs out of memory, the tile batch is halved and the image redone;
    ``on_out_of_memory(new_batch_size)`` is told (else a warning is issued).
    """
    from monai.inferers import sliding_window_inference

    device = image.device
    dtype = autocast_dtype(device, precision)

    def run(batch: torch.Tensor) -> torch.Tensor:
        if is_cancelled(cancel):
            raise JobCancelled()
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = network(batch)
        if on_window is not None:
            on_window(batch.shape[0])
        logits = logits.float()
        if raw:
            return logits
        return torch.sigmoid(logits) if num_classes == 2 else torch.softmax(logits, dim=1)

    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    # An image smaller than the tile is one window of its own size (the network pads internally).
    tile = (tile, tile) if isinstance(tile, int) else tile
    roi = (min(tile[0], image.shape[-2]), min(tile[1], image.shape[-1]))
    total = None
    x = image[None]
    with torch.inference_mode():
        for dims in flips:
            view = torch.flip(x, dims) if dims else x
            while True:
                try:
                    out = sliding_window_inference(view, roi_size=roi, sw_batch_size=batch_size, predictor=run,
                                                   overlap=overlap, mode="gaussian")
                    break
                except RuntimeError as error:
                    if not is_out_of_memory(error):
                        raise
                    if batch_size == 1:
                        raise UserError(f"out of GPU memory even for one tile of {roi[0]}x{roi[1]} pixels; "
                                        "use a smaller tile size or the CPU") from None
                # Out of the except block, the failed attempt's tensors are released.
                batch_size //= 2
                free_cuda_memory()
                if on_out_of_memory is not None:
                    on_out_of_memory(batch_size)
                else:
                    warnings.warn(f"out of GPU memory: tile batch size lowered to {batch_size}", stacklevel=2)
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total + out
    return (total / len(flips))[0]


def labels_from_probabilities(probs: torch.Tensor, num_classes: int, threshold: float = 0.5) -> torch.Tensor:
    """uint8 class ids ``(Y, X)`` from ``(K, Y, X)`` probabilities (threshold for binary, argmax else)."""
    if num_classes == 2:
        return (probs[0] > threshold).to(torch.uint8)
    return probs.argmax(dim=0).to(torch.uint8)


def postprocess(labels: np.ndarray, *, min_size: int = 0, fill_holes: bool = False) -> np.ndarray:
    """Remove objects smaller than ``min_size`` pixels and fill holes, per class (2D labels)."""
    if not min_size and not fill_holes:
        return labels
    from scipy.ndimage import binary_fill_holes
    from skimage.morphology import remove_small_objects

    out = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        region = labels == value
        if min_size:
            kept = remove_small_objects(region, max_size=min_size - 1) if _has_max_size() else \
                remove_small_objects(region, min_size=min_size)
            out[region & ~kept] = 0
            region = kept
        if fill_holes:
            out[binary_fill_holes(region) & (out == 0)] = value
    return out


def _has_max_size() -> bool:
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def _layout(array: Any, in_channels: int, rgb: bool | None) -> tuple[bool, tuple[int, ...]]:
    """(is colour, spatial shape) of an input array; refuses what is not 2D or a stack of 2D."""
    shape = tuple(array.shape)
    colour = is_rgb(np.empty(shape[-3:] if len(shape) >= 3 else shape, dtype=np.uint8)) if rgb is None else rgb
    spatial = shape[:-1] if colour else shape
    if len(spatial) not in (2, 3):
        raise UserError(f"image of shape {shape}: expected 2D (Y, X), colour (Y, X, 3) or a stack (Z, Y, X); "
                        "select one channel or time point first")
    if min(spatial[-2:]) < 1:
        raise UserError(f"image of shape {shape} is empty")
    if in_channels == 3 and not colour:
        raise UserError(f"image of shape {shape} is grayscale but the model expects colour (RGB) input; "
                        "use a model trained on grayscale images")
    return colour, spatial


def predict_steps(model: SegmentationModel | str | os.PathLike, array: Any, *, device: str = "auto",
                  tile: int | None = None, overlap: float = 0.25, threshold: float = 0.5,
                  batch_size: int | None = None, tta: bool = False, min_size: int = 0, fill_holes: bool = False,
                  return_probabilities: bool = False, rgb: bool | None = None, precision: str = "auto",
                  cancel: Any = None) -> Generator[Tiles | Message, None, Prediction]:
    """Segment ``array``, yielding :class:`Tiles` progress (in tiles) after each slice; return a :class:`Prediction`.

    ``array`` is numpy or dask: ``(Y, X)``, ``(Y, X, 3|4)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3|4)``.
    ``tile``/``batch_size`` default to :func:`auto_tiling` (as few windows as the device's cap allows,
    at least the training patch size); the network runs channels-last under ``precision``
    (:func:`autocast_dtype`). When the GPU runs out of memory, ``batch_size`` is halved for the rest of
    the job and a warning :class:`Message` is yielded.
    """
    model = load_model(model)
    if not 0 <= overlap < 1:
        raise UserError(f"overlap must be in [0, 1), got {overlap}")
    if not 0 < threshold < 1:
        raise UserError(f"threshold must be in (0, 1), got {threshold}")
    if tile is not None and tile < 16:
        raise UserError(f"tile size must be at least 16 pixels, got {tile}")
    if (batch_size is not None and batch_size < 1) or min_size < 0:
        raise UserError("batch size must be >= 1 and minimum object size >= 0")
    colour, spatial = _layout(array, model.in_channels, rgb)
    torch_device = resolve_device(device)
    autocast_dtype(torch_device, precision)  # refuses an unknown precision before any work
    network = model.network.to(torch_device, memory_format=torch.channels_last).eval()
    stack = len(spatial) == 3
    resize = model.config.get("resize")
    plane_shape = (resize, resize) if resize else tuple(spatial[-2:])
    if tile:
        roi, batch_size = (int(tile), int(tile)), batch_size or 4
    else:
        roi, batch_size = auto_tiling(plane_shape, torch_device, minimum=model.tile_size, overlap=overlap,
                                      batch_size=batch_size)
    slices = spatial[0] if stack else 1
    per_slice = _window_count(plane_shape, roi, overlap) * (4 if tta else 1)
    total = slices * per_slice
    labels = np.zeros(spatial, dtype=np.uint8)
    channels = 1 if model.num_classes == 2 else model.num_classes
    probs_out = None
    if return_probabilities:
        probs_out = np.zeros(((channels,) if channels > 1 else ()) + spatial, dtype=np.float32)
    lowered: list[int] = []
    for z in range(slices):
        plane = np.asarray(array[z] if stack else array)
        image = normalize(to_channels_first(plane, model.in_channels, rgb=colour, name="image"),
                          model.normalization)
        tensor = torch.from_numpy(image).to(torch_device)
        if resize:  # a model trained on resized images sees them resized, and its output is scaled back
            tensor = F.interpolate(tensor[None], size=(resize, resize), mode="bilinear", antialias=True)[0]
        probs = probabilities(network, tensor, num_classes=model.num_classes, tile=roi, overlap=overlap,
                              batch_size=batch_size, tta=tta, precision=precision, channels_last=True,
                              cancel=cancel, on_out_of_memory=lowered.append)
        if resize:
            probs = F.interpolate(probs[None], size=tuple(spatial[-2:]), mode="bilinear")[0]
        if lowered:
            batch_size = lowered[-1]
            yield Message(f"out of GPU memory: tile batch size lowered to {batch_size}", "warning")
            lowered.clear()
        slice_labels = labels_from_probabilities(probs, model.num_classes, threshold).cpu().numpy()
        labels[z if stack else ...] = postprocess(slice_labels, min_size=min_size, fill_holes=fill_holes)
        if probs_out is not None:
            values = probs.cpu().numpy()
            target = probs_out if not stack else (probs_out[:, z] if channels > 1 else probs_out[z])
            target[...] = values if channels > 1 else values[0]
        yield Tiles((z + 1) * per_slice, total)
    return Prediction(labels, probs_out)


def predict(model: SegmentationModel | str | os.PathLike, array: Any, *, device: str = "auto",
            return_probabilities: bool = False, **options: Any) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a numpy or dask array with a model (object, file path or shipped model name).

    Returns uint8 labels of the input's spatial shape (0/1, or class ids); with
    ``return_probabilities=True`` a tuple ``(labels, probabilities)``. Options: ``tile``, ``overlap``,
    ``threshold``, ``batch_size``, ``tta``, ``min_size``, ``fill_holes``, ``rgb``, ``cancel``.

    Example:
        >>> labels = predict("em-membranes", image)          # doctest: +SKIP
    """
    steps = predict_steps(model, array, device=device, return_probabilities=return_probabilities, **options)
    result: Prediction = drain(steps, _warn)
    return (result.labels, result.probabilities) if return_probabilities else result.labels


def _warn(event: Any) -> None:
    if isinstance(event, Message) and event.level == "warning":
        warnings.warn(event.text, stacklevel=3)
