"""How long training takes here: a few real training steps of the planned network, timed on the device.

A plan's epochs fill a time budget, so it needs the time of an epoch. A fixed cost per pixel measured on one
data set misses by up to 10x elsewhere: thin 3D patches (6 x 64 x 64 voxels) pay a per-step overhead that
dominates their few voxels, and another CPU or a GPU runs at its own speed. So the plan times the steps it
will run: the same network, batch, patch shape, augmentation and precision, through the same
:class:`~napari_unet_seg.training_run.TrainingRun` and :class:`~napari_unet_seg.device_batches.DeviceBatches`
as training, inside the CPU's kept heap (one warm-up step, then the median of a few).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["StepTime", "time_training_steps"]


@dataclass(frozen=True)
class StepTime:
    """``step``: seconds per optimizer step on one batch (batches cut and augmented as training does);
    ``forward``: seconds per voxel of the network's forward pass without gradients. Validation predicts
    whole images at about that rate: its fused network on large windows makes up for their overlap (a
    165x384x512 Lucchi volume: 3.5 s predicted, 3.8 s estimated; docs/performance.md)."""

    step: float
    forward: float

    def epoch(self, steps: int, val_voxels: float) -> float:
        """Seconds of an epoch of ``steps`` batches and a validation of ``val_voxels`` voxels."""
        return steps * self.step + val_voxels * self.forward


def _batches(config, shape: tuple[int, ...], channels: int, device: torch.device):
    """Endless batches of ``config.batch_size`` random patches of ``shape`` with a disc or ball of
    foreground, cut and augmented on ``device`` by the training's own :class:`DeviceBatches`."""
    from .dataset import Sample
    from .device_batches import DeviceBatches

    rng = np.random.default_rng(0)
    grid = np.indices(shape, dtype=np.float32)
    radius = min(shape) / 3
    ball = sum((g - s / 2) ** 2 for g, s in zip(grid, shape)) < radius**2
    samples = [Sample(f"timing{k}", rng.random((channels, *shape), dtype=np.float32).astype(np.float16),
                      ball.astype(np.uint8)) for k in range(config.batch_size)]
    spacing = config.spacing if config.spatial_dims == 3 else None
    source = DeviceBatches(samples, shape, config.augment, device, spacing=spacing)
    seed = 0
    while True:
        yield from source.epoch(config.batch_size, seed)
        seed += 1


def time_training_steps(config, shape: tuple[int, ...], channels: int, repeats: int = 3) -> StepTime:
    """Time the training steps ``config`` (model, width, dimensions, spacing, classes, batch size, device,
    precision, augmentation) would run on patches of ``shape``, and a forward pass of one batch.

    Raises:
        RuntimeError: what the step raises (out of memory, an unsupported operation); the caller falls back.
    """
    from .device import resolve_device
    from .heap import retained_heap
    from .training import _build_model
    from .training_run import TrainingRun

    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):  # the run's own seed and random streams stay untouched
        run = TrainingRun(config, _build_model(config, None, None, channels, {}), device, alone=True)
        with retained_heap(device.type == "cpu"):
            batches = _batches(config, shape, channels, device)
            times = [_timed(lambda: run.train_step(*next(batches)), device) for _ in range(repeats + 1)][1:]
            run.network.eval()
            images = next(batches)[0]
            with torch.no_grad():
                forward = _timed(lambda: run.network(images), device)
    return StepTime(statistics.median(times), forward / images[:, 0].numel())


def _timed(call, device: torch.device) -> float:
    """Seconds ``call`` takes, the device's queued work included."""
    _synchronize(device)
    began = time.perf_counter()
    call()
    _synchronize(device)
    return time.perf_counter() - began


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
