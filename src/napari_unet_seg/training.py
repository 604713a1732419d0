"""Training: ``train_steps`` is a generator of progress events that returns a :class:`TrainResult`.

``train`` drains it (the CLI and the console use that); the Train widget runs the generator in a
worker thread. The run's state lives in one :class:`~napari_unet_seg.training_run.TrainingRun`, whose
``state_dict()`` is what ``last.pt`` holds; ``train_steps`` is a short loop over its methods. Each
epoch writes ``history.csv``, ``curves.png``, ``last.pt`` (resumable) and, when validation Dice
improves, ``best.pt``. Validation predicts each validation image whole with
:func:`~napari_unet_seg.inference.predict_steps` (the code ``predict`` and ``evaluate`` run), so the
val Dice that picks ``best.pt`` is the Dice ``evaluate`` reports on those pairs. Cancelling stops
between batches (or tiles): the files then hold the last completed epoch. Every epoch's randomness
derives from ``(seed, epoch)``, so a resumed run repeats an uninterrupted one. While a run writes to
its folder, the folder is locked (:mod:`.run_lock`). Under torchrun (see :mod:`.distributed` and
docs/distributed.md) the processes train one model with DistributedDataParallel; ``batch_size`` is
then the batch of all processes together.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .config import TrainConfig
from .dataset import (PatchDataset, Sample, build_augmentation, is_volume, load_samples, mask_to_classes,
                      prepare_groups, read_pairs, samples_from_arrays, split_indices)
from .device_batches import DeviceBatches, fits_on_device
from .device import describe_device, free_cuda_memory, is_out_of_memory, resolve_device
from .errors import JobCancelled, UserError, is_cancelled
from .events import Batch, Checkpoint, Epoch, Message, drain, messages_only
from .heap import retained_heap
from .memory import check_training_memory
from .image_io import read_image, read_spacing
from .metrics import segmentation_metrics
from .model_file import SegmentationModel, _out_channels, load_model, read_metadata, save_model
from .models import build_network, network_kwargs
from .normalization import default_normalization
from .outputs import check_folder, removed_if_left_empty, same_file
from .pairing import pair_files, shorten_names
from .planning import common_spacing, patch_shape, resolve_spatial_dims
from .reporting import plot_curves, write_history
from .run_lock import RUN_FILES, clean_stale_files, run_lock
from .training_run import TrainingRun, check_resume_settings, read_run_state

__all__ = ["TrainResult", "ValPair", "train", "train_steps", "validate", "validate_steps", "RUN_FILES"]

@dataclass
class TrainResult:
    """What a training run produced; ``start_dice``: the starting model's val Dice (fine-tuning), else None."""

    run_dir: Path
    best: Path | None
    last: Path | None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    status: str = "completed"  # completed | cancelled | early_stopped
    start_dice: float | None = None


@dataclass
class ValPair:
    """A validation pair as ``evaluate`` sees it: the image as read and its class ids at full resolution."""

    name: str
    image: np.ndarray
    truth: np.ndarray


def _prepare_run_dir(config: TrainConfig, resume: bool, start: str | os.PathLike | None = None) -> Path:
    """The run folder, created: never an input folder (its files would be paired as images) nor one whose
    run files hold the model to ``start`` from; a run there is replaced only with ``overwrite``."""
    run = Path(config.out)
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run}: is a file; give a folder for the run")
    check_folder(run, folders=[config.images, config.masks, config.val_images, config.val_masks])
    held = next((name for name in RUN_FILES if start is not None and same_file(run / name, start)), None)
    if held:
        raise UserError(f"--out {run}: holds {held}, the model to start from, which the run would replace; "
                        "choose another folder")
    existing = [name for name in RUN_FILES if (run / name).exists()]
    if existing and not (resume or config.overwrite):
        raise UserError(f"--out {run}: already holds a run ({', '.join(existing)}); choose another folder, "
                        "pass --overwrite to replace it, or --resume to continue it")
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"--out {run}: cannot write there ({error.strerror}); choose another folder") from None
    return run


