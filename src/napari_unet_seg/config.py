"""The settings of every job, checked in one place: the choice lists, the rule of each value, and the
training job's :class:`TrainConfig` (saved inside every model file).

The CLI's choices, sweep files, the Python API and the widgets all read the lists and rules from here;
a bad value raises :class:`~napari_unet_seg.errors.UserError` in one line that names it. This module
imports nothing heavy (no torch), so the parser and sweep files use it at once.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import UserError

__all__ = ["TrainConfig", "Rule", "TRAIN_RULES", "MODELS", "LOSSES", "OPTIMIZERS", "SCHEDULERS", "AUGMENTS",
           "NORMALIZATIONS", "DEVICES", "PRECISIONS", "INSTANCES", "EXPORT_FORMATS", "SPATIAL_DIMS", "check_value",
           "check_keywords", "shown"]

MODELS = ("unet", "basic_unet", "attention_unet", "segnet")
LOSSES = ("bce", "dice", "dicece", "softbce", "focal", "ce")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "plateau")
AUGMENTS = ("none", "light", "strong")
NORMALIZATIONS = ("percentile", "minmax", "none")
#: Device names (``cuda:N`` picks one GPU).
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
INSTANCES = ("none", "components", "watershed")
EXPORT_FORMATS = ("torchscript", "onnx", "bioimageio")
#: ``auto`` picks 2D slices or 3D volumes from the data (:mod:`~napari_unet_seg.planning`).
SPATIAL_DIMS = ("auto", "2", "3")

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


def shown(value: Any) -> str:
    """``repr(value)`` cut to at most 80 characters (a value in an error message stays one short line)."""
    text = " ".join(_SHOWN.repr(value).split())  # an array's repr spans lines
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Rule:
    """How one setting is checked. ``kind``: ``int``, ``float``, ``flag``, ``text``, ``choice``, ``path``,
    ``device``, ``dims`` (``auto``, 2 or 3), ``spacing`` (2 or 3 positive numbers), ``mapping`` or ``any``; ``low``/``high`` are inclusive bounds, ``above``/``below`` exclusive
    ones; ``optional``: None is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False
    unit: str = ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bounds(rule: Rule) -> str:
    low = f"[{_num(rule.low)}" if rule.low is not None else f"({_num(rule.above)}" if rule.above is not None else ""
    high = f"{_num(rule.high)}]" if rule.high is not None else f"{_num(rule.below)})" if rule.below is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        text = f">= {_num(rule.low)}" if rule.low is not None else f"> {_num(rule.above)}"
        return text + (f" {rule.unit}" if rule.unit else "")
    return f"<= {_num(rule.high)}" if rule.high is not None else f"< {_num(rule.below)}"


def _in_range(value: float, rule: Rule) -> bool:
    return ((rule.low is None or value >= rule.low) and (rule.high is None or value <= rule.high)
            and (rule.above is None or value > rule.above) and (rule.below is None or value < rule.below))


def check_value(label: str, value: Any, rule: Rule) -> Any:
    """``value`` checked against ``rule`` (and normalized: ``2.0`` -> ``2`` for whole numbers, paths -> str).

    Raises:
        UserError: ``<label> must be ...`` or ``<label> 'x' is unknown; use one of ...``.
    """
    if value is None:
        if rule.optional or rule.kind == "any":
            return None
        raise UserError(f"{label} needs a value")
    kind = rule.kind
    if kind == "flag":
        if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
            return bool(value)
        raise UserError(f"{label} must be true or false, got {shown(value)}")
    if kind in ("int", "float"):
        return _number(label, value, rule)
    if kind == "choice":
        if not isinstance(value, str):
            raise UserError(f"{label} must be a name, got {shown(value)}")
        if value not in rule.choices:
            raise UserError(f"{label} {shown(value)} is unknown; use one of {', '.join(rule.choices)}")
        return value
    if kind == "device":
        return _device(label, value)
    if kind == "dims":
        return _dims(label, value)
    if kind == "spacing":
        return _spacing(label, value)
    if kind == "path":
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise UserError(f"{label} must be a path, got {shown(value)}")
        return os.fspath(value)
    if kind == "text":
        if not isinstance(value, str):
            raise UserError(f"{label} must be text, got {shown(value)}")
        return value
    if kind == "mapping" and not isinstance(value, Mapping):
        raise UserError(f"{label} must be a mapping, got {shown(value)}")
    return value


