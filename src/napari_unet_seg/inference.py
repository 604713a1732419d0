"""Prediction: tiled inference with MONAI's ``sliding_window_inference``, then labels.

``predict_steps`` is a generator that yields :class:`~napari_unet_seg.events.Tiles` progress and
returns a :class:`Prediction`; ``predict`` drains it. Stacks are predicted slice by slice, large planes
block by block (:mod:`.tiling`). Test-time
augmentation predicts rotated and flipped views of the image; their spread is the uncertainty map.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .device import free_cuda_memory, is_out_of_memory, resolve_device
from .errors import JobCancelled, UserError, is_cancelled
from .events import Message, Tiles, drain
from .fusion import inference_network
from .heap import retained_heap
from .instances import check_instances, instance_labels
from .model_file import SegmentationModel, load_model
from .normalization import intensity_range, is_rgb, normalize, to_channels_first
from .postprocessing import postprocess, prediction_settings
from .tiling import BLOCK, auto_tiling, blocks, window_count

__all__ = ["Prediction", "check_input", "predict", "predict_steps", "spacing_mismatch", "working_copy", "probabilities",
           "labels_from_probabilities", "postprocess", "views", "FLIPS", "DIHEDRAL"]

#: A view of an image is ``(k, dims)``: ``rot90(flip(image, dims), k)`` (turns in the last two axes, the
#: y-x plane). ``tta`` averages the four flips; ``uncertainty`` the eight rotations and flips (the
#: symmetries of the square).
FLIPS = ((0, ()), (0, (-1,)), (0, (-2,)), (0, (-2, -1)))
DIHEDRAL = tuple((k, dims) for dims in ((), (-1,)) for k in range(4))
#: Volumes: ``tta`` averages the eight flips of the three axes (every subset of z, y, x); ``uncertainty``
#: the four quarter turns in the y-x plane, each as is and flipped in z, where the y and x spacings are
#: equal (else, turns would show the network a plane it never saw: the eight flips).
FLIPS_3D = tuple((0, dims) for dims in ((), (-1,), (-2,), (-3,), (-2, -1), (-3, -1), (-3, -2), (-3, -2, -1)))
TURNS_3D = tuple((k, dims) for dims in ((), (-3,)) for k in range(4))


def views(tta: bool = False, uncertainty: bool = False, spatial_dims: int = 2, turns: bool = True
          ) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The views predicted: the eight of :data:`DIHEDRAL` for uncertainty, the :data:`FLIPS` for tta, else
    one; for volumes (``spatial_dims=3``) :data:`TURNS_3D` (:data:`FLIPS_3D` without ``turns``) and
    :data:`FLIPS_3D`."""
    if spatial_dims == 3:
        return (TURNS_3D if turns else FLIPS_3D) if uncertainty else FLIPS_3D if tta else ((0, ()),)
    return DIHEDRAL if uncertainty else FLIPS if tta else ((0, ()),)


