"""Training: ``train_steps`` is a generator of progress events that returns a :class:`TrainResult`.

``train`` drains it (the CLI and the console use that); the Train widget runs the generator in a
worker thread. Each epoch writes ``history.csv``, ``curves.png``, ``last.pt`` (resumable) and, when
validation Dice improves, ``best.pt``. Cancelling stops between batches: the files then hold the last
completed epoch. Every epoch's randomness derives from ``(seed, epoch)``, so a resumed run repeats an
uninterrupted one. Under torchrun (see :mod:`.distributed` and docs/distributed.md) the processes train
one model with DistributedDataParallel; ``batch_size`` is then the batch of all processes together.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .config import TrainConfig
from .dataset import PatchDataset, Sample, build_augmentation, load_samples, samples_from_arrays, split_indices
from .device_batches import DeviceBatches, fits_on_device
from .device import free_cuda_memory, is_out_of_memory, resolve_device
from .errors import JobCancelled, UserError, is_cancelled
from .events import Batch, Checkpoint, Epoch, Message, drain
from .losses import build_loss
from .metrics import segmentation_metrics
from .model_file import (SegmentationModel, _out_channels, load_model, load_training_state, read_metadata,
                         save_model)
from .models import build_network, network_kwargs
from .normalization import default_normalization
from .pairing import pair_files
from .reporting import plot_curves, write_history

__all__ = ["TrainResult", "train", "train_steps", "RUN_FILES"]

#: Files a run folder holds; an existing folder with any of them is not overwritten without permission.
RUN_FILES = ("best.pt", "last.pt", "history.csv", "curves.png")


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    best: Path | None
    last: Path | None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    status: str = "completed"  # completed | cancelled | early_stopped


def _prepare_run_dir(config: TrainConfig, resume: bool) -> Path:
    run = Path(config.out)
    if run.exists() and not run.is_dir():
        raise UserError(f"--out {run}: is a file; give a folder for the run")
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


def _prepare_run(values: dict, resume: bool) -> tuple[TrainConfig, Path]:
    """The job's checked settings and its (created) run folder; under torchrun rank 0 alone runs this."""
    if resume:  # the stored run's settings, overridden by what is given now (e.g. more epochs)
        out = Path(values.get("out", TrainConfig.out))
        values = {**read_metadata(out / "last.pt").get("config", {}), **values}
    config = TrainConfig.from_dict(values)
    config.validate()
    resolve_device(config.device)
    world = distributed.world_size()
    if config.batch_size < world:
        raise UserError(f"--batch-size {config.batch_size} is the batch of all {world} processes together; "
                        f"give at least {world} (one patch each)")
    return config, _prepare_run_dir(config, resume)


def _load_data(config: TrainConfig, normalization: dict, arrays, val_arrays
               ) -> tuple[list[Sample], list[Sample], int, list[Message]]:
    messages = []
    common = {"classes": config.classes, "normalization": normalization, "resize": config.resize}
    if arrays is not None:
        samples, channels = samples_from_arrays(arrays, **common)
    else:
        if not config.images or not config.masks:
            raise UserError("give the training data: --images DIR and --masks DIR")
        pairs = pair_files(config.images, config.masks, skip_unpaired=config.skip_unpaired)
        messages.append(Message(f"found {len(pairs)} image/mask pairs in {config.images}"))
        samples, channels = load_samples(pairs, **common)
    if val_arrays is not None:
        val, _ = samples_from_arrays(val_arrays, in_channels=channels, **common)
        train = samples
    elif config.val_images:
        val_pairs = pair_files(config.val_images, config.val_masks, skip_unpaired=config.skip_unpaired)
        val, _ = load_samples(val_pairs, in_channels=channels, **common)
        train = samples
    else:
        train_idx, val_idx = split_indices(len(samples), config.val_fraction, config.seed)
        train, val = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
        if not val:
            messages.append(Message("no validation set (--val-fraction 0): best.pt is chosen on the training "
                                    "images", "warning"))
            val = train
        elif val_idx == train_idx:
            messages.append(Message("only one pair: it serves for training and validation", "warning"))
    if all(not s.mask.any() for s in samples):
        messages.append(Message("every mask is all background: there is nothing to learn; check the masks "
                                "folder (foreground must be > 0)", "warning"))
    if config.resize is None and all(max(s.mask.shape) < config.patch_size for s in samples):
        messages.append(Message(f"--patch-size {config.patch_size} is larger than every image; patches are "
                                "zero-padded (a smaller --patch-size trains faster)", "warning"))
    return train, val, channels, messages