def _prepare_run(values: dict, resume: bool, given: Sequence[str], start: str | os.PathLike | None = None
                 ) -> tuple[TrainConfig, Path]:
    """The job's checked settings and its (created) run folder; under torchrun rank 0 alone runs this."""
    if resume:  # the stored run's settings, overridden by what is given now (e.g. more epochs)
        given = [k for k in given if not (k == "spatial_dims" and values[k] == "auto")]  # auto: as stored
        out = Path(values.get("out", TrainConfig.out))
        if not (out / "last.pt").exists():
            raise UserError(f"--out {out}: holds no run to resume (no last.pt); check the folder or drop --resume")
        stored = read_metadata(out / "last.pt").get("config", {})
        check_resume_settings(stored, {k: values[k] for k in given}, out)
        values = {**stored, **{k: values[k] for k in given}, "out": out}
    config = TrainConfig.from_dict(values)
    config.validate()
    resolve_device(config.device)
    world = distributed.world_size()
    if config.batch_size < world:
        raise UserError(f"--batch-size {config.batch_size} is the batch of all {world} processes together; "
                        f"give at least {world} (one patch each)")
    return config, _prepare_run_dir(config, resume, start)


def _val_pairs(items, classes: int, channels: int, spatial_dims: int | None = 2) -> list[ValPair]:
    """``(name, image, mask)`` as read, made into :class:`ValPair` (gray images repeated for colour models)."""
    pairs = []
    for name, image, mask in items:
        image = np.asarray(image)
        if channels == 3 and (image.ndim == 2 or (spatial_dims != 2 and image.ndim == 3 and is_volume(image))):
            image = np.repeat(image[..., None], 3, axis=-1)
        pairs.append(ValPair(name, image, mask_to_classes(mask, classes, f"{name} (mask)", spatial_dims)))
    return pairs


def _read_pairs(pairs) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(p.image.name, read_image(p.image), read_image(p.mask)) for p in pairs]


@dataclass
class _Data:
    """The decoded training data: ``(name, image, mask)`` per pair, the spacing the files state, and how
    to read the pairs again as ``evaluate`` reads them (for validation)."""

    decoded: list
    spacing: list[float] | None
    raw: Any
    messages: list = field(default_factory=list)


def _decode(config: TrainConfig, arrays) -> _Data:
    if arrays is not None:
        decoded = [(f"array {i}", np.asarray(im), np.asarray(m)) for i, (im, m) in enumerate(arrays)]
        return _Data(decoded, None, lambda indices: [(f"array {i}", *arrays[i]) for i in indices])
    if not config.images or not config.masks:
        raise UserError("give the training data: --images DIR and --masks DIR")
    pairs = pair_files(config.images, config.masks, skip_unpaired=config.skip_unpaired)
    decoded = read_pairs(pairs)
    spacing = None
    if any(is_volume(image) for _, image, _ in decoded):  # the files' voxel spacing (one for all)
        spacing = common_spacing([read_spacing(p.image) for p in pairs], [p.image.name for p in pairs])
    return _Data(decoded, spacing, lambda indices: _read_pairs([pairs[i] for i in indices]),
                 [Message(f"found {len(pairs)} image/mask pairs in {config.images}")])


def _spatial_shape(image: np.ndarray) -> tuple[int, ...]:
    return image.shape[:3] if is_volume(image) else image.shape[:2]