def _dims(label: str, value: Any) -> str | int:
    """``auto``, or 2 or 3 as an int (``"3"`` and ``3.0`` too)."""
    text = str(int(value)) if isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and float(value).is_integer() else value
    if text not in SPATIAL_DIMS:
        raise UserError(f"{label} {shown(value)} is unknown; use auto, 2 or 3")
    return text if text == "auto" else int(text)


def _spacing(label: str, value: Any) -> list[float]:
    """A voxel spacing: 2 or 3 positive finite numbers (slowest axis first, e.g. ``Z, Y, X``)."""
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
        try:
            value = [float(v) for v in value]
        except ValueError:
            raise UserError(f"{label} must be numbers such as 50,4,4 (Z,Y,X), got {shown(value)}") from None
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise UserError(f"{label} must be 2 or 3 numbers (Z,Y,X or Y,X), got {shown(value)}")
    values = list(value)
    if len(values) not in (2, 3):
        raise UserError(f"{label} must be 2 or 3 numbers (Z,Y,X or Y,X), got {len(values)}")
    rule = Rule("float", above=0)
    return [_number(label, v, rule) for v in values]


def _number(label: str, value: Any, rule: Rule) -> int | float:
    whole = rule.kind == "int"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{label} must be a {'whole number' if whole else 'number'}, got {shown(value)}")
    if not math.isfinite(value):
        raise UserError(f"{label} must be a finite number, got {value}")
    if whole:
        if not float(value).is_integer():
            raise UserError(f"{label} must be a whole number, got {value}")
        value = int(value)
    else:
        value = float(value)
    if not _in_range(value, rule):
        raise UserError(f"{label} must be {_bounds(rule)}, got {_num(value)}")
    return value


def _device(label: str, value: Any) -> str:
    if type(value).__name__ == "device" and hasattr(value, "type"):  # a torch.device
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{label} must be a device name (auto, cuda, cuda:N, mps or cpu), got {shown(value)}")
    if value.lower() not in DEVICES and not re.fullmatch(r"cuda:\d+", value.lower()):
        raise UserError(f"device {shown(value)} is unknown; use auto, cuda, cuda:N, mps or cpu")
    return value


