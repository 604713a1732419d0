"""The settings of predict, evaluate, export and sweep, and the public functions that check them first.

``napari_unet_seg.train/predict/evaluate/export_model/sweep`` are the engine's functions behind one
check: an unknown keyword gets one line naming the close one (``epoch`` -> ``epochs``), a value of the
wrong type, NaN/inf or out of range gets one line naming it; nothing runs before. The CLI checks its
parsed options with the same rules (:func:`check_args`), the widgets call :func:`check_options`.
"""

from __future__ import annotations

import inspect
import os
from argparse import Namespace
from collections.abc import Callable, Mapping
from typing import Any

from .config import (EXPORT_FORMATS, INSTANCES, PRECISIONS, TRAIN_RULES, Rule, TrainConfig, check_keywords,
                     check_value, shown)
from .errors import UserError

__all__ = ["PREDICT_RULES", "EVALUATE_RULES", "EXPORT_RULES", "SWEEP_RULES", "check_options", "check_args",
           "train", "predict", "evaluate", "export_model", "sweep"]

#: Keyword arguments of ``predict`` / ``predict_steps``.
PREDICT_RULES: dict[str, Rule] = {
    "device": Rule("device"), "tile": Rule("int", low=16, optional=True, unit="pixels"),
    "overlap": Rule("float", low=0, below=1), "threshold": Rule("float", above=0, below=1, optional=True),
    "batch_size": Rule("int", low=1, optional=True), "tta": Rule("flag", optional=True), "uncertainty": Rule("flag"),
    "min_size": Rule("int", low=0), "fill_holes": Rule("flag", optional=True),
    "keep_largest": Rule("flag", optional=True), "instances": Rule("choice", choices=INSTANCES),
    "min_distance": Rule("int", low=1), "return_probabilities": Rule("flag"), "rgb": Rule("flag", optional=True),
    "precision": Rule("choice", choices=PRECISIONS), "cancel": Rule("any"), "spacing": Rule("spacing", optional=True),
}
#: Keyword arguments of ``evaluate`` (the predict options that keep plain labels, and the pairing's).
EVALUATE_RULES: dict[str, Rule] = {
    **{k: v for k, v in PREDICT_RULES.items() if k not in ("uncertainty", "return_probabilities", "instances",
                                                           "min_distance")},
    "skip_unpaired": Rule("flag"), "on_event": Rule("any"),
}
#: Keyword arguments of ``export_model``.
EXPORT_RULES: dict[str, Rule] = {
    "fmt": Rule("choice", choices=EXPORT_FORMATS), "out": Rule("path"), "check": Rule("flag"),
    "overwrite": Rule("flag"), "test_image": Rule("any"), "authors": Rule("any"),
    "license": Rule("text", optional=True), "on_message": Rule("any"), "opset": Rule("int", low=17),
}
#: Keyword arguments of ``sweep``.
SWEEP_RULES: dict[str, Rule] = {"out": Rule("path"), "device": Rule("device"), "cancel": Rule("any"),
                                "on_event": Rule("any")}


