"""Training settings chosen from the data: a fingerprint of the pairs, then a plan with one reason per choice.

:func:`fingerprint` measures image sizes, channels, dtype and intensity range, the foreground fraction,
the mask values, the objects (count per image, the largest one's extent and fill) and the pixel spacing
where a TIFF states it, on at most :data:`SAMPLE` pairs drawn with a fixed seed (so a big folder is fast).
:func:`plan` turns it into settings, each with a one-line reason: whole images resized (large, compact
objects such as lesions or cells: PH2 test IoU 0.864 at ``--resize 256`` against 0.701 with 256² patches,
docs/results.md) or patches at full resolution (thin structures and texture, such as EM membranes); the
patch and batch size that :func:`~napari_unet_seg.memory.check_training_memory` lets through on the
device; the epochs that fit a time budget (an epoch's time from a few of its training steps timed on the
device, :mod:`.epoch_timing`); the share of patches centred on foreground (rare foreground,
and every 3D run, as nnU-Net does). Post-processing is a proposal stored with the plan: training tries it
(keep the largest object, fill holes) on its validation images after the last epoch and keeps it only
where Dice rises (:mod:`.tuning`). :meth:`Plan.apply` fills only the settings not given.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .crops import patch_count
from .errors import UserError

__all__ = ["SAMPLE", "Fingerprint", "Plan", "fingerprint", "plan", "plan_training", "PLANNED", "MIN_DEPTH", "ANISOTROPY",
           "choose_spatial_dims", "resolve_spatial_dims", "common_spacing", "patch_shape"]

#: The most pairs a fingerprint reads (drawn with a fixed seed when a folder holds more).
SAMPLE = 32
#: The settings a plan may fill (the :class:`~napari_unet_seg.config.TrainConfig` fields).
PLANNED = ("spatial_dims", "spacing", "resize", "patch_size", "batch_size", "epochs", "normalization",
           "foreground_sampling")
#: Where the steps cannot be timed (:func:`plan` without ``timer``, or the timing failed): CPU-seconds per
#: megapixel of training samples, validation included: PH2 at ``--resize 256``, 165 epochs of 140 images in
#: 20 minutes on the 2-core CPU (issue 17), times the speed-up of channels-last training in the kept heap
#: measured side by side on the same command (3 epochs, 182 images: 7.3 -> 4.85 s an epoch). GPUs: assumed.
SECONDS_PER_MEGAPIXEL = {"cpu": 1200 / (165 * 140 * 256 * 256 / 1e6) * 4.85 / 7.3, "cuda": 0.04, "mps": 0.2}
#: Whole objects: the largest one spans at least this share of the image side and fills at least
#: ``_COMPACT`` of its bounding box, with at most ``_FEW`` objects per image.
_LARGE, _COMPACT, _FEW = 0.25, 0.3, 5
#: Foreground below this share of the pixels counts as rare; a plan then centres this share of the 2D
#: patches on foreground (nnU-Net's oversampling, which every 3D plan uses too).
_RARE, _OVERSAMPLE = 0.05, 0.33
#: The most mask values a fingerprint lists (label images of many objects hold thousands).
_VALUES = 64


@dataclass
class Fingerprint:
    """What :func:`fingerprint` measured; ``sizes`` are ``(min, median, max)`` of each spatial axis."""

    count: int
    sampled: int
    ndim: int
    sizes: list[list[int]]
    channels: list[int]
    dtypes: list[str]
    intensity: list[float]
    foreground: float
    foreground_range: list[float]
    values: list[int]
    levels: int
    objects: float
    extent: float | None
    fill: float | None
    spacing: list[float] | None = None
    depth: list[int] | None = None
    empty: int = 0
    full: int = 0
    stacks: int = 0
    blank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The measurements in a few lines."""
        shape = " x ".join(f"{lo}..{mid}..{hi}" for lo, mid, hi in self.sizes)
        sample = f"{self.sampled} of {self.count} pairs (seeded sample)" if self.sampled < self.count \
            else f"{self.count} pairs"
        objects = (f"{self.objects:g} per image, largest spans {self.extent:.0%} of the side, fills "
                   f"{self.fill:.0%} of its box" if self.extent is not None else "none measurable")
        if self.depth:
            shape = f"{self.depth[0]}..{self.depth[1]}..{self.depth[2]} (Z stacks) x {shape}"
        return [f"data: {sample}; size (min..median..max) {shape}; channels {_join(self.channels)}; "
                f"dtype {_join(self.dtypes)}; values {self.intensity[0]:g}..{self.intensity[1]:g}",
                f"masks: {self.levels} values ({_join(self.values, 8)}); foreground {self.foreground:.1%} of pixels "
                f"({self.foreground_range[0]:.1%}..{self.foreground_range[1]:.1%}); {self.empty} empty, "
                f"{self.full} all foreground; objects: {objects}"
                + (f"; spacing {_join(self.spacing)}" if self.spacing else "")]