def _choose_dims(config: TrainConfig, data: _Data, start: SegmentationModel | None) -> bool:
    """Set ``config.spatial_dims`` and ``config.spacing`` to the ones used (telling why in ``data.messages``);
    return whether stacks train as 2D slices."""
    shapes = [_spatial_shape(image) for _, image, _ in data.decoded]
    requested = config.spatial_dims
    if requested == "auto" and start is not None:
        requested = start.spatial_dims
    spacing = config.spacing if config.spacing is not None else data.spacing
    if config.spacing is not None and len(config.spacing) == 2 and requested == 3:
        raise UserError(f"--spacing {','.join(f'{v:g}' for v in config.spacing)}: volumes need three values, Z,Y,X")
    dims, spacing, warnings_, reason = resolve_spatial_dims(requested, shapes, spacing)
    if start is not None and start.spatial_dims != dims:
        raise UserError(f"the model to fine-tune is {start.spatial_dims}D but training here is {dims}D; pick a "
                        f"{dims}D model or give --spatial-dims {start.spatial_dims}")
    if dims == 3 or any(len(s) == 3 for s in shapes):
        data.messages.append(Message(f"training in {dims}D: {reason}"))
    data.messages += [Message(text, "warning") for text in warnings_]
    config.spatial_dims, config.spacing = dims, spacing
    return dims == 2 and any(len(s) == 3 for s in shapes)


def _load_data(config: TrainConfig, normalization: dict, arrays, val_arrays, start: SegmentationModel | None = None
               ) -> tuple[list[Sample], list[ValPair], int, list[Message]]:
    data = _decode(config, arrays)
    messages = data.messages
    slices = _choose_dims(config, data, start)
    dims = config.spatial_dims
    common = {"classes": config.classes, "normalization": normalization, "resize": config.resize,
              "spatial_dims": dims, "slices": slices}
    groups, channels = prepare_groups(data.decoded, **common)
    samples = [s for group in groups for s in group]
    if val_arrays is not None:
        samples_from_arrays(val_arrays, in_channels=channels, **common)  # the same checks as training pairs
        train, val = samples, [(f"validation array {i}", *p) for i, p in enumerate(val_arrays)]
    elif config.val_images:
        val_files = pair_files(config.val_images, config.val_masks, skip_unpaired=config.skip_unpaired)
        load_samples(val_files, in_channels=channels, **common)
        train, val = samples, _read_pairs(val_files)
    else:  # split by file: the slices of one stack stay on one side
        train_idx, val_idx = split_indices(len(groups), config.val_fraction, config.seed)
        train = [s for i in train_idx for s in groups[i]]
        if not val_idx:
            messages.append(Message("no validation set (--val-fraction 0): best.pt is chosen on the training "
                                    "images", "warning"))
            val_idx = train_idx
        elif val_idx == train_idx:
            messages.append(Message("only one pair: it serves for training and validation", "warning"))
        val = data.raw(val_idx)
    if all(not s.mask.any() for s in samples):
        messages.append(Message("every mask is all background: there is nothing to learn; check the masks "
                                "folder (foreground must be > 0)", "warning"))
    blank = [s.name for s in samples if not np.ptp(s.image)]
    if blank:
        messages.append(Message(f"{len(blank)} of the {len(samples)} training images are blank (one value "
                                f"everywhere: {shorten_names(blank, 3)}): nothing to learn from them; check the images "
                                "folder", "warning"))
    if dims == 2 and config.resize is None and all(max(s.mask.shape) < config.patch_size for s in samples):
        messages.append(Message(f"--patch-size {config.patch_size} is larger than every image; patches are "
                                "zero-padded (a smaller --patch-size trains faster)", "warning"))
    val = _val_pairs(val, config.classes, channels, 3 if dims == 3 else None if slices else 2)
    return train, val, channels, messages