def check_options(options: Mapping[str, Any], rules: Mapping[str, Rule], where: str,
                  extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` checked against ``rules`` (unknown keys refused, naming the close one; ``extra`` keys are
    allowed unchecked); returns them normalized."""
    check_keywords(options, (*rules, *extra), where)
    return {k: check_value(f"{where}: {k}", v, rules[k]) if k in rules else v for k, v in options.items()}


def _check_model(model: Any, where: str) -> None:
    from_file = isinstance(model, (str, os.PathLike)) and os.fspath(model)
    if not from_file and type(model).__name__ != "SegmentationModel":
        raise UserError(f"{where}: model must be a model object, a model file (.pt) or a shipped model name, "
                        f"got {type(model).__name__} {shown(model)}")


def _check_image(array: Any, where: str) -> None:
    if array is None:
        raise UserError(f"{where}: give the image to segment: {where}(model, image) with a numpy or dask array")
    dtype = getattr(array, "dtype", None)
    if getattr(array, "shape", None) is None or getattr(dtype, "kind", "O") not in "biuf":
        what = f"{type(array).__name__} {shown(array)}"
        raise UserError(f"{where}: the image must be a numeric numpy or dask array (Y, X), (Y, X, 3) or (Z, Y, X), "
                        f"got {what}; read files with napari_unet_seg.image_io.read_image")


def _keywords(function: Callable) -> tuple[str, ...]:
    """The keyword parameters of an engine function (those the rules do not list stay allowed)."""
    return tuple(name for name, p in inspect.signature(function).parameters.items()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def train(config: TrainConfig | None = None, *, on_event=None, **options: Any):
    """Train a model (see :func:`napari_unet_seg.training.train`), its options checked first."""
    from .training import train as run
    from .training import train_steps

    if config is not None and not isinstance(config, TrainConfig):
        raise UserError(f"train: config must be a TrainConfig (or give the settings as keywords), "
                        f"got {type(config).__name__} {shown(config)}")
    extra = tuple(k for k in _keywords(train_steps) if k not in ("config", "options"))
    TrainConfig.check_options(options, "train", extra)
    return run(config, on_event=on_event, **options)


def predict(model: Any, array: Any = None, **options: Any):
    """Segment an array (see :func:`napari_unet_seg.inference.predict`), its options checked first."""
    from .inference import predict as run
    from .inference import predict_steps

    _check_model(model, "predict")
    _check_image(array, "predict")
    options = check_options(options, PREDICT_RULES, "predict", _keywords(predict_steps)[2:])
    return run(model, array, **options)


def evaluate(model: Any, images: Any = None, masks: Any = None, **options: Any) -> dict:
    """Score a model on folder pairs (see :func:`napari_unet_seg.evaluation.evaluate`), options checked first."""
    from .evaluation import evaluate as run

    _check_model(model, "evaluate")
    for name, value in (("images", images), ("masks", masks)):
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise UserError(f"evaluate: {name} must be a folder path, got {shown(value)}")
    return run(model, images, masks, **check_options(options, EVALUATE_RULES, "evaluate"))


def export_model(model: Any, fmt: Any = None, out: Any = None, **options: Any):
    """Export a model (see :func:`napari_unet_seg.export.export_model`), its options checked first."""
    from .export import export_model as run

    _check_model(model, "export_model")
    checked = check_options({"fmt": fmt, "out": out, **options}, EXPORT_RULES, "export_model")
    authors = checked.get("authors")
    if authors is not None and (isinstance(authors, str) or not all(isinstance(a, str) for a in authors)):
        raise UserError(f"export_model: authors must be a list of names, got {shown(authors)}")
    if "opset" in checked and checked["fmt"] != "onnx":
        raise UserError("export_model: opset is for the onnx format only")
    if "opset" in checked:
        from .export import export_onnx

        if checked.pop("authors", None) or checked.pop("license", None):
            raise UserError("export_model: authors and license go into bioimage.io packages only")

        checked.pop("fmt")
        return export_onnx(model, checked.pop("out"), **checked)
    return run(model, checked.pop("fmt"), checked.pop("out"), **checked)


def sweep(spec: Any, out: Any = None, **options: Any) -> list[dict]:
    """Run a sweep (see :func:`napari_unet_seg.sweep.sweep`), its options checked first."""
    from .sweep import SweepSpec
    from .sweep import sweep as run

    if not isinstance(spec, (SweepSpec, str, os.PathLike)):
        raise UserError(f"sweep: spec must be a sweep file (YAML) or a SweepSpec, got {shown(spec)}")
    checked = check_options({"out": out, **options}, SWEEP_RULES, "sweep")
    return run(spec, checked.pop("out"), **checked)


#: The CLI's options per command, checked with the rules above after parsing (argparse checks the types).
_CLI_RULES = {
    "predict": {k: PREDICT_RULES[k] for k in ("device", "tile", "overlap", "threshold", "min_size",
                                              "min_distance", "instances")},
    "evaluate": {k: PREDICT_RULES[k] for k in ("device", "tile", "overlap", "threshold", "min_size")},
    "demo": {"device": Rule("device"), "epochs": TRAIN_RULES["epochs"]},
    "sweep": {"device": Rule("device")},
    "doctor": {"device": Rule("device", optional=True)},  # a misspelt name fails before the report
}


def check_args(args: Namespace) -> None:
    """Check the parsed options of a CLI command with the rules the Python API uses (``--flag`` named).

    ``train`` is checked by :meth:`TrainConfig.validate` as the job starts (a resumed run merges its stored
    settings first).
    """
    for name, rule in _CLI_RULES.get(args.command, {}).items():
        check_value("--" + name.replace("_", "-"), getattr(args, name), rule)