@dataclass
class Plan:
    """Chosen ``settings`` (TrainConfig fields) with their ``reasons``, and ``proposals`` (the
    post-processing that training tries on its validation images), with theirs."""

    settings: dict[str, Any]
    reasons: dict[str, str]
    proposals: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)
    kept_because: dict[str, str] = field(default_factory=dict)

    def apply(self, config, given: Iterable[str] = ()) -> Any:
        """Set the planned settings on ``config`` except those in ``given`` (the user's), which are kept
        and listed in ``kept`` (with the sample size given, its other sample settings too); store the plan in
        ``config.extra["plan"]``. Returns ``config``."""
        given = set(given)
        sample = next((name for name in ("resize", "patch_size") if name in given), None)
        for name, value in self.settings.items():
            if name in given or (sample and name in ("resize", "patch_size", "batch_size")):
                self.kept[name] = getattr(config, name)
                self.kept_because[name] = "yours kept" if name in given else \
                    f"kept with your --{sample.replace('_', '-')}"
                continue
            setattr(config, name, value)
        config.extra = {**config.extra, "plan": self.to_dict()}
        return config

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "reasons": self.reasons, "proposals": self.proposals,
                "fingerprint": self.fingerprint, "kept": self.kept}

    def lines(self) -> list[str]:
        """The plan as printed: one line per choice with its reason."""
        out = ["plan (every choice can be overridden by giving its option):"]
        for name, value in self.settings.items():
            flag = f"--{name.replace('_', '-')}"
            if name in self.kept:
                why = self.kept_because.get(name, "yours kept")
                out.append(f"  {flag} {_value(self.kept[name])} ({why}; the plan's {_value(value)}: "
                           f"{self.reasons[name]})")
            else:
                out.append(f"  {flag} {_value(value)}: {self.reasons[name]}")
        for name, value in self.proposals.items():
            out.append(f"  {name} {value} (tried on the validation images after training, with the threshold): "
                       f"{self.reasons[name]}")
        for name in ("classes", "data"):
            if name in self.reasons:
                out.append(f"  note: {self.reasons[name]}")
        return out


def _value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" for v in value)
    return "none" if value is None else str(value)


def _join(values, most: int = 4) -> str:
    values = list(values or [])
    text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:most])
    return text + (", ..." if len(values) > most else "")


# --------------------------------------------------------------------------------------- 2D or 3D

#: The fewest slices a stack needs for 3D training: an isotropic 3D U-Net pools each axis 4 times, so its
#: patches are multiples of 16 voxels along every axis; a thinner stack would be mostly padding.
MIN_DEPTH = 16
#: Stacks whose coarsest spacing is this many times the finest (or more) train as 2D slices: nnU-Net's
#: threshold for its anisotropic handling (ISBI 2012: 50 nm sections, 4 nm pixels = 12.5 -> 2D;
#: Lucchi FIB-SEM: 5 nm isotropic -> 3D; QCANet embryo: 1.75 / 0.8 um = 2.2 -> 3D).
ANISOTROPY = 3.0


def choose_spatial_dims(shapes, spacing) -> tuple[int, str]:
    """``(2 or 3, reason)``: whether data of spatial ``shapes`` (``(Y, X)`` or ``(Z, Y, X)`` each) and voxel
    ``spacing`` (``[Z, Y, X]``, or None when unknown) train best as 2D slices or as 3D volumes.

    Raises:
        UserError: stacks whose spacing is unknown (the rule cannot tell).
    """
    shapes = [tuple(s) for s in shapes]
    if not shapes or any(len(s) == 2 for s in shapes):
        return 2, "2D images" if all(len(s) == 2 for s in shapes) else "some images are 2D: trained as 2D slices"
    depth = min(s[0] for s in shapes)
    if depth < MIN_DEPTH:
        return 2, f"stacks of {depth} slices are thinner than the {MIN_DEPTH} a 3D patch needs: 2D slices"
    if spacing is None or len(spacing) != 3:
        raise UserError(f"the stacks ({'x'.join(map(str, shapes[0]))} ...) state no voxel spacing (Z step), so "
                        "2D or 3D cannot be chosen; give --spacing Z,Y,X or --spatial-dims 2 or 3")
    ratio = max(spacing) / min(spacing)
    text = f"voxel spacing {_join(spacing)}: anisotropy {ratio:.3g}"
    if ratio >= ANISOTROPY:
        return 2, f"{text} >= {ANISOTROPY:g} (nnU-Net's threshold; ISBI 2012 is 12.5): 2D slices"
    return 3, f"stacks of {depth}+ slices, {text} < {ANISOTROPY:g}: 3D volumes"