def check_keywords(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Refuse a keyword argument not in ``allowed``, suggesting the closest allowed name."""
    allowed = list(allowed)
    for name in given:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(allowed)}"
            raise UserError(f"{where}: unknown option {shown(name)}; {hint}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: The rule of every :class:`TrainConfig` field.
TRAIN_RULES: dict[str, Rule] = {
    "images": Rule("path", optional=True), "masks": Rule("path", optional=True), "out": Rule("path"),
    "model": Rule("choice", choices=MODELS), "width": Rule("float", above=0, high=16),
    "loss": Rule("choice", choices=LOSSES), "optimizer": Rule("choice", choices=OPTIMIZERS),
    "lr": Rule("float", above=0), "weight_decay": Rule("float", low=0),
    "epochs": Rule("int", above=0), "batch_size": Rule("int", above=0), "workers": Rule("int", low=0),
    "scheduler": Rule("choice", choices=SCHEDULERS), "early_stop": Rule("int", low=0),
    "seed": Rule("int", low=0, high=2**32 - 1), "device": Rule("device"),
    "classes": Rule("int", low=2, high=255), "patch_size": Rule("int", low=8, unit="pixels"),
    "resize": Rule("int", low=8, optional=True, unit="pixels"), "val_fraction": Rule("float", low=0, below=1),
    "val_images": Rule("path", optional=True), "val_masks": Rule("path", optional=True),
    "augment": Rule("choice", choices=AUGMENTS), "normalization": Rule("choice", choices=NORMALIZATIONS),
    "skip_unpaired": Rule("flag"), "overwrite": Rule("flag"), "amp": Rule("flag"),
    "curves_every": Rule("int", low=0), "command": Rule("text"), "extra": Rule("mapping"),
    "spatial_dims": Rule("dims"), "spacing": Rule("spacing", optional=True),
    "foreground_sampling": Rule("float", low=0, high=1, optional=True),
}


#: The share of 3D training patches centred on foreground when none is set (nnU-Net's oversampling).
FOREGROUND_3D = 0.33


@dataclass
class TrainConfig:
    """Everything ``train`` needs; the CLI options and the Train widget map onto these fields.

    ``images``/``masks`` are folders of pairs. ``patch_size`` trains on random patches; ``resize``
    (when set) trains on whole images resized to ``resize x resize`` instead. ``curves_every``: redraw
    ``curves.png`` every N epochs (0: only at the end; the Train widget draws its own plot).
    ``spatial_dims``: ``auto``, 2 (slice by slice) or 3 (volumes); ``spacing``: the voxel spacing
    (``Z, Y, X``), None to read it from the data. ``foreground_sampling``: the share of training patches
    centred on a foreground pixel or voxel (None: :data:`FOREGROUND_3D` in 3D, none in 2D).
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
    spatial_dims: str | int = "auto"
    spacing: list[float] | None = None
    foreground_sampling: float | None = None

    def validate(self, memory: bool = True) -> TrainConfig:
        """Check (and normalize) every value, then, with ``memory``, that a batch fits in memory
        (:func:`~napari_unet_seg.memory.check_training_memory`). Raise :class:`UserError` naming the first
        bad value. Returns ``self``."""
        for name, rule in TRAIN_RULES.items():
            setattr(self, name, check_value(_flag(name), getattr(self, name), rule))
        if (self.val_images is None) != (self.val_masks is None):
            raise UserError("give both --val-images and --val-masks, or neither")
        if memory:
            from .memory import check_training_memory

            check_training_memory(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def foreground_share(self) -> float:
        """The share of training patches centred on foreground: ``foreground_sampling``, or the default of
        the dimensions (:data:`FOREGROUND_3D` in 3D, 0 in 2D)."""
        if self.foreground_sampling is not None:
            return self.foreground_sampling
        return FOREGROUND_3D if self.spatial_dims == 3 else 0.0

    def as_command(self) -> str:
        """The ``napari-unet-seg train`` command line of these settings (the options that differ from the
        defaults, and ``--no-plan`` when a plan chose some), e.g. to repeat a run that a sweep or the Train
        widget made."""
        import shlex

        default = TrainConfig()
        words = ["napari-unet-seg", "train"]
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if name in ("command", "extra", "curves_every") or value == getattr(default, name):
                continue
            flag = _flag(name)
            if isinstance(value, bool):
                words.append(flag if value else "--no-amp" if name == "amp" else "")
            elif isinstance(value, (list, tuple)):  # --spacing Z,Y,X
                words += [flag, ",".join(f"{v:g}" for v in value)]
            else:
                words += [flag, str(value)]
        if "plan" in self.extra:  # the plan's choices are in the words: measuring again could differ
            words.append("--no-plan")
        return shlex.join(w for w in words if w)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know (older/newer model files)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def check_options(cls, options: Mapping[str, Any], where: str = "train", extra: Iterable[str] = ()) -> None:
        """Refuse unknown keys (naming the close one) and bad values among ``options`` given for a config;
        ``extra`` names further keywords the caller takes (``arrays``, ``resume``, ...), left unchecked."""
        extra = tuple(extra)
        check_keywords(options, (*(f.name for f in fields(cls)), *extra), where)
        for name, value in options.items():
            if name in TRAIN_RULES:
                check_value(_flag(name), value, TRAIN_RULES[name])