@dataclass
class Prediction:
    """``labels``: uint8 class ids of the input's spatial shape (int32 instance ids with ``instances``);
    ``probabilities``: float32, when asked (foreground probability for binary models, ``(classes, ...)``
    for multi-class); ``uncertainty``: float32 of the labels' shape, when asked (spread across views)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


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


def probabilities(network: torch.nn.Module, image: torch.Tensor, *, num_classes: int, tile: int | tuple[int, ...],
                  overlap: float = 0.25, batch_size: int = 4, tta: bool = False, uncertainty: bool = False,
                  precision: str = "auto", channels_last: bool = False, turns: bool = True,
                  on_window: Callable[[int], None] | None = None, cancel: Any = None,
                  raw: bool = False, on_out_of_memory: Callable[[int], None] | None = None,
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(K, Y, X)`` of one normalized image ``(C, Y, X)`` already on the device
    (``(K, Z, Y, X)`` of a volume ``(C, Z, Y, X)`` for a 3D network: ``tile`` then has three axes, views
    are those of :func:`views` for volumes, ``turns`` whether they may turn the y-x plane).

    With ``raw=True`` the blended logits instead (validation computes its loss on them).
    ``K`` is 1 (foreground) for binary models, else ``num_classes``. Tiles of ``tile`` pixels overlap
    by ``overlap`` and are blended with a gaussian window. ``tta`` averages the four flips;
    ``uncertainty`` averages the eight rotations and flips and returns ``(mean, std)``, ``std`` the
    per-pixel standard deviation ``(K, Y, X)`` across them (see :func:`views`). The network
    runs under autocast (:func:`autocast_dtype`); ``channels_last`` feeds it NHWC tiles.
    When the GPU runs out of memory, the tile batch is halved and the image redone;
    ``on_out_of_memory(new_batch_size)`` is told (else a warning is issued).
    """
    device = image.device
    dtype = autocast_dtype(device, precision)

    def run(batch: torch.Tensor) -> torch.Tensor:
        if is_cancelled(cancel):
            raise JobCancelled()
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d if batch.dim() == 5 else torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = network(batch)
        if on_window is not None:
            on_window(batch.shape[0])
        logits = logits.float()
        if raw:
            return logits
        return torch.sigmoid(logits) if num_classes == 2 else torch.softmax(logits, dim=1)

    axes = image.dim() - 1
    tile = (tile,) * axes if isinstance(tile, int) else tuple(tile)
    chosen = views(tta, uncertainty, axes, turns)
    total = mean = m2 = None
    x = image[None]
    with torch.inference_mode():
        for count, (k, dims) in enumerate(chosen, start=1):
            view = torch.flip(x, dims) if dims else x
            view = torch.rot90(view, k, (-2, -1)) if k else view
            # A quarter turn swaps the axes and the tile's; an image smaller than the tile is one window of
            # its own size (the network pads internally).
            size = (*tile[:-2], tile[-1], tile[-2]) if k % 2 else tile
            roi = tuple(min(edge, extent) for edge, extent in zip(size, view.shape[2:]))
            weights = separable_gaussian(roi, device) if axes == 3 else None
            out, batch_size = _sliding_windows(view, roi, batch_size, run, overlap, weights, on_out_of_memory)
            out = torch.rot90(out, -k, (-2, -1)) if k else out
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total + out
            if uncertainty:  # Welford's running variance: exactly 0 where all views agree
                if mean is None:
                    mean, m2 = out.clone(), torch.zeros_like(out)
                else:
                    delta = out - mean
                    mean += delta / count
                    m2 += delta * (out - mean)
    if uncertainty:
        return (total / len(chosen))[0], torch.sqrt(m2.clamp_min(0) / len(chosen))[0]
    return (total / len(chosen))[0]


def _sliding_windows(view: torch.Tensor, roi: tuple[int, ...], batch_size: int, run: Callable, overlap: float,
                     weights: torch.Tensor | None, on_out_of_memory: Callable[[int], None] | None
                     ) -> tuple[torch.Tensor, int]:
    """MONAI's gaussian-blended sliding windows over ``view``, the tile batch halved (and the view redone)
    each time the GPU runs out of memory; returns the output and the batch size that fitted."""
    from monai.inferers import sliding_window_inference

    while True:
        try:
            return sliding_window_inference(view, roi_size=roi, sw_batch_size=batch_size, predictor=run,
                                            overlap=overlap, mode="gaussian", roi_weight_map=weights), batch_size
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise UserError(f"out of GPU memory even for one tile of {'x'.join(map(str, roi))} "
                                f"{'voxels' if len(roi) == 3 else 'pixels'}; "
                                "use a smaller tile size or the CPU") from None
        # Out of the except block, the failed attempt's tensors are released.
        batch_size //= 2
        free_cuda_memory()
        if on_out_of_memory is not None:
            on_out_of_memory(batch_size)
        else:
            warnings.warn(f"out of GPU memory: tile batch size lowered to {batch_size}", stacklevel=3)


