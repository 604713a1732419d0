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


def _window_count(size: tuple[int, int], roi: int, overlap: float) -> int:
    count = 1
    for extent in size:
        if extent <= roi:
            continue
        interval = max(1, int(roi * (1 - overlap)))
        count *= math.ceil((extent - roi) / interval) + 1
    return count


def probabilities(network: torch.nn.Module, image: torch.Tensor, *, num_classes: int, tile: int,
                  overlap: float = 0.25, batch_size: int = 4, tta: bool = False, amp: bool = True,
                  on_window: Callable[[int], None] | None = None, cancel: Any = None,
                  raw: bool = False, on_out_of_memory: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities ``(K, Y, X)`` of one normalized image ``(C, Y, X)`` already on the device.

    With ``raw=True`` the blended logits instead (validation computes its loss on them).
    ``K`` is 1 (foreground) for binary models, else ``num_classes``. Tiles of ``tile`` pixels overlap
    by ``overlap`` and are blended with a gaussian window. ``tta`` averages the four flips.
    When the GPU runs out of memory, the tile batch is halved and the image redone;
    ``on_out_of_memory(new_batch_size)`` is told (else a warning is issued).
    """
    from monai.inferers import sliding_window_inference

    device = image.device
    use_amp = amp and device.type == "cuda"

    def run(batch: torch.Tensor) -> torch.Tensor:
        if is_cancelled(cancel):
            raise JobCancelled()
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = network(batch)
        if on_window is not None:
            on_window(batch.shape[0])
        logits = logits.float()
        if raw:
            return logits
        return torch.sigmoid(logits) if num_classes == 2 else torch.softmax(logits, dim=1)

    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    # An image smaller than the tile is one window of its own size (the network pads internally).
    roi = (min(tile, image.shape[-2]), min(tile, image.shape[-1]))
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
                  tile: int | None = None, overlap: float = 0.25, threshold: float = 0.5, batch_size: int = 4,
                  tta: bool = False, min_size: int = 0, fill_holes: bool = False,
                  return_probabilities: bool = False, rgb: bool | None = None,
                  cancel: Any = None) -> Generator[Tiles | Message, None, Prediction]:
    """Segment ``array``, yielding :class:`Tiles` progress (in tiles) after each slice; return a :class:`Prediction`.

    ``array`` is numpy or dask: ``(Y, X)``, ``(Y, X, 3|4)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3|4)``.
    ``tile`` defaults to the model's training patch size (at least 256). When the GPU runs out of
    memory, ``batch_size`` is halved for the rest of the job and a warning :class:`Message` is yielded.
    """
    model = load_model(model)
    if not 0 <= overlap < 1:
        raise UserError(f"overlap must be in [0, 1), got {overlap}")
    if not 0 < threshold < 1:
        raise UserError(f"threshold must be in (0, 1), got {threshold}")
    if tile is not None and tile < 16:
        raise UserError(f"tile size must be at least 16 pixels, got {tile}")
    if batch_size < 1 or min_size < 0:
        raise UserError("batch size must be >= 1 and minimum object size >= 0")
    colour, spatial = _layout(array, model.in_channels, rgb)
    tile = int(tile or model.tile_size)
    torch_device = resolve_device(device)
    network = model.network.to(torch_device).eval()
    stack = len(spatial) == 3
    slices = spatial[0] if stack else 1
    per_slice = _window_count(spatial[-2:], tile, overlap) * (4 if tta else 1)
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
        probs = probabilities(network, tensor, num_classes=model.num_classes, tile=tile, overlap=overlap,
                              batch_size=batch_size, tta=tta, cancel=cancel, on_out_of_memory=lowered.append)
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