def _seed_worker(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which cancels the run
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


#: The 3D patch edge (voxels along the finest axis) when none is given: CPU, and CUDA or MPS.
PATCH_3D = {"cpu": 64, "gpu": 96}


def _patch(config: TrainConfig, given: Sequence[str], device: torch.device, network, samples: list[Sample]):
    """The training patch: ``patch_size`` (None for whole resized images) in 2D; in 3D the patch shape of
    :func:`~napari_unet_seg.planning.patch_shape` (``patch_size`` defaulting to :data:`PATCH_3D`), checked
    against the free memory. A 3D run stores the edge used as its ``patch_size`` (the shape: see _setup)."""
    if config.spatial_dims == 2:
        return None if config.resize else config.patch_size
    if "patch_size" not in given and config.patch_size == TrainConfig.patch_size:
        config.patch_size = PATCH_3D["cpu" if device.type == "cpu" else "gpu"]
    extents = np.min([s.mask.shape for s in samples], axis=0)
    shape = patch_shape(config.patch_size, config.spacing, network.multiples, extents)
    check_training_memory(config, shape=shape)
    return shape


def _batch_source(config: TrainConfig, samples: list[Sample], device: torch.device, patch
                  ) -> tuple[DeviceBatches | None, PatchDataset | None, Any]:
    """``(device batches, None, None)``: batches cut and augmented on the device from the cached images;
    or ``(None, dataset, sampler)`` for a DataLoader (MONAI transforms per patch) when ``--workers`` asks
    for worker processes or the images would take too much GPU memory (sampler: None when alone).
    ``patch``: from :func:`_patch`."""
    foreground = config.foreground_share()
    if config.workers == 0 and fits_on_device(samples, device):  # 3D augmentation in physical units
        return DeviceBatches(samples, patch, config.augment, device, foreground=foreground,
                             spacing=config.spacing if config.spatial_dims == 3 else None), None, None
    if config.spatial_dims == 3:
        augmentation = build_augmentation(config.augment, patch, spatial_dims=3, spacing=config.spacing)
    else:
        augmentation = build_augmentation(config.augment, config.resize or patch)
    dataset = PatchDataset(samples, patch, augmentation, config.seed, foreground=foreground)
    return None, dataset, distributed.sampler(dataset, config.seed * 100003)


def _loader(dataset: PatchDataset, sampler, batch_size: int, stream: int, epoch: int, workers: int,
            device: torch.device) -> torch.utils.data.DataLoader:
    """One epoch's DataLoader: shuffled (or ``sampler``'s share when distributed), augmentation seeded by ``stream``."""
    dataset.reseed(stream)
    if sampler is not None:
        sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                       drop_last=False, num_workers=workers,
                                       generator=torch.Generator().manual_seed(stream),
                                       worker_init_fn=_seed_worker if workers else None,
                                       pin_memory=device.type == "cuda", persistent_workers=False)


def _logits(probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose sigmoid (binary) or softmax (multi-class) are the blended probabilities ``probs``."""
    if num_classes == 2:
        return torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    return torch.log(probs.clamp_min(1e-8))


def validate_steps(model: SegmentationModel, pairs: Sequence[ValPair], loss_fn, *, device: torch.device | str,
                   cancel: Any = None) -> Generator[Message, None, dict]:
    """Loss and mean per-image metrics of ``model`` on whole validation images, predicted as ``evaluate``
    predicts them (:func:`~napari_unet_seg.inference.predict_steps`: its tiling, blending and resolution).

    The loss is computed on the logits of the blended probabilities. In distributed training each
    process passes its share of the images; the means are over all of them.
    """
    from .inference import predict_steps, working_copy

    totals = {"count": 0.0, "val_loss": 0.0, "val_dice": 0.0, "val_iou": 0.0, "val_accuracy": 0.0}
    model = working_copy(model, device) if pairs else model  # one copy of the weights for all images
    for pair in pairs:
        steps = predict_steps(model, pair.image, device=str(device), return_probabilities=True, cancel=cancel,
                              progress=False)
        result = yield from messages_only(steps)
        scores = segmentation_metrics(result.labels, pair.truth, model.num_classes)
        probs = torch.from_numpy(result.probabilities)
        probs = probs[None] if model.num_classes == 2 else probs
        target = torch.from_numpy(pair.truth)[None, None].float().to(device)
        with torch.no_grad():
            totals["val_loss"] += float(loss_fn(_logits(probs.to(device), model.num_classes)[None], target))
        totals["count"] += 1
        for name in ("dice", "iou", "accuracy"):
            totals[f"val_{name}"] += scores[name]
    totals = distributed.sum_across(totals)
    count = totals.pop("count")
    return {name: value / count if count else float("nan") for name, value in totals.items()}


def validate(model: SegmentationModel, pairs: Sequence[ValPair], loss_fn, *, device: torch.device | str = "cpu",
             cancel: Any = None) -> dict:
    """:func:`validate_steps`, drained."""
    return drain(validate_steps(model, pairs, loss_fn, device=device, cancel=cancel))


def _parent(start: SegmentationModel) -> dict:
    """The lineage a fine-tuned model records: the shipped ``name`` or the file's ``path``, and its sha256."""
    from .pretrained import shipped_models

    if start.path is None:  # an in-memory model: its name and a digest of its weights
        digest = hashlib.sha256()
        for key, value in sorted(start.network.state_dict().items()):
            digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
        return {"name": start.name, "sha256": digest.hexdigest()}
    path = Path(start.path).resolve()
    shipped = {file.resolve(): name for name, file in shipped_models().items()}
    with open(path, "rb") as handle:
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"name": shipped[path], "sha256": sha} if path in shipped else {"path": str(path), "sha256": sha}