def separable_gaussian(roi: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The blending weights of a 3D tile: the product of MONAI's gaussian along each axis, each floored
    as MONAI floors its map (at 1e-3). MONAI floors the product instead, so on a volume's faces, where
    one tile alone covers an axis, the weights of the tiles along the other axes all sink to the floor
    and are averaged alike, edges and all (up to 0.3 off the untiled probabilities with a 3x3x3 network);
    here they still fall with the distance to each tile's centre."""
    from monai.data.utils import compute_importance_map

    weights = [compute_importance_map((edge,), mode="gaussian", sigma_scale=0.125, device=device) for edge in roi]
    return (weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :])[None, None]


def labels_from_probabilities(probs: torch.Tensor, num_classes: int, threshold: float = 0.5) -> torch.Tensor:
    """uint8 class ids ``(Y, X)`` from ``(K, Y, X)`` probabilities (threshold for binary, argmax else)."""
    if num_classes == 2:
        return (probs[0] > threshold).to(torch.uint8)
    return probs.argmax(dim=0).to(torch.uint8)


def _layout(array: Any, in_channels: int, rgb: bool | None, spatial_dims: int = 2) -> tuple[bool, tuple[int, ...]]:
    """(is colour, spatial shape) of an input array; refuses what is not 2D or a stack of 2D (for a 3D
    model: what is not a volume of at least two slices)."""
    shape = tuple(array.shape)
    colour = is_rgb(np.empty(shape[-3:] if len(shape) >= 3 else shape, dtype=np.uint8)) if rgb is None else rgb
    spatial = shape[:-1] if colour else shape
    if len(spatial) not in (2, 3):
        raise UserError(f"image of shape {shape}: expected 2D (Y, X), colour (Y, X, 3) or a stack (Z, Y, X); "
                        "select one channel or time point first")
    if min(spatial[-2:]) < 1:
        raise UserError(f"image of shape {shape} is empty")
    if len(spatial) == 3 and shape[-1] <= 2 < 8 <= min(shape[:2]):
        raise UserError(f"image of shape {shape}: its last axis looks like {shape[-1]} channel(s), not a stack of "
                        f"{shape[0]} slices {shape[-1]} pixel(s) wide; select one channel (image[..., 0]) first")
    if in_channels == 3 and not colour:
        raise UserError(f"image of shape {shape} is grayscale but the model expects colour (RGB) input; "
                        "use a model trained on grayscale images")
    if spatial_dims == 3 and len(spatial) == 2:
        raise UserError(f"image of shape {shape} is {'a colour' if colour else 'a'} 2D image but the model is 3D "
                        "(it segments volumes (Z, Y, X)); give a volume or use a 2D model")
    if spatial_dims == 3 and spatial[0] < 2:
        raise UserError(f"volume of shape {shape} has {spatial[0]} slice; a 3D model needs at least 2 "
                        "(give more slices or use a 2D model)")
    return colour, spatial