def resolve_spatial_dims(requested, shapes, spacing) -> tuple[int, list[float] | None, list[str], str]:
    """``(dims, spacing, warnings, reason)`` for training: ``requested`` is ``auto``, 2 or 3 (see
    :func:`choose_spatial_dims`); with 3 and no known spacing, isotropic voxels are assumed (a warning)."""
    warnings_ = []
    if requested == "auto":
        dims, reason = choose_spatial_dims(shapes, spacing)
    else:
        dims, reason = int(requested), f"--spatial-dims {requested} given"
    if dims == 3:
        if spacing is None or len(spacing) != 3:
            warnings_.append("the volumes state no voxel spacing (Z step): isotropic voxels assumed; give "
                             "--spacing Z,Y,X if they are not")
            spacing = [1.0, 1.0, 1.0]
        spacing = [float(v) for v in spacing]
    return dims, spacing, warnings_, reason


def common_spacing(spacings, names) -> list[float] | None:
    """The one spacing the training files state (None when none does).

    Raises:
        UserError: two files state different spacings.
    """
    known = [(name, list(s)) for name, s in zip(names, spacings) if s is not None]
    for name, value in known[1:]:
        if not np.allclose(value, known[0][1], rtol=1e-3) or len(value) != len(known[0][1]):
            raise UserError(f"{name}: voxel spacing {_join(value)} differs from {_join(known[0][1])} of "
                            f"{known[0][0]}; resample the files to one spacing, or give --spacing Z,Y,X to "
                            "train on them as they are")
    return known[0][1] if known else None