def _adopt_start(config: TrainConfig, start: SegmentationModel) -> Generator[Message, None, None]:
    """A fine-tuned model keeps the architecture, width and classes of the one it starts from."""
    if config.classes != start.num_classes:
        yield Message(f"the model to fine-tune has {start.num_classes} classes: training with "
                      f"{start.num_classes}, not {config.classes}", "warning")
    config.model, config.classes = start.architecture["name"], start.num_classes
    config.width = float(start.config.get("width", config.width))


def _build_model(config: TrainConfig, start: SegmentationModel | None, stored: SegmentationModel | None,
                 channels: int, normalization: dict) -> SegmentationModel:
    """The run's model: the starting model's architecture and weights, a resumed run's architecture, or new."""
    base = start or stored
    three = {"spatial_dims": 3, "spacing": config.spacing} if config.spatial_dims == 3 else {}
    arch = base.architecture if base else {"name": config.model,
                                           "kwargs": network_kwargs(config.model, width=config.width, **three)}
    info = stored.info if stored else {"parent": _parent(start)} if start else {}
    torch.manual_seed(config.seed)
    network = build_network(arch["name"], channels, _out_channels(config.classes), **arch["kwargs"])
    if start:
        network.load_state_dict(start.network.state_dict())
    return SegmentationModel(network, arch, channels, config.classes, normalization, config.to_dict(), info=dict(info))


def _check_channels(channels: int, start: SegmentationModel | None, stored: SegmentationModel | None,
                    run_dir: Path) -> None:
    if start and start.in_channels != channels:
        raise UserError(f"the model to fine-tune takes {start.in_channels} channel(s) but the images have "
                        f"{channels}; pick a matching model")
    if stored and stored.in_channels != channels:
        kind = {1: "gray", 3: "colour (RGB)"}
        raise UserError(f"the run in {run_dir} was trained on {kind[stored.in_channels]} images but these are "
                        f"{kind.get(channels, channels)}; resume with the run's kind of images or start a new run")


def _train_epoch(run: TrainingRun, epoch_batches, count: int, epoch: int, cancel: Any
                 ) -> Generator[Batch | Message, None, float]:
    """Train one epoch, yielding a Batch per batch; return the mean loss. After running out of GPU memory,
    each batch is done in parts of the halved ``run.batch_size``."""
    run.trained.train()
    losses = []
    for index, (images, masks) in enumerate(epoch_batches, start=1):
        if distributed.any_rank(is_cancelled(cancel)):  # all processes stop at the same batch
            raise JobCancelled()
        done, parts = 0, []
        while done < len(images):
            part = slice(done, done + run.batch_size)
            try:
                parts.append(run.train_step(images[part], masks[part]))
                done = part.stop
                continue
            except RuntimeError as error:
                _check_out_of_memory(error, run.batch_size)
            # Out of the except block, the failed step's tensors are released; redo that part.
            run.batch_size //= 2
            free_cuda_memory()
            yield Message(f"out of GPU memory: batch size lowered to {run.batch_size} for the rest of the run",
                          "warning")
        losses.append(float(np.mean(parts)))
        yield Batch(epoch, index, count, losses[-1])
    # Every process has as many batches: the mean of their means is the mean over all batches.
    return distributed.sum_across({"loss": float(np.mean(losses))})["loss"] / distributed.world_size()