def _coloured(array: Any, side: int = 512) -> bool:
    """Whether a colour image's (a colour stack's first plane's) three channels differ anywhere in its central
    ``side`` x ``side`` pixels (gray stored as RGB, three equal channels, does not count); a window, not a
    grid, so that a chunked (dask, zarr) image is read in a few chunks only."""
    plane = array[0] if len(array.shape) == 4 else array
    y, x = (max(0, (n - side) // 2) for n in plane.shape[:2])
    window = np.asarray(plane[y:y + side, x:x + side, :3])
    return not (window == window[..., :1]).all()


def check_input(model: SegmentationModel, array: Any, rgb: bool | None = None) -> None:
    """Refuse, in one line, an input that ``model`` cannot segment (as :func:`predict_steps` would); only
    ``array.shape`` is read."""
    _layout(array, model.in_channels, rgb, model.spatial_dims)


#: Context read around each block of a large plane (pixels), cut off again after prediction.
BLOCK_HALO = 128


#: Progress units per tile: :class:`Tiles` of ``predict_steps`` count tenths of a tile's forward pass.
TILE_STEPS = 10
#: Seconds between two :class:`Tiles` events within a block (at least; one more ends each block).
PROGRESS_INTERVAL = 0.1


class _TileMeter:
    """Reports how far the network's forward passes are, in :data:`TILE_STEPS` per tile, from forward
    hooks on its leaf modules (of predict's own copy of the network: the caller's is untouched)."""

    def __init__(self, network: torch.nn.Module) -> None:
        leaves = [m for m in network.modules() if not any(True for _ in m.children())]
        self.expected, self.calls, self.batch, self.reported = max(1, len(leaves)), 0, 0, 0
        self.report: Callable[[int], None] = lambda units: None
        network.register_forward_pre_hook(self._begin)
        for leaf in leaves:
            leaf.register_forward_hook(self._step)

    def _begin(self, module, args) -> None:
        self.calls, self.batch, self.reported = 0, args[0].shape[0], 0

    def _step(self, module, args, output) -> None:
        self.calls += 1
        units = self.batch * (TILE_STEPS - 1) * min(self.calls, self.expected) // self.expected
        if units > self.reported:
            self.report(units - self.reported)
            self.reported = units

    def windows_done(self, count: int) -> None:
        """A forward pass of ``count`` tiles ended: report what is left of them (and learn its length)."""
        self.expected = max(1, self.calls)
        self.report(count * TILE_STEPS - self.reported)
        self.reported = count * TILE_STEPS

    def run(self, report: Callable[[int], None], work: Callable[[], Any]) -> Any:
        self.report = report
        return work()


def _with_tiles(work: Callable[[Callable[[int], None], Callable[[], bool]], Any], cancel: Any, start: int,
                count: int, total: int, progress: bool = True) -> Generator[Tiles, None, Any]:
    """Run ``work(report, stop)`` (one block's tiles) in a thread and yield :class:`Tiles` as it reports
    progress (``start`` .. ``start + count`` of ``total`` tile steps); return its result.

    ``stop()`` is true when ``cancel`` is set or the generator is closed early; the work then ends at
    its next tile batch with :class:`JobCancelled`, which is raised here. Without ``progress`` the work
    runs in the calling thread and one :class:`Tiles` follows it (whose allocations glibc can keep for
    reuse: :mod:`.heap`).
    """
    if not progress:
        value = work(lambda units: None, lambda: is_cancelled(cancel))
        yield Tiles(start + count, total)
        return value
    reports: queue.SimpleQueue = queue.SimpleQueue()
    stopped, outcome = threading.Event(), {}

    def target() -> None:
        try:
            outcome["value"] = work(reports.put, lambda: stopped.is_set() or is_cancelled(cancel))
        except BaseException as error:  # noqa: BLE001 - raised again in the generator's thread
            outcome["error"] = error
        finally:
            reports.put(None)

    thread = threading.Thread(target=target, name="napari-unet-seg predict", daemon=True)
    thread.start()
    done, shown = 0, time.perf_counter()
    try:
        while (steps := reports.get()) is not None:
            done = min(count, done + steps)  # retried tiles (after running out of memory) count once
            if done < count and time.perf_counter() - shown >= PROGRESS_INTERVAL:
                shown = time.perf_counter()
                yield Tiles(start + done, total)
    finally:
        stopped.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield Tiles(start + count, total)
    return outcome["value"]


def _check_options(overlap: float, threshold: float, tile: int | None, batch_size: int | None,
                   min_size: int) -> None:
    if not 0 <= overlap < 1:
        raise UserError(f"overlap must be in [0, 1), got {overlap}")
    if not 0 < threshold < 1:
        raise UserError(f"threshold must be in (0, 1), got {threshold}")
    if tile is not None and tile < 16:
        raise UserError(f"tile size must be at least 16 pixels, got {tile}")
    if (batch_size is not None and batch_size < 1) or min_size < 0:
        raise UserError("batch size must be >= 1 and minimum object size >= 0")


def working_copy(model: SegmentationModel, device: str | torch.device = "auto") -> SegmentationModel:
    """A copy of ``model`` whose network :func:`predict_steps` runs as it is: on ``device``, channels-last,
    in eval mode, batch norm folded into its convolutions (:mod:`~napari_unet_seg.fusion`). predict copies
    any other model's network (so that its caller's model never changes) and keeps that copy while the
    weights stay the same; this makes the copy once, explicitly (validation does)."""
    torch_device = resolve_device(device)
    network = inference_network(model.network, torch_device)
    network._predict_device, network._predict_meter = torch_device, _TileMeter(network)
    return dataclasses.replace(model, network=network)


def _working_network(model: SegmentationModel, device: torch.device) -> tuple[torch.nn.Module, _TileMeter]:
    """The network predict runs (a copy unless ``model`` is a :func:`working_copy` for ``device``) and its meter."""
    if device.type == "cuda":  # tiles of a few fixed shapes: let cuDNN time and keep its fastest kernels
        torch.backends.cudnn.benchmark = True
    network = model.network
    if getattr(network, "_predict_device", None) != device:
        key = _weights_key(network, device)
        cached = _COPIES.get(network)
        if cached is None or cached[0] != key:
            cached = _COPIES[network] = (key, working_copy(model, device).network)
        network = cached[1]
    return network, network._predict_meter


#: The working copy of each network predict ran, with the :func:`_weights_key` it was made from (kept only
#: while the network lives; replaced when its weights change).
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_key(network: torch.nn.Module, device: torch.device) -> tuple:
    """What a working copy depends on: the device, and each weight tensor's identity and version (torch
    counts every in-place change, e.g. an optimizer step or ``load_state_dict``)."""
    tensors = [*network.parameters(), *network.buffers()]
    return str(device), tuple((id(tensor), tensor._version) for tensor in tensors)


def _store(outputs: tuple, target: tuple, inner: tuple, probs: torch.Tensor, spread: torch.Tensor | None,
           num_classes: int, threshold: float) -> None:
    """Write a block's ``inner`` part into the ``(labels, probabilities, uncertainty)`` arrays at ``target``."""
    labels, probs_out, spread_out = outputs
    probs = probs[(slice(None), *inner)]
    labels[target] = labels_from_probabilities(probs, num_classes, threshold).cpu().numpy()
    if spread_out is not None:
        spread_out[target] = spread[0][inner].cpu().numpy()
    if probs_out is not None:
        values = probs.cpu().numpy()
        if num_classes > 2:
            probs_out[(slice(None), *target)] = values
        else:
            probs_out[target] = values[0]


def _plan(model: SegmentationModel, plane_shape: tuple[int, int], device: torch.device, tile: int | None,
          batch_size: int | None, overlap: float, view_count: int) -> tuple[list, tuple[int, int], int, list[int]]:
    """``(blocks, tile, tile batch, tile steps per block)`` of a plane (see :mod:`.tiling`)."""
    resize = model.config.get("resize")
    # A model trained on resized images sees each plane whole and resized; others see blocks of a bounded size.
    halo = 0 if resize else BLOCK_HALO
    regions = list(blocks(plane_shape, max(plane_shape) if resize else BLOCK[device.type], halo))
    extents = [tuple(s.stop - s.start for s in outer) for outer, _ in regions]
    network_shape = (resize, resize) if resize else tuple(map(max, zip(*extents)))
    if tile:
        roi, batch_size = (int(tile), int(tile)), batch_size or 4
    else:
        roi, batch_size = auto_tiling(network_shape, device, minimum=model.tile_size, overlap=overlap,
                                      batch_size=batch_size)
    steps = [TILE_STEPS * view_count * window_count(network_shape if resize else extent, roi, overlap)
             for extent in extents]
    return regions, roi, batch_size, steps


def _output(out: Any, shape: tuple[int, ...], dtype: type) -> Any:
    """The labels array: zeros, or ``out`` once its shape and dtype are checked."""
    if out is None:
        return np.zeros(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise UserError(f"out array of shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)} does not fit the "
                        f"labels ({tuple(shape)}, {np.dtype(dtype)}); give one of that shape and dtype")
    return out


def _settings(model: SegmentationModel, threshold: float | None, tta: bool | None, min_size: int,
              keep_largest: bool | None, fill_holes: bool | None) -> tuple[float, bool, dict]:
    """``(threshold, tta, post)``: the options given, else the model's own choice, else the defaults;
    ``post`` holds the keywords of :func:`postprocess`."""
    chosen = prediction_settings(model.postprocess, threshold=threshold, tta=tta, keep_largest=keep_largest,
                                 fill_holes=fill_holes)
    post = {"min_size": min_size, "keep_largest": chosen["keep_largest"], "fill_holes": chosen["fill_holes"]}
    return chosen["threshold"], chosen["tta"], post


#: A pixel or voxel size this many times the model's (or under its inverse) along an axis changes how large
#: the objects look to it enough to cost accuracy: a warning says so.
SPACING_RATIO = 1.5


def spacing_mismatch(trained: Sequence[float] | None, spacing: Sequence[float] | None) -> str | None:
    """A warning when ``spacing`` (the input's, micrometres) differs from the model's ``trained`` spacing by
    :data:`SPACING_RATIO` or more along an axis; None when either is unknown or they agree."""
    if trained and spacing and len(trained) == 2 and len(spacing) == 3:  # a 2D model on a stack: its planes
        spacing = spacing[1:]
    if not trained or not spacing or len(trained) != len(spacing) or min(*trained, *spacing) <= 0:
        return None
    ratios = [float(s) / float(t) for s, t in zip(spacing, trained)]
    axis = max(range(len(ratios)), key=lambda k: max(ratios[k], 1 / ratios[k]))
    ratio, names = ratios[axis], "ZYX"[-len(ratios):]
    if max(ratio, 1 / ratio) < SPACING_RATIO:
        return None
    where = "in every axis" if max(ratios) / min(ratios) < 1.01 else f"along {names[axis]}"
    coarser = ratio > 1
    return (f"{'voxels' if len(ratios) == 3 else 'pixels'} of {_lengths(spacing)} ({' x '.join(names)}), the model "
            f"was trained on {_lengths(trained)}: {max(ratio, 1 / ratio):.1f}x {'coarser' if coarser else 'finer'} "
            f"{where}, so objects look {'smaller' if coarser else 'larger'} to it than in training; resample the "
            "image to the model's spacing for reliable labels")


def _lengths(microns: Sequence[float]) -> str:
    """``5 x 5 x 5 nm`` below a micrometre, ``0.65 x 0.65 µm`` above."""
    scale, unit = (1000, "nm") if max(microns) < 1 else (1, "µm")
    return " x ".join(f"{float(v) * scale:.3g}" for v in microns) + f" {unit}"


def predict_steps(model: SegmentationModel | str | os.PathLike, array: Any, *, device: str = "auto",
                  tile: int | None = None, overlap: float = 0.25, threshold: float | None = None,
                  batch_size: int | None = None, tta: bool | None = None, uncertainty: bool = False,
                  min_size: int = 0, fill_holes: bool | None = None, keep_largest: bool | None = None,
                  instances: str = "none", min_distance: int = 5, return_probabilities: bool = False,
                  rgb: bool | None = None, precision: str = "auto", cancel: Any = None,
                  out: Any = None, progress: bool = True, spacing: Sequence[float] | None = None
                  ) -> Generator[Tiles | Message, None, Prediction]:
    """Segment ``array``, yielding :class:`Tiles` progress (in tiles) per tile batch; return a :class:`Prediction`.

    ``array`` is numpy or dask: ``(Y, X)``, ``(Y, X, 3|4)``, ``(Z, Y, X)`` or ``(Z, Y, X, 3|4)``.
    A plane larger than a block (:data:`~napari_unet_seg.tiling.BLOCK`) is predicted block by block with
    :data:`BLOCK_HALO` pixels of context, normalized with the whole plane's intensity range, so memory
    stays bounded (probabilities are kept whole only when asked for, or for watershed instances).
    ``tile``/``batch_size`` default to :func:`auto_tiling` (as few windows as the device's cap allows,
    at least the training patch size); the network runs channels-last under ``precision``
    (:func:`autocast_dtype`). When the GPU runs out of memory, ``batch_size`` is halved for the rest of
    the job and a warning :class:`Message` is yielded. ``uncertainty`` predicts the eight rotations and
    flips, labels their mean and returns the spread (std of the foreground probability; for multi-class
    the mean over classes of each class's std). ``instances`` (``components`` or ``watershed``, binary
    models) turns the labels into int32 object ids, unique across a stack (:mod:`.instances`).
    ``out``: an array-like (numpy memmap, zarr array) of the labels' shape and dtype that the labels are
    written into, block by block (``Prediction.labels`` is then ``out``). ``progress=False`` yields
    :class:`Tiles` per block only, not during a block's tiles, and runs the network in the calling thread
    (faster on a CPU: :mod:`.heap`).

    ``threshold``, ``tta``, ``keep_largest`` and ``fill_holes`` left at None take the model file's own
    choice (``model.postprocess``, chosen on validation data by :mod:`.tuning`), else 0.5 and off
    (:func:`~napari_unet_seg.postprocessing.prediction_settings`).

    A 3D model (``model.spatial_dims == 3``) predicts a volume ``(Z, Y, X)`` or ``(Z, Y, X, 3)`` as a
    volume, block by block (:mod:`.volume_inference`). ``spacing``: the input's pixel or voxel size in
    micrometres, slowest axis first, when known; a warning :class:`Message` says when it differs from the
    spacing the model was trained on by :data:`SPACING_RATIO` or more along an axis (nothing is resampled).
    """
    model = load_model(model)
    threshold, tta, post = _settings(model, threshold, tta, min_size, keep_largest, fill_holes)
    _check_options(overlap, threshold, tile, batch_size, min_size)
    check_instances(instances, model.num_classes, min_distance)
    colour, spatial = _layout(array, model.in_channels, rgb, model.spatial_dims)
    if colour and model.in_channels == 1 and _coloured(array):
        yield Message("a colour image for a model trained on grayscale images: segmented as gray (the mean of its "
                      "channels); use a colour model if the colour matters", "warning")
    mismatch = spacing_mismatch(model.spacing, spacing)
    if mismatch:
        yield Message(mismatch, "warning")
    torch_device = resolve_device(device)
    autocast_dtype(torch_device, precision)  # refuses an unknown precision before any work
    labels = _output(out, spatial, np.uint8 if instances == "none" else np.int32)
    network, meter = _working_network(model, torch_device)
    options = dict(colour=colour, device=torch_device, tile=tile, overlap=overlap, threshold=threshold,
                   batch_size=batch_size, tta=tta, uncertainty=uncertainty, post=post, instances=instances,
                   min_distance=min_distance, return_probabilities=return_probabilities, precision=precision,
                   cancel=cancel, progress=progress)
    with retained_heap(torch_device.type == "cpu"):
        if model.spatial_dims == 3:
            from .volume_inference import predict_volume_steps

            return (yield from predict_volume_steps(model, array, network, meter, labels, **options))
        return (yield from _predict_planes(model, array, network, meter, labels, **options))


def _predict_planes(model: SegmentationModel, array: Any, network: torch.nn.Module, meter: _TileMeter, labels: Any,
                    *, colour: bool, device: torch.device, tile: int | None, overlap: float, threshold: float,
                    batch_size: int | None, tta: bool, uncertainty: bool, post: dict, instances: str,
                    min_distance: int, return_probabilities: bool, precision: str, cancel: Any,
                    progress: bool) -> Generator[Tiles | Message, None, Prediction]:
    """:func:`predict_steps` for a 2D model: an image, or a stack slice by slice (arguments as in
    :func:`~napari_unet_seg.volume_inference.predict_volume_steps`)."""
    spatial = tuple(labels.shape)
    stack, plane_shape = len(spatial) == 3, tuple(spatial[-2:])
    resize = model.config.get("resize")
    regions, roi, batch_size, windows = _plan(model, plane_shape, device, tile, batch_size, overlap,
                                              len(views(tta, uncertainty)))
    slices = spatial[0] if stack else 1
    total = slices * sum(windows)
    channels = 1 if model.num_classes == 2 else model.num_classes
    keep_probs = return_probabilities or instances == "watershed"
    probs_out = np.zeros(((channels,) if channels > 1 else ()) + spatial, np.float32) if keep_probs else None
    spread_out = np.zeros(spatial, dtype=np.float32) if uncertainty else None
    lowered: list[int] = []
    done = last_id = 0
    for z in range(slices):
        here = z if stack else ...
        image = to_channels_first(np.asarray(array[z] if stack else array), model.in_channels, rgb=colour,
                                  name="image")
        value_range = intensity_range(image, model.normalization)  # of the whole plane, for every block
        for (outer, inner), count in zip(regions, windows):
            tensor = torch.from_numpy(normalize(image[(slice(None), *outer)], model.normalization,
                                                value_range)).to(device)
            if resize:  # resized for the model, and its output scaled back
                tensor = F.interpolate(tensor[None], size=(resize, resize), mode="bilinear", antialias=True)[0]
            options = dict(num_classes=model.num_classes, tile=roi, overlap=overlap, batch_size=batch_size, tta=tta,
                           uncertainty=uncertainty, precision=precision, channels_last=True,
                           on_out_of_memory=lowered.append)
            probs = yield from _with_tiles(lambda report, stop: meter.run(report, lambda: probabilities(
                network, tensor, on_window=meter.windows_done, cancel=stop, **options)), cancel, done, count, total,
                progress)
            probs, spread = (probs[0], probs[1].mean(dim=0, keepdim=True)) if uncertainty else (probs, None)
            if resize:
                probs = F.interpolate(probs[None], size=plane_shape, mode="bilinear")[0]
                spread = None if spread is None else F.interpolate(spread[None], size=plane_shape,
                                                                   mode="bilinear")[0]
            if lowered:
                batch_size = lowered[-1]
                yield Message(f"out of GPU memory: tile batch size lowered to {batch_size}", "warning")
                lowered.clear()
            target = (here, *(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner)))
            _store((labels, probs_out, spread_out), target, inner, probs, spread, model.num_classes, threshold)
            done += count
        plane = postprocess(labels[here], **post)
        if instances != "none":
            plane = instance_labels(plane, None if probs_out is None else probs_out[here], mode=instances,
                                    min_distance=min_distance, offset=last_id)
            last_id = max(last_id, int(plane.max(initial=0)))
        labels[here] = plane
    return Prediction(labels, probs_out if return_probabilities else None, spread_out)


def predict(model: SegmentationModel | str | os.PathLike, array: Any, *, device: str = "auto",
            return_probabilities: bool = False, uncertainty: bool = False, on_event: Callable | None = None,
            **options: Any) -> np.ndarray | tuple[np.ndarray, ...]:
    """Segment a numpy or dask array with a model (object, file path or shipped model name).

    Returns uint8 labels of the input's spatial shape (0/1, or class ids; int32 object ids with
    ``instances``); with ``return_probabilities=True`` and/or ``uncertainty=True`` a tuple
    ``(labels, [probabilities,] [uncertainty])``. Options: ``tile``, ``overlap``, ``threshold``,
    ``batch_size``, ``tta``, ``min_size``, ``keep_largest``, ``fill_holes``, ``instances``, ``min_distance``,
    ``rgb``,
    ``precision``, ``cancel`` (see :func:`predict_steps`). ``on_event`` is given each progress event
    (:class:`Tiles`, warning :class:`Message`; warnings are issued as Python warnings without it, and
    progress is reported per block only, which is faster: ``progress`` of :func:`predict_steps`).

    Example:
        >>> labels = predict("em-membranes", image)          # doctest: +SKIP
    """
    steps = predict_steps(model, array, device=device, return_probabilities=return_probabilities,
                          uncertainty=uncertainty, progress=on_event is not None, **options)
    result: Prediction = drain(steps, on_event or _warn)
    extra = ([result.probabilities] if return_probabilities else []) + ([result.uncertainty] if uncertainty else [])
    return (result.labels, *extra) if extra else result.labels


def _warn(event: Any) -> None:
    if isinstance(event, Message) and event.level == "warning":
        warnings.warn(event.text, stacklevel=3)
