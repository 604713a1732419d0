"""The training job's settings: one object, validated up front, saved inside every model file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import UserError

__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULERS", "AUGMENTS"]

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "plateau")
AUGMENTS = ("none", "light", "strong")


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the CLI options and the Train widget map onto these fields.

    ``images``/``masks`` are folders of pairs. ``patch_size`` trains on random patches; ``resize``
    (when set) trains on whole images resized to ``resize x resize`` instead. ``curves_every``: redraw
    ``curves.png`` every N epochs (0: only at the end; the Train widget draws its own plot).
    """

    images: str | None = None
    masks: str | None = None
    out: str = "runs/run"
    model: str = "unet"
    width: float = 1.0
    loss: str = "dicece"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 50
    batch_size: int = 8
    workers: int = 0
    scheduler: str = "cosine"
    early_stop: int = 0
    seed: int = 0
    device: str = "auto"
    classes: int = 2
    patch_size: int = 256
    resize: int | None = None
    val_fraction: float = 0.1
    val_images: str | None = None
    val_masks: str | None = None
    augment: str = "light"
    normalization: str = "percentile"
    skip_unpaired: bool = False
    overwrite: bool = False
    amp: bool = True
    curves_every: int = 1
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check every value; raise :class:`UserError` naming the first bad one. Returns ``self``."""
        from .models import MODEL_NAMES
        from .losses import LOSS_NAMES
        from .normalization import NORMALIZATIONS

        choices = {"model": MODEL_NAMES, "loss": LOSS_NAMES, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
                   "augment": AUGMENTS, "normalization": NORMALIZATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is unknown; "
                                f"use one of {', '.join(allowed)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "width": self.width,
                    "patch_size": self.patch_size}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.resize is not None and self.resize < 8:
            raise UserError(f"--resize must be at least 8 pixels, got {self.resize}")
        if self.patch_size < 8:
            raise UserError(f"--patch-size must be at least 8 pixels, got {self.patch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.classes < 2 or self.classes > 255:
            raise UserError(f"--classes must be between 2 (binary) and 255, got {self.classes}")
        if self.workers < 0 or self.early_stop < 0 or self.weight_decay < 0 or self.curves_every < 0:
            raise UserError("--workers, --early-stop and --weight-decay must be >= 0")
        if (self.val_images is None) != (self.val_masks is None):
            raise UserError("give both --val-images and --val-masks, or neither")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_command(self) -> str:
        """The ``napari-unet-seg train`` command line of these settings (the options that differ from the
        defaults), e.g. to repeat a run that a sweep or the Train widget made."""
        import shlex

        default = TrainConfig()
        words = ["napari-unet-seg", "train"]
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if name in ("command", "extra", "curves_every") or value == getattr(default, name):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else "--no-amp" if name == "amp" else "")
            else:
                words += [flag, str(value)]
        return shlex.join(w for w in words if w)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know (older/newer model files)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