def _check_out_of_memory(error: RuntimeError, batch_size: int) -> None:
    if not is_out_of_memory(error):
        raise error
    if batch_size == 1:
        raise UserError("out of GPU memory even with batch size 1; use a smaller --patch-size "
                        "or --width, or --device cpu") from None
    if distributed.world_size() > 1:  # the processes would have to agree on a new batch size: stop instead
        raise UserError(f"out of GPU memory with {batch_size} patches per GPU; give a smaller "
                        "--batch-size (the batch of all GPUs together) or --patch-size") from None


def _epoch_batches(run: TrainingRun, source, epoch: int) -> tuple[Any, int]:
    batches, dataset, sampler = source
    world, rank = distributed.world_size(), distributed.rank()
    seed = run.config.seed * 100003 + epoch  # each epoch's randomness derives from (seed, epoch, rank)
    torch.manual_seed(seed)
    if batches is not None:
        return batches.epoch(run.batch_size, seed, rank, world), batches.batch_count(run.batch_size, world)
    loader = _loader(dataset, sampler, run.batch_size, seed * world + rank, epoch, run.config.workers, run.device)
    return loader, len(loader)


def _batch_size(config: TrainConfig, source) -> Generator[Message, None, int]:
    batches, dataset, _ = source
    patches = len(batches if batches is not None else dataset)
    batch_size, world = min(config.batch_size, patches), distributed.world_size()
    if batch_size < config.batch_size:
        yield Message(f"--batch-size {config.batch_size} is larger than the {patches} patches an epoch "
                      f"holds; using {batch_size}", "warning")
    if world > 1:  # --batch-size is the global batch: each process takes its share
        batch_size = max(1, batch_size // world)
        yield Message(f"distributed training: {world} processes, {batch_size} patches each per batch")
    return batch_size


def _write_epoch(run: TrainingRun, run_dir: Path, improved: bool) -> Generator[Checkpoint, None, bool]:
    """Write the epoch's files (one process does); return whether ``curves.png`` was drawn."""
    if not distributed.is_main():
        return False
    yield from run.save(run_dir, improved)
    write_history(run_dir / "history.csv", run.history)
    every = run.config.curves_every
    if every and run.epoch % every == 0:
        plot_curves(run_dir / "curves.png", run.history)
        return True
    return False


def _setup(config: TrainConfig, run_dir: Path, resume: bool, initial_model, arrays, val_arrays, cancel,
           given: Sequence[str] = ()) -> Generator[Message, None, tuple[TrainingRun, list[ValPair], Any]]:
    """The run object (resumed, or from random or starting weights), its validation pairs (all of them, not
    this process's share) and batch source."""
    device = distributed.local_device(config.device)
    start = load_model(initial_model) if initial_model is not None else None
    stored = load_model(run_dir / "last.pt") if resume else None
    if start is not None:
        yield from _adopt_start(config, start)
    normalization = start.normalization if start else stored.normalization if stored else default_normalization(
        config.normalization)
    train_set, val_set, channels, messages = _load_data(config, normalization, arrays, val_arrays, start)
    yield from messages
    _check_channels(channels, start, stored, run_dir)
    yield Message(f"training on {describe_device(device)}")
    model = _build_model(config, start, stored, channels, normalization)
    patch = _patch(config, given, device, model.network, train_set)
    if config.spatial_dims == 3:
        model.config = {**config.to_dict(), "patch_shape": list(patch)}  # the patch used (predict's window)
        yield Message(f"3D patches of {'x'.join(map(str, patch))} voxels (Z x Y x X), spacing "
                      f"{', '.join(f'{v:g}' for v in config.spacing)}")
    if patch is not None and config.foreground_share() > 0:
        yield Message(f"{config.foreground_share():.0%} of the patches centred on foreground")
    run = TrainingRun(config, model, device)
    shard = val_set[distributed.rank()::distributed.world_size()]
    if resume:
        run.load_state_dict(read_run_state(run_dir / "last.pt"))
        yield Message(f"resuming {run_dir} after epoch {run.epoch}")
    elif start is not None:
        distributed.share_buffers(run.network)
        run.start_dice = (yield from validate_steps(run.model, shard, run.loss_fn, device=device,
                                                    cancel=cancel))["val_dice"]
        yield Message(f"starting model {start.name}: val Dice {run.start_dice:.4f} on the validation images")
    source = _batch_source(config, train_set, device, patch)
    run.batch_size = yield from _batch_size(config, source)
    if device.type == "cuda":  # patches of one shape: let cuDNN time and keep its fastest kernels
        torch.backends.cudnn.benchmark = True
    return run, val_set, source


def _run_epochs(run: TrainingRun, run_dir: Path, val_set, source, cancel) -> Generator[Any, None, str]:
    """The epochs left; returns the run's status."""
    config, plotted = run.config, 0
    status = "completed"
    for epoch in range(run.epoch + 1, config.epochs + 1):
        began = time.perf_counter()
        try:
            epoch_batches, count = _epoch_batches(run, source, epoch)
            row = {"epoch": epoch, "train_loss": (yield from _train_epoch(run, epoch_batches, count, epoch, cancel))}
            # Each process validates its share of the images; the sums are added across processes, so every
            # process gets the same metrics and makes the same best-model and early-stop decisions.
            distributed.share_buffers(run.network)
            run.network.eval()
            row.update((yield from validate_steps(run.model, val_set, run.loss_fn, device=run.device,
                                                  cancel=None if distributed.world_size() > 1 else cancel)))
        except JobCancelled:
            status = "cancelled"
            yield Message(f"cancelled during epoch {epoch}; the run's files hold epoch {epoch - 1}", "warning")
            break
        row["seconds"] = time.perf_counter() - began
        improved = run.end_epoch(row)
        plotted = epoch if (yield from _write_epoch(run, run_dir, improved)) else plotted
        yield Epoch(epoch, config.epochs, dict(row))
        if run.stop_early:
            status = "early_stopped"
            yield Message(f"early stop: no better validation Dice for {run.waited} epochs")
            break
    if run.history and plotted != run.history[-1]["epoch"] and distributed.is_main():
        plot_curves(run_dir / "curves.png", run.history)
    return status


def _choose_postprocessing(run: TrainingRun, best: Path, val_set: Sequence[ValPair], cancel
                           ) -> Generator[Message, None, None]:
    """Choose the best model's threshold and post-processing on the validation images (:mod:`.tuning`) and
    store them in ``best.pt``; a cancel leaves ``best.pt`` as it was."""
    from .tuning import choose_postprocessing_steps, describe_postprocessing

    if not best.exists() or not val_set:
        return
    model = load_model(best)
    proposed = run.config.extra.get("plan", {}).get("proposals", {}).get("postprocess", [])
    yield Message(f"choosing the threshold and post-processing on {len(val_set)} validation image(s)")
    try:
        model.postprocess = yield from choose_postprocessing_steps(
            model, val_set, device=str(run.device), keep_largest="keep_largest" in proposed, cancel=cancel)
    except JobCancelled:
        yield Message("cancelled while choosing the post-processing: best.pt keeps threshold 0.5 and none",
                      "warning")
        return
    save_model(best, model)
    yield Message(f"post-processing stored in best.pt: {describe_postprocessing(model.postprocess)}")


def _result(run: TrainingRun, run_dir: Path, status: str) -> tuple[TrainResult, list[Message]]:
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    best_row = next((r for r in run.history if r["epoch"] == run.best_epoch), {})
    result = TrainResult(run_dir, best_path if best_path.exists() else None,
                         last_path if last_path.exists() else None, run.history, run.best_epoch, best_row, status,
                         run.start_dice)
    messages = []
    if run.start_dice is not None and best_row and best_row["val_dice"] < run.start_dice:
        parent = run.model.info.get("parent", {})
        messages.append(Message(f"the fine-tuned model is worse than the one it started from "
                                f"({parent.get('name') or parent.get('path')}): best val Dice "
                                f"{best_row['val_dice']:.4f} < {run.start_dice:.4f} on the same validation "
                                "images; keep using the starting model", "warning"))
    return result, messages


def train_steps(config: TrainConfig | None = None, *, arrays=None, val_arrays=None, resume: bool = False,
                initial_model: SegmentationModel | str | None = None, cancel: Any = None,
                **options: Any) -> Generator[Batch | Epoch | Checkpoint | Message, None, TrainResult]:
    """Train a model, yielding events; return a :class:`TrainResult`.

    Args:
        config: the job; keyword ``options`` override its fields (``epochs=5``, ``model="segnet"``, ...).
        arrays: ``[(image, labels), ...]`` in memory instead of ``config.images``/``config.masks``.
        val_arrays: validation pairs in memory (else split off by ``val_fraction``).
        resume: continue the run in ``config.out`` from its ``last.pt``; the settings given (the
            ``options``, and the fields of ``config`` that differ from the defaults) may change epochs, lr,
            early stop, ... but not those of :data:`~napari_unet_seg.training_run.FIXED_ON_RESUME`.
        initial_model: start from this model's weights (fine-tuning) instead of random ones.
        cancel: a ``threading.Event`` (or callable) that stops the run between batches.
    """
    distributed.check_joined()
    TrainConfig.check_options(options, "train")
    values = {**(config.to_dict() if config else {}), **options}
    default = TrainConfig().to_dict()
    given = [k for k, v in values.items() if k in options or (k in default and v != default[k])]
    start = getattr(initial_model, "path", initial_model)  # a model object, a file or a shipped name
    with removed_if_left_empty(values.get("out", TrainConfig.out)) if distributed.is_main() else nullcontext():
        result, messages = yield from _train_in(values, resume, given, start, initial_model, arrays, val_arrays,
                                                cancel)
    yield from messages
    return result


def _train_in(values: dict, resume: bool, given: list[str], start, initial_model, arrays, val_arrays, cancel):
    """:func:`train_steps` once its options are merged: the run folder prepared, locked and trained in."""
    config, run_dir = distributed.on_main(_prepare_run, values, resume, given, start)
    with run_lock(run_dir) if distributed.is_main() else nullcontext():
        if distributed.is_main():
            clean_stale_files(run_dir, RUN_FILES)
        run, val_set, source = yield from _setup(config, run_dir, resume, initial_model, arrays, val_arrays, cancel,
                                                 given)
        shard = val_set[distributed.rank()::distributed.world_size()]
        with retained_heap(run.device.type == "cpu"):
            status = yield from _run_epochs(run, run_dir, shard, source, cancel)
        if distributed.is_main() and status != "cancelled":
            yield from _choose_postprocessing(run, run_dir / "best.pt", val_set, cancel)
        distributed.barrier()  # the files are written before any process reports them
    return _result(run, run_dir, status)


def train(config: TrainConfig | None = None, *, on_event=None, **options: Any) -> TrainResult:
    """Train a U-Net/SegNet on folders of image/mask pairs (or arrays); see :func:`train_steps`.

    Example:
        >>> result = train(images="data/images", masks="data/masks", out="runs/em", epochs=20)  # doctest: +SKIP
        >>> result.best_metrics["val_dice"]                                                    # doctest: +SKIP
    """
    return drain(train_steps(config, **options), on_event)