def _optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr * 0.01)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5)
    return None


def _seed_worker(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which cancels the run
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


def _batch_source(config: TrainConfig, samples: list[Sample], device: torch.device
                  ) -> tuple[DeviceBatches | None, PatchDataset | None, Any]:
    """``(device batches, None, None)``: batches cut and augmented on the device from the cached images;
    or ``(None, dataset, sampler)`` for a DataLoader (MONAI transforms per patch) when ``--workers`` asks
    for worker processes or the images would take too much GPU memory (sampler: None when alone)."""
    patch = None if config.resize else config.patch_size
    if config.workers == 0 and fits_on_device(samples, device):
        return DeviceBatches(samples, patch, config.augment, device), None, None
    dataset = PatchDataset(samples, patch, build_augmentation(config.augment, config.resize or patch), config.seed)
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


def validate(network: torch.nn.Module, samples: Sequence[Sample], loss_fn, *, num_classes: int, tile: int,
             device: torch.device, amp: bool, cancel: Any = None, batch_size: int = 4,
             on_out_of_memory=None) -> dict:
    """Loss and mean per-image metrics of ``network`` on whole validation images (tiled).

    ``on_out_of_memory(new_batch_size)`` is told when the tile batch had to be lowered. In distributed
    training each process passes its share of the images; the means are over all of them.
    """
    from .inference import labels_from_probabilities, probabilities

    def lower(size: int) -> None:
        nonlocal batch_size
        batch_size = size
        if on_out_of_memory is not None:
            on_out_of_memory(size)

    network.eval()
    totals = {"count": 0.0, "val_loss": 0.0, "val_dice": 0.0, "val_iou": 0.0, "val_accuracy": 0.0}
    for sample in samples:
        image = torch.from_numpy(sample.image.astype(np.float32)).to(device)
        logits = probabilities(network, image, num_classes=num_classes, tile=tile, overlap=0.25,
                               precision="auto" if amp else "fp32", raw=True, cancel=cancel,
                               batch_size=batch_size, on_out_of_memory=lower)
        target = torch.from_numpy(sample.mask).to(device)[None, None].float()
        probs = torch.sigmoid(logits) if num_classes == 2 else torch.softmax(logits, dim=0)
        labels = labels_from_probabilities(probs, num_classes).cpu().numpy()
        scores = segmentation_metrics(labels, sample.mask, num_classes)
        totals["count"] += 1
        totals["val_loss"] += float(loss_fn(logits[None], target))
        for name in ("dice", "iou", "accuracy"):
            totals[f"val_{name}"] += scores[name]
    totals = distributed.sum_across(totals)
    count = totals.pop("count")
    return {name: value / count if count else float("nan") for name, value in totals.items()}


def train_steps(config: TrainConfig | None = None, *, arrays=None, val_arrays=None, resume: bool = False,
                initial_model: SegmentationModel | str | None = None, cancel: Any = None,
                **options: Any) -> Generator[Batch | Epoch | Checkpoint | Message, None, TrainResult]:
    """Train a model, yielding events; return a :class:`TrainResult`.

    Args:
        config: the job; keyword ``options`` override its fields (``epochs=5``, ``model="segnet"``, ...).
        arrays: ``[(image, labels), ...]`` in memory instead of ``config.images``/``config.masks``.
        val_arrays: validation pairs in memory (else split off by ``val_fraction``).
        resume: continue the run in ``config.out`` from its ``last.pt``.
        initial_model: start from this model's weights (fine-tuning) instead of random ones.
        cancel: a ``threading.Event`` (or callable) that stops the run between batches.
    """
    distributed.check_joined()
    values = {**(config.to_dict() if config else {}), **options}
    config, run = distributed.on_main(_prepare_run, values, resume)
    device = distributed.local_device(config.device)
    world, rank = distributed.world_size(), distributed.rank()
    start = load_model(initial_model) if initial_model is not None else None
    if start is not None:  # a fine-tuned model keeps the architecture and classes of the one it starts from
        if config.classes != start.num_classes:
            yield Message(f"the model to fine-tune has {start.num_classes} classes: training with "
                          f"{start.num_classes}, not {config.classes}", "warning")
        config.model, config.classes = start.architecture["name"], start.num_classes
        config.width = float(start.config.get("width", config.width))
    normalization = start.normalization if start else default_normalization(config.normalization)
    train_set, val_set, channels, messages = _load_data(config, normalization, arrays, val_arrays)
    yield from messages
    if start and start.in_channels != channels:
        raise UserError(f"the model to fine-tune takes {start.in_channels} channel(s) but the images have "
                        f"{channels}; pick a matching model")
    arch = start.architecture if start else {"name": config.model,
                                             "kwargs": network_kwargs(config.model, width=config.width)}
    torch.manual_seed(config.seed)
    network = build_network(arch["name"], channels, _out_channels(config.classes), **arch["kwargs"])
    if start:
        network.load_state_dict(start.network.state_dict())
    network.to(device)
    network, trained = distributed.wrap(network, device)  # trained: the DDP wrapper when distributed
    loss_fn = build_loss(config.loss, config.classes).to(device)
    optimizer = _optimizer(config, network.parameters())
    scheduler = _scheduler(config, optimizer)
    use_amp = config.amp and device.type == "cuda"
    if device.type == "cuda":  # patches of one shape: let cuDNN time and keep its fastest kernels
        torch.backends.cudnn.benchmark = True
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model = SegmentationModel(network, arch, channels, config.classes, normalization, config.to_dict())
    history: list[dict] = []
    first_epoch, best_score, best_epoch = 1, -math.inf, 0
    if resume:
        state = load_training_state(run / "last.pt")
        network.load_state_dict(load_model(run / "last.pt").network.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        history = [dict(row) for row in state["history"]]
        first_epoch, best_score, best_epoch = int(state["epoch"]) + 1, float(state["best_score"]), int(
            state["best_epoch"])
        yield Message(f"resuming {run} after epoch {first_epoch - 1}")
    batches, dataset, sampler = _batch_source(config, train_set, device)
    patches = len(batches if batches is not None else dataset)
    batch_size = min(config.batch_size, patches)
    if batch_size < config.batch_size:
        yield Message(f"--batch-size {config.batch_size} is larger than the {patches} patches an epoch "
                      f"holds; using {batch_size}", "warning")
    if world > 1:  # --batch-size is the global batch: each process takes its share
        batch_size = max(1, batch_size // world)
        yield Message(f"distributed training: {world} processes, {batch_size} patches each per batch")
    tile = config.resize or config.patch_size
    tile = max(16, tile)

    def step(images: torch.Tensor, masks: torch.Tensor) -> float:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = trained(images)
        loss = loss_fn(logits.float(), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    val_batch_size, lowered = 4, []
    status, waited, plotted = "completed", 0, 0
    best_path, last_path = run / "best.pt", run / "last.pt"
    for epoch in range(first_epoch, config.epochs + 1):
        began = time.perf_counter()
        seed = config.seed * 100003 + epoch  # each epoch's randomness derives from (seed, epoch, rank)
        torch.manual_seed(seed)
        if batches is not None:
            epoch_batches, count = batches.epoch(batch_size, seed, rank, world), batches.batch_count(batch_size, world)
        else:
            epoch_batches = _loader(dataset, sampler, batch_size, seed * world + rank, epoch, config.workers, device)
            count = len(epoch_batches)
        trained.train()
        losses = []
        try:
            for index, (images, masks) in enumerate(epoch_batches, start=1):
                if distributed.any_rank(is_cancelled(cancel)):  # all processes stop at the same batch
                    raise JobCancelled()
                # After running out of GPU memory, the loader's batches are done in parts of batch_size.
                done, parts = 0, []
                while done < len(images):
                    part = slice(done, done + batch_size)
                    try:
                        parts.append(step(images[part], masks[part]))
                        done = part.stop
                        continue
                    except RuntimeError as error:
                        if not is_out_of_memory(error):
                            raise
                        if batch_size == 1:
                            raise UserError("out of GPU memory even with batch size 1; use a smaller --patch-size "
                                            "or --width, or --device cpu") from None
                        if world > 1:  # the processes would have to agree on a new batch size: stop instead
                            raise UserError(f"out of GPU memory with {batch_size} patches per GPU; give a smaller "
                                            "--batch-size (the batch of all GPUs together) or --patch-size") from None
                    # Out of the except block, the failed step's tensors are released; redo that part.
                    batch_size //= 2
                    free_cuda_memory()
                    yield Message(f"out of GPU memory: batch size lowered to {batch_size} for the rest of the run",
                                  "warning")
                losses.append(float(np.mean(parts)))
                yield Batch(epoch, index, count, losses[-1])
            # Every process has as many batches: the mean of their means is the mean over all batches.
            mean_loss = distributed.sum_across({"loss": float(np.mean(losses))})["loss"] / world
            row = {"epoch": epoch, "train_loss": mean_loss}
            # Each process validates its share of the images; the sums are added across processes, so every
            # process gets the same metrics and makes the same best-model and early-stop decisions.
            distributed.share_buffers(network)
            row.update(validate(network, val_set[rank::world], loss_fn, num_classes=config.classes, tile=tile,
                                device=device, amp=use_amp, cancel=None if world > 1 else cancel,
                                batch_size=val_batch_size, on_out_of_memory=lowered.append))
        except JobCancelled:
            status = "cancelled"
            yield Message(f"cancelled during epoch {epoch}; the run's files hold epoch {epoch - 1}", "warning")
            break
        if lowered:
            val_batch_size = lowered[-1]
            yield Message(f"out of GPU memory while validating: tile batch size lowered to {val_batch_size}",
                          "warning")
            lowered.clear()
        row["lr"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step(row["val_dice"]) if config.scheduler == "plateau" else scheduler.step()
        row["seconds"] = time.perf_counter() - began
        history.append(row)
        improved = row["val_dice"] > best_score
        if improved:
            best_score, best_epoch, waited = row["val_dice"], epoch, 0
        else:
            waited += 1
        model.metrics = {k: row[k] for k in ("val_dice", "val_iou", "val_accuracy", "val_loss")} | {"epoch": epoch}
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else {},
                 "epoch": epoch, "history": history, "best_score": best_score, "best_epoch": best_epoch}
        if distributed.is_main():  # one process writes the run's files
            if improved:
                save_model(best_path, model)
                yield Checkpoint(best_path, "best", epoch)
            save_model(last_path, model, training_state=state)
            yield Checkpoint(last_path, "last", epoch)
            write_history(run / "history.csv", history)
            if config.curves_every and epoch % config.curves_every == 0:
                plot_curves(run / "curves.png", history)
                plotted = epoch
        yield Epoch(epoch, config.epochs, dict(row))
        if config.early_stop and waited >= config.early_stop:
            status = "early_stopped"
            yield Message(f"early stop: no better validation Dice for {waited} epochs")
            break
    if history and plotted != history[-1]["epoch"] and distributed.is_main():
        plot_curves(run / "curves.png", history)
    distributed.barrier()  # the files are written before any process reports them
    best_row = next((r for r in history if r["epoch"] == best_epoch), {})
    return TrainResult(run, best_path if best_path.exists() else None, last_path if last_path.exists() else None,
                       history, best_epoch, best_row, status)


def train(config: TrainConfig | None = None, *, on_event=None, **options: Any) -> TrainResult:
    """Train a U-Net/SegNet on folders of image/mask pairs (or arrays); see :func:`train_steps`.

    Example:
        >>> result = train(images="data/images", masks="data/masks", out="runs/em", epochs=20)  # doctest: +SKIP
        >>> result.best_metrics["val_dice"]                                                    # doctest: +SKIP
    """
    return drain(train_steps(config, **options), on_event)
