"""One training run as an object: network, optimizer, schedule, GradScaler, early stop, RNG, history, best.

``TrainingRun.state_dict()`` is exactly what ``last.pt`` holds (the network as the file's weights, the
rest as its training state; :func:`read_run_state` reads it back), so a resumed run is the run it claims
to be. Resuming applies the settings that can change (:data:`CHANGEABLE`: epochs, lr, weight decay,
early stop, batch size, ...) and refuses the others (:data:`FIXED_ON_RESUME`) in one line.

The learning-rate schedule is a closed form of the epoch and of the *current* ``epochs`` and ``lr``:
a run extended from 2 to 4 epochs follows, from epoch 3 on, the schedule of a fresh 4-epoch run
(cosine: ``lr * (0.01 + 0.99 * (1 + cos(pi * e / epochs)) / 2)`` for the ``e``-th epoch, 0-based).
``plateau`` keeps the reductions made so far (as a factor of the new ``lr``).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import TrainConfig
from .errors import UserError
from .events import Checkpoint
from .fusion import channels_last_format
from .losses import build_loss
from .model_file import SegmentationModel, load_model, load_training_state, save_model

__all__ = ["TrainingRun", "read_run_state", "check_resume_settings", "FIXED_ON_RESUME", "cosine_factor"]

#: Settings a resumed run must keep (they define the network, its inputs or the validation split).
FIXED_ON_RESUME = ("model", "width", "spatial_dims", "spacing", "classes", "optimizer", "scheduler", "normalization",
                   "resize", "seed", "val_fraction")
#: Settings never compared on resume (where files go, how fast, what is printed).
_IGNORED = ("out", "command", "extra", "overwrite")


def cosine_factor(epoch: int, epochs: int) -> float:
    """The cosine schedule's share of ``lr`` for the 0-based ``epoch`` of a run of ``epochs`` (1 ... 0.01)."""
    return 0.01 + 0.99 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2


def check_resume_settings(stored: dict, given: dict, out: Path) -> None:
    """Refuse, in one line, a resume whose ``given`` settings change one of :data:`FIXED_ON_RESUME`."""
    for name in FIXED_ON_RESUME:
        if name in given and name in stored and given[name] != stored[name]:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {given[name]}: the run in {out} was trained with {flag} {stored[name]}, "
                            "which cannot change on --resume; start a new run (another --out), or fine-tune "
                            "from its best.pt")


def _grad_scaler(enabled: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=enabled)


def training_precision(device: torch.device, amp: bool) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, channels-last)`` of training steps on ``device``: float16 autocast on CUDA
    with ``amp`` (and a GradScaler); channels-last float32 on the CPU. bfloat16 autocast is not used for
    training on the CPU, though faster where native: on synthetic volumes at lr 0.03 its loss turned NaN
    where float32 converged, and it is not reproducible run to run, so a resumed run would not be the run
    it claims to be (``benchmarks/bench_train.py --precision`` measures all three)."""
    if device.type == "cuda":
        return (torch.float16 if amp else None), False
    return None, device.type == "cpu"


def _optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


class TrainingRun:
    """The state of one run and its steps: ``train_step`` per batch, ``end_epoch`` per epoch, ``save``."""

    def __init__(self, config: TrainConfig, model: SegmentationModel, device: torch.device, *,
                 alone: bool = False) -> None:
        """``alone``: this process's steps only, never wrapped for distributed training (timing a plan's
        steps on rank 0 while the other processes wait)."""
        self.config, self.model, self.device = config, model, device
        self.autocast, channels_last = training_precision(device, config.amp)
        network = model.network.to(device)
        self.memory_format = channels_last_format(network) if channels_last else None
        if self.memory_format is not None:
            network = network.to(memory_format=self.memory_format)
        # network: the module validated and saved; trained: the one trained (a DDP wrapper when distributed)
        self.network, self.trained = (network, network) if alone else distributed.wrap(network, device)
        model.network = self.network
        self.batch_size = config.batch_size  # halved for the rest of the run when the GPU runs out of memory
        self.loss_fn = build_loss(config.loss, config.classes).to(device)
        self.optimizer = _optimizer(config, self.network.parameters())
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.5, patience=5)
                        if config.scheduler == "plateau" else None)
        self.scaler = _grad_scaler(self.autocast == torch.float16)
        self.epoch, self.history, self.waited = 0, [], 0
        self.best_score, self.best_epoch = -math.inf, 0
        self.start_dice: float | None = None
        self._apply_settings(lr_factor=1.0)

    # -- the schedule -------------------------------------------------------------------------------
    def _apply_settings(self, lr_factor: float) -> None:
        """Set each group's lr for the next epoch (``self.epoch + 1``) and the current weight decay."""
        if self.config.scheduler == "cosine":
            lr_factor = cosine_factor(self.epoch, self.config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = self.config.lr * lr_factor, self.config.weight_decay

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- per batch and per epoch --------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        """One optimizer step on a batch; returns its loss."""
        images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
        if self.memory_format is not None:
            images = images.contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            logits = self.trained(images)
        loss = self.loss_fn(logits.float(), masks)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def end_epoch(self, row: dict) -> bool:
        """Record the finished epoch's ``row`` (its lr added), step the schedule; True when Dice improved."""
        self.epoch = int(row["epoch"])
        row["lr"] = self.lr
        self.history.append(row)
        if self.plateau is not None:
            self.plateau.step(row["val_dice"])
        else:
            self._apply_settings(lr_factor=1.0)
        improved = row["val_dice"] > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.waited = row["val_dice"], self.epoch, 0
        else:
            self.waited += 1
        self.model.metrics = {k: row[k] for k in ("val_dice", "val_iou", "val_accuracy", "val_loss")} | {
            "epoch": self.epoch}
        return improved

    @property
    def stop_early(self) -> bool:
        return bool(self.config.early_stop) and self.waited >= self.config.early_stop

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the run is: ``network`` (weights) and the training state that ``last.pt`` holds."""
        return {"network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
                **self._training_state()}

    def _training_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.plateau.state_dict() if self.plateau is not None else {},
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "history": [dict(r) for r in self.history],
                "best_score": self.best_score, "best_epoch": self.best_epoch, "waited": self.waited,
                "base_lr": self.config.lr, "start_dice": self.start_dice,
                "rng": {"torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (see :meth:`state_dict`), with this run's (possibly changed) settings."""
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.plateau is not None and state.get("scheduler"):
            self.plateau.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), [dict(r) for r in state["history"]]
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.waited, self.start_dice = int(state.get("waited", 0)), state.get("start_dice")
        if "rng" in state:
            torch.set_rng_state(state["rng"]["torch"])
        stored_lr = float(state.get("base_lr", self.config.lr))
        self._apply_settings(lr_factor=self.lr / stored_lr)  # plateau: the reductions so far

    def save(self, run_dir: Path, improved: bool) -> Generator[Checkpoint, None, None]:
        """Write ``best.pt`` (when ``improved``) and ``last.pt`` (the whole state); yield a Checkpoint each."""
        if improved:
            yield Checkpoint(save_model(run_dir / "best.pt", self.model), "best", self.epoch)
        path = save_model(run_dir / "last.pt", self.model, training_state=self._training_state())
        yield Checkpoint(path, "last", self.epoch)


def read_run_state(path: str | Path) -> dict[str, Any]:
    """The state a ``last.pt`` holds, in the form of :meth:`TrainingRun.state_dict`."""
    return {"network": load_model(path).network.state_dict(), **load_training_state(path)}