def patch_shape(patch_size: int, spacing, multiples, extents) -> tuple[int, ...]:
    """The 3D patch of ``patch_size`` voxels along the finest axis, in physical units: each axis spans
    ``patch_size * min(spacing) / spacing``, rounded up to the network's multiple for that axis and at
    most the smallest volume's ``extents`` (rounded down to that multiple, at least one multiple)."""
    finest = min(spacing)
    multiples = list(multiples) * (len(spacing) if len(multiples) == 1 else 1)
    shape = []
    for step, multiple, extent in zip(spacing, multiples, extents):
        edge = -(-round(patch_size * finest / step) // multiple) * multiple
        shape.append(int(min(edge, max(multiple, extent // multiple * multiple))))
    return tuple(shape)


# ------------------------------------------------------------------------------------------ fingerprint


def _pairs(images, masks, skip_unpaired: bool, seed: int) -> tuple[list, int]:
    """``(sampled pairs of (image, mask, spacing-or-None), total count)`` from folders or arrays."""
    if isinstance(images, (str, os.PathLike)) or isinstance(masks, (str, os.PathLike)):
        from .image_io import read_image_layout, read_mask
        from .pairing import pair_files

        with warnings.catch_warnings():  # training repeats pairing's and reading's warnings; one copy is enough
            warnings.simplefilter("ignore")
            pairs = pair_files(images, masks, skip_unpaired=skip_unpaired)
            chosen = _sample(pairs, seed)
            read = [(*read_image_layout(p.image), read_mask(p.mask), _spacing(p.image)) for p in chosen]
        return read, len(pairs)
    images, masks = list(images), list(masks)
    if len(images) != len(masks) or not images:
        raise UserError(f"give as many masks as images (got {len(images)} images, {len(masks)} masks), at least one")
    from .normalization import is_rgb

    chosen = _sample(list(zip(images, masks)), seed)
    return [(np.asarray(i), is_rgb(np.asarray(i)), np.asarray(m), None) for i, m in chosen], len(images)


def _sample(items: list, seed: int) -> list:
    return items if len(items) <= SAMPLE else random.Random(seed).sample(items, SAMPLE)


def _spacing(path: Path) -> list[float] | None:
    """The pixel (voxel) spacing a TIFF states (:func:`~napari_unet_seg.image_io.read_spacing`)."""
    from .image_io import read_spacing

    return read_spacing(path)


def _objects(mask: np.ndarray) -> tuple[int, float | None, float | None]:
    """``(count, extent, fill)`` of a mask's foreground components: the largest one's bounding box side
    relative to the image side (the larger of the axes) and its area relative to its box."""
    from skimage.measure import label, regionprops

    foreground = mask > 0
    if not foreground.any() or foreground.all():
        return int(foreground.any()), None, None
    regions = regionprops(label(foreground))
    largest = max(regions, key=lambda r: r.area)
    sides = np.divide(largest.image.shape, foreground.shape)
    return len(regions), float(sides.max()), float(largest.extent)


def fingerprint(images, masks, *, skip_unpaired: bool = False, seed: int = 0) -> Fingerprint:
    """Measure folders of pairs (paths, paired as ``train`` pairs them) or sequences of arrays (napari
    layers), on at most :data:`SAMPLE` pairs drawn with ``seed``.

    Raises:
        UserError: as pairing and reading do (missing folders, unpaired files, unreadable files).
    """
    sampled, count = _pairs(images, masks, skip_unpaired, seed)
    shapes, depths, channels, dtypes, lows, highs, shares, values, objects = [], [], set(), set(), [], [], [], set(), []
    spacing = None
    for image, colour, mask, step in sampled:
        spatial = image.shape[:-1] if colour else image.shape
        shapes.append(spatial[-2:])
        depths += list(spatial[:-2])
        channels.add(image.shape[-1] if colour else 1)
        dtypes.add(str(image.dtype))
        lows.append(float(np.nanmin(image)))
        highs.append(float(np.nanmax(image)))
        shares.append(float(np.mean(mask > 0)))
        values.update(np.unique(mask).tolist())
        objects.append(_objects(mask))
        spacing = spacing or step
    stacks = sum(i.ndim - int(c) == 3 for i, c, _, _ in sampled)
    if stacks:  # volumes: one voxel spacing for all (the first file's otherwise)
        spacing = common_spacing([s for *_, s in sampled], [f"pair {k + 1}" for k in range(len(sampled))])
    measured = [o for o in objects if o[1] is not None]
    sides = np.array(shapes)
    return Fingerprint(
        count=count, sampled=len(sampled), ndim=int(max(i.ndim - int(c) for i, c, _, _ in sampled)),
        sizes=[[int(sides[:, k].min()), int(np.median(sides[:, k])), int(sides[:, k].max())] for k in range(2)],
        channels=sorted(channels), dtypes=sorted(dtypes), intensity=[min(lows), max(highs)],
        foreground=float(np.mean(shares)), foreground_range=[min(shares), max(shares)],
        values=sorted(int(v) for v in values)[:_VALUES], levels=len(values),
        objects=float(np.median([o[0] for o in objects])),
        extent=float(np.median([o[1] for o in measured])) if measured else None,
        fill=float(np.median([o[2] for o in measured])) if measured else None, spacing=spacing,
        depth=[int(min(depths)), int(np.median(depths)), int(max(depths))] if depths else None,
        empty=sum(s == 0 for s in shares), full=sum(s == 1 for s in shares), stacks=stacks,
        blank=sum(low == high for low, high in zip(lows, highs)))


# ------------------------------------------------------------------------------------------------- plan


def _device_kind(device: str) -> str:
    """``cpu``, ``cuda`` or ``mps``: what ``device`` trains on here (torch asked only when it must)."""
    name = str(device).lower()
    if name == "cpu":
        return "cpu"
    import torch

    if name.startswith("cuda") or name == "auto":
        if torch.cuda.is_available():
            return "cuda"
    if name in ("mps", "auto") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _fitting(size: int, batch: int, device: str, model: str, width: float) -> tuple[int, int, str]:
    """The largest ``(size, batch)`` at most the given ones that the memory check lets through."""
    from .config import TrainConfig
    from .memory import check_training_memory

    while True:
        trial = TrainConfig(patch_size=size, batch_size=batch, device=device, model=model, width=width)
        try:
            check_training_memory(trial)
            return size, batch, ""
        except UserError:
            if batch > 1:
                batch //= 2
            elif size > 32:
                size = max(32, size // 2 // 16 * 16)
            else:
                return size, batch, " (even this may not fit the free memory)"


def _validation_count(count: int, val_fraction: float) -> int:
    from .dataset import validation_count  # imports torch: only when planning

    return validation_count(count, val_fraction)


def _whole_objects(fp: Fingerprint) -> tuple[bool, str]:
    if fp.extent is None:
        what = ("no foreground" if fp.foreground == 0 else "only foreground" if fp.foreground == 1
                else "only empty or all-foreground masks")
        return False, f"{what} in the sampled masks, so no object size to go by: patches at full resolution (fallback)"
    shape = f"largest object spans {fp.extent:.0%} of the image side, fills {fp.fill:.0%} of its box, " \
            f"{fp.objects:g} object(s) per image"
    if fp.extent >= _LARGE and fp.fill >= _COMPACT and fp.objects <= _FEW:
        return True, (f"{shape}: large whole objects need the whole image in view (PH2: IoU 0.864 resized vs "
                      "0.701 patches)")
    kind = "thin or branching structures" if fp.fill < _COMPACT else "many or small objects"
    return False, f"{shape}: {kind}, detail matters more than context (EM membranes): full resolution"


def _geometry(fp: Fingerprint, kind: str, device: str, model: str, width: float, train_count: int
              ) -> tuple[dict[str, Any], dict[str, str], bool]:
    """``resize``, ``patch_size`` and ``batch_size`` with their reasons, and whether whole images are used."""
    whole, why = _whole_objects(fp)
    median_side = min(fp.sizes[0][1], fp.sizes[1][1])
    wanted = 16 if kind == "cuda" else 8
    target = 256 if whole else min(256, max(32, median_side // 16 * 16))
    size, batch, note = _fitting(target, min(wanted, train_count), device, model, width)
    reasons = {"resize": why, "batch_size": f"{wanted} on {kind} (at most the {train_count} training images), "
                                            f"halved until the memory estimate fits{note}"}
    if whole:
        reasons["patch_size"] = "the resized images are the samples"
        return {"resize": size, "patch_size": size, "batch_size": batch}, reasons, True
    side = min(fp.sizes[0][0], fp.sizes[1][0])
    spread = max(fp.sizes[0][2] / fp.sizes[0][0], fp.sizes[1][2] / fp.sizes[1][0])
    reasons["patch_size"] = (f"256 px or the median image side ({median_side} px), whichever is smaller, as far "
                             "as memory allows" + (f"; images below it ({side} px) are zero-padded" if side < size
                                                   else "") + (f"; image sizes differ {spread:.0f}x" if spread >= 4
                                                               else ""))
    return {"resize": None, "patch_size": size, "batch_size": batch}, reasons, False


def _epochs(kind: str, budget: float, train_count: int, size: int, per_image: int, batch: int,
            val_pixels: float, timer) -> tuple[int, str]:
    """The epochs that fill about ``budget`` minutes (at least 20, at most 300), and why: an epoch trains
    ``per_image`` patches of ``size``² from each image (as many as the median image holds, :func:`patch_count`)."""
    patches = f"{per_image} patches" if per_image > 1 else "1 sample"
    seconds, how = _epoch_seconds(kind, timer, (size, size), batch, train_count * per_image, val_pixels, 1.0)
    epochs = _fitting_epochs(budget, seconds, 20)
    return epochs, _epochs_reason(epochs, seconds, budget, kind, 20, f"{train_count} images x {patches} of {size}² "
                                                                     f"per epoch; {how}")


def _epoch_seconds(kind: str, timer, shape: tuple[int, ...], batch: int, patches: int, val_voxels: float,
                   cost: float, spacing: list[float] | None = None) -> tuple[float, str]:
    """Seconds an epoch of ``patches`` patches of ``shape`` in batches of ``batch`` takes, validation of
    ``val_voxels`` included, and how that is known: from steps timed by ``timer(shape, batch, spacing)``
    (:func:`~napari_unet_seg.epoch_timing.time_training_steps`), else from :data:`SECONDS_PER_MEGAPIXEL`
    times ``cost`` (also when the timing fails, which the reason then says)."""
    steps = -(-patches // batch)
    failed = ""
    if timer is not None:
        try:
            measured = timer(shape, batch, spacing)
            plural = "s" * (steps != 1)
            return measured.epoch(steps, val_voxels), f"{steps} step{plural} of {measured.step:.2f} s timed here"
        except (RuntimeError, UserError) as error:  # out of memory, an operation the device lacks
            failed = f"timing the steps failed ({str(error).splitlines()[0][:80]}), so "
    seconds = cost * SECONDS_PER_MEGAPIXEL[kind] * patches * float(np.prod(shape)) / 1e6
    return seconds, failed + ("the speed per voxel of a 2-core CPU (PH2)" if kind == "cpu" else "an assumed speed")


def _fitting_epochs(budget: float, seconds: float, fewest: int) -> int:
    """The epochs of ``seconds`` each that fill ``budget`` minutes, kept in ``fewest``..300."""
    return int(min(300, max(fewest, budget * 60 / max(seconds, 1e-9))))


def _epochs_reason(epochs: int, seconds: float, budget: float, kind: str, fewest: int, what: str) -> str:
    """Why ``epochs``: the time they take at the estimated ``seconds`` an epoch, against the budget."""
    each = f"~{seconds:.1f} s" if seconds >= 0.1 else "under 0.1 s"
    total = epochs * seconds / 60
    took = f"about {total:.0f} min" if total >= 1 else "under a minute"
    return f"{took} at {each} an epoch on {kind} ({what}); budget {budget:g} min, kept in {fewest}..300"


def _sampling(fp: Fingerprint, whole: bool) -> tuple[float, str]:
    """The share of 2D patches centred on foreground, and why."""
    if whole:
        return 0.0, "whole images: every sample holds the object"
    if 0 < fp.foreground < _RARE:
        return _OVERSAMPLE, (f"foreground is rare ({fp.foreground:.1%} of the pixels): a third of the patches "
                             "centred on foreground (nnU-Net's share)")
    return 0.0, f"foreground {fp.foreground:.1%} of the pixels: uniform random patches hold enough of it"


def _proposals(fp: Fingerprint, whole: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The post-processing that training tries on its validation images after the last epoch (:mod:`.tuning`)."""
    single = whole and fp.objects <= 1
    post = ("one whole object per image: keep the largest component and fill holes, if validation Dice confirms it"
            if single else "several objects or thin structures: no component filtering")
    return {"postprocess": ["keep_largest", "fill_holes"] if single else []}, {"postprocess": post}


def _notes(fp: Fingerprint, val_fraction: float) -> dict[str, str]:
    """Remarks on the mask values and on bad input (one pair validating itself, empty or full masks)."""
    notes = {}
    if fp.levels > 2:
        hint = f"give --classes {max(fp.values) + 1} if they are classes" if fp.levels <= 16 else "object ids?"
        notes["classes"] = (f"{fp.levels} mask values ({_join(fp.values, 6)}): trained as foreground (> 0) against "
                            f"background; {hint}")
    found = ["one pair: it trains and validates" if fp.count == 1 and val_fraction else "",
             f"{fp.empty} sampled mask(s) hold no foreground" if fp.empty else "",
             f"{fp.full} sampled mask(s) are all foreground" if fp.full else "",
             f"{fp.blank} sampled image(s) are blank (one value everywhere); check the images folder"
             if fp.blank else ""]
    if any(found):
        notes["data"] = "; ".join(n for n in found if n)
    return notes


#: The 3D patch edge (voxels along the finest axis) and batch a plan starts from, per device kind: nnU-Net's
#: 3D configurations use batch 2; the edge is what a CPU trains in seconds per batch.
_EDGE_3D, _BATCH_3D = {"cpu": 64, "cuda": 96, "mps": 64}, {"cpu": 2, "cuda": 4, "mps": 2}
#: Seconds per megavoxel of 3D training relative to :data:`SECONDS_PER_MEGAPIXEL`: a U-Net (width 1) training
#: step on 2 x 64³ voxels took 0.58x the time per voxel of one on 8 x 256² pixels on the 2-core CPU (the
#: deeper levels of a 3D network hold an eighth of the voxels, not a quarter).
_COST_3D = 0.6


def _fitting_3d(edge: int, batch: int, spacing, extents, device: str, model: str, width: float
                ) -> tuple[int, int, tuple[int, ...], str]:
    """The largest 3D ``(edge, batch, patch shape)`` at most the given ones that the memory check lets through."""
    from .config import TrainConfig
    from .memory import check_training_memory
    from .models import build_network, network_kwargs

    multiples = build_network(model, 1, 1, **network_kwargs(model, width, spatial_dims=3, spacing=spacing)).multiples
    while True:
        shape = patch_shape(edge, spacing, multiples, extents)
        trial = TrainConfig(patch_size=edge, batch_size=batch, device=device, model=model, width=width)
        try:
            check_training_memory(trial, shape=shape)
            return edge, batch, shape, ""
        except UserError:
            if batch > 1:
                batch //= 2
            elif edge > 32:
                edge -= 16
            else:
                return edge, batch, shape, " (even this may not fit the free memory)"


def _plan_3d(fp: Fingerprint, kind: str, device: str, budget: float, model: str, width: float, counts: tuple[int, int],
             spacing: list[float], timer) -> tuple[dict[str, Any], dict[str, str]]:
    """``patch_size``, ``batch_size`` and ``epochs`` of 3D training on ``counts`` = (training, validation)
    volumes, with their reasons."""
    train_count, val_count = counts
    extents = [fp.depth[0], fp.sizes[0][0], fp.sizes[1][0]]
    wanted = min(_BATCH_3D[kind], 2 * train_count)
    edge, batch, shape, note = _fitting_3d(_EDGE_3D[kind], wanted, spacing, extents, device, model, width)
    median = (fp.depth[1], fp.sizes[0][1], fp.sizes[1][1])
    voxels = train_count * float(np.prod(median))
    seconds, how = _epoch_seconds(kind, timer, shape, batch, train_count * patch_count(median, shape),
                                  val_count * voxels / train_count, _COST_3D, spacing)
    epochs = _fitting_epochs(budget, seconds, 10)
    return {"resize": None, "patch_size": edge, "batch_size": batch, "epochs": epochs}, {
        "resize": "volumes are trained at full resolution, on 3D patches",
        "patch_size": (f"{_EDGE_3D[kind]} voxels on {kind} along the finest axis, in physical units per axis: patches "
                       f"of {'x'.join(map(str, shape))} (Z x Y x X) voxels, as far as memory allows"),
        "batch_size": f"{_BATCH_3D[kind]} 3D patches on {kind} (nnU-Net's batch), halved until the memory "
                      f"estimate fits{note}",
        "epochs": _epochs_reason(epochs, seconds, budget, kind, 10, f"{train_count} volumes of ~"
                                 f"{voxels / train_count / 1e6:.1f} M voxels, every voxel about once an epoch; "
                                 f"{how}")}


def plan(fp: Fingerprint, *, device: str = "auto", budget: float = 20.0, model: str = "unet", width: float = 1.0,
         val_fraction: float = 0.1, spatial_dims: str | int = "auto", spacing: list[float] | None = None,
         val_count: int | None = None, timer=None) -> Plan:
    """Settings for training on the data ``fp`` measured, on ``device``, in about ``budget`` minutes.

    ``spatial_dims`` (``auto``, 2 or 3) and ``spacing`` (None: the files') as given; stacks add the
    choice of 2D or 3D (:func:`resolve_spatial_dims`) to the settings. ``val_count``: the validation
    images of a validation folder (None: ``val_fraction`` of ``fp``'s). ``timer(shape, batch, spacing)`` times the
    training steps of a candidate (a :class:`~napari_unet_seg.epoch_timing.StepTime`; :func:`plan_training`
    passes one); without it an epoch's time is assumed from :data:`SECONDS_PER_MEGAPIXEL`.
    """
    kind = _device_kind(device)
    if fp.stacks or spatial_dims != "auto":
        shapes = ([(fp.depth[0], fp.sizes[0][0], fp.sizes[1][0])] * fp.stacks if fp.stacks else []) \
            + [(fp.sizes[0][0], fp.sizes[1][0])] * (fp.sampled - fp.stacks)
        dims, spacing, notes, why = resolve_spatial_dims(spatial_dims, shapes, spacing or fp.spacing)
        if dims == 3:
            if fp.stacks < fp.sampled:
                raise UserError(f"--spatial-dims 3: {fp.sampled - fp.stacks} of the {fp.sampled} sampled images "
                                "are 2D, not volumes; give stacks (Z, Y, X) or use --spatial-dims 2")
            if fp.depth[0] < 2:
                raise UserError(f"--spatial-dims 3: a sampled volume has {fp.depth[0]} slice; 3D training needs at "
                                "least 2 (or use --spatial-dims 2)")
            held = _validation_count(fp.count, val_fraction)
            counts = (fp.count - held, held if val_count is None else val_count)
            settings, reasons = _plan_3d(fp, kind, device, budget, model, width, counts, spacing, timer)
            settings = {"spatial_dims": 3, "spacing": spacing, **settings, "normalization": "percentile",
                        "foreground_sampling": _OVERSAMPLE}
            reasons.update(spatial_dims=why, spacing=_spacing_reason(spacing, fp.spacing, notes),
                           normalization=f"values {fp.intensity[0]:g}..{fp.intensity[1]:g} ({_join(fp.dtypes)}): "
                                         "per-volume 1-99.8 percentiles",
                           foreground_sampling=f"foreground {fp.foreground:.1%} of the voxels: a third of the 3D "
                                               "patches centred on foreground (nnU-Net's share)")
            return Plan(settings, {**reasons, **_notes(fp, val_fraction)}, {}, fingerprint=fp.to_dict())
        if fp.stacks:  # 2D slices of stacks: every slice counts as one image
            fp = Fingerprint(**{**fp.to_dict(), "count": fp.count * fp.depth[1]})
            val_count = None if val_count is None else val_count * fp.depth[1]
        fp = Fingerprint(**{**fp.to_dict(), "stacks": 0})
        chosen = plan(fp, device=device, budget=budget, model=model, width=width, val_fraction=val_fraction,
                      val_count=val_count, timer=timer)
        chosen.settings = {"spatial_dims": 2, **chosen.settings}
        chosen.reasons["spatial_dims"] = why
        return chosen
    train_count = fp.count - _validation_count(fp.count, val_fraction)
    settings, reasons, whole = _geometry(fp, kind, device, model, width, train_count)
    size = settings["patch_size"]
    median = (fp.sizes[0][1], fp.sizes[1][1])
    per_image = 1 if whole else patch_count(median, (size, size))
    held = fp.count - train_count if val_count is None else val_count
    val_pixels = held * (size**2 if whole else float(np.prod(median)))
    settings["epochs"], reasons["epochs"] = _epochs(kind, budget, train_count, size, per_image,
                                                    settings["batch_size"], val_pixels, timer)
    settings["normalization"] = "percentile"
    reasons["normalization"] = (f"values {fp.intensity[0]:g}..{fp.intensity[1]:g} ({_join(fp.dtypes)}): per-image "
                                "1-99.8 percentiles, robust to outliers and to exposure between images")
    settings["foreground_sampling"], reasons["foreground_sampling"] = _sampling(fp, whole)
    proposals, why = _proposals(fp, whole)
    return Plan(settings, {**reasons, **why, **_notes(fp, val_fraction)}, proposals, fingerprint=fp.to_dict())


def _spacing_reason(spacing, stated, notes) -> str:
    if notes:
        return notes[0]
    return "as the files state it" if stated and list(stated) == list(spacing) else "as given"


def plan_training(config, *, budget: float = 20.0, given: Iterable[str] = (), arrays=None, start=None) -> list[str]:
    """Measure the training data of ``config`` (its folders, or ``arrays`` of ``(image, mask)`` pairs: napari
    layers) and set the plan's settings on it, except those in ``given`` (the user's, kept). A model to
    fine-tune (``start``) fixes the architecture and width planned for, and the dimensions unless given.
    Returns the measurements and the plan, one line per choice with its reason (the CLI's printout).

    Raises:
        UserError: a bad budget, no training data, or what reading the data raises.
    """
    from .config import Rule, check_value

    check_value("--budget", budget, Rule("float", above=0, unit="minutes"))
    given = set(given)
    if start is not None:
        config.model, config.width = start.architecture["name"], float(start.config.get("width", config.width))
        if "spatial_dims" not in given:
            config.spatial_dims = start.spatial_dims
    if arrays is not None:
        measured = fingerprint([image for image, _ in arrays], [mask for _, mask in arrays], seed=config.seed)
    elif config.images and config.masks:
        measured = fingerprint(config.images, config.masks, skip_unpaired=config.skip_unpaired, seed=config.seed)
    else:
        raise UserError("give the training data: --images DIR and --masks DIR")
    flat = measured.sampled - measured.stacks
    if start is not None and start.spatial_dims == 3 and "spatial_dims" not in given and flat:
        raise UserError(f"the model to fine-tune ({start.name}) is 3D, but {flat} of the {measured.sampled} sampled "
                        "images are 2D, not volumes; fine-tune a 2D model, or give stacks (Z, Y, X)")
    timer = None if "epochs" in given else _step_timer(config, max(measured.channels))
    chosen = plan(measured, device=config.device, budget=budget, model=config.model, width=config.width,
                  val_fraction=0.0 if config.val_images else config.val_fraction,
                  spatial_dims=config.spatial_dims, spacing=config.spacing,
                  val_count=_val_count(config), timer=timer)
    if start is not None and "spatial_dims" not in given and "spatial_dims" in chosen.reasons:
        chosen.reasons["spatial_dims"] = f"the model to fine-tune ({start.name}) is {start.spatial_dims}D"
    chosen.apply(config, given)
    return measured.lines() + chosen.lines()


def _val_count(config) -> int | None:
    """The images in the validation folder, None without one (or when it cannot be listed: training says why)."""
    from .pairing import list_images

    try:
        return len(list_images(config.val_images)) if config.val_images else None
    except UserError:
        return None


def _step_timer(config, channels: int):
    """``timer(shape, batch, spacing)`` for :func:`plan`: the training steps of ``config`` (its model, width,
    classes, device, precision, augmentation) on that batch, timed (:mod:`.epoch_timing`)."""
    from dataclasses import replace

    from .epoch_timing import time_training_steps

    def timer(shape, batch, spacing):
        dims = {"spatial_dims": 3, "spacing": spacing} if len(shape) == 3 else {"spatial_dims": 2}
        return time_training_steps(replace(config, batch_size=batch, **dims), tuple(shape), channels)

    return timer
