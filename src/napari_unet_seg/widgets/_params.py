"""Pure functions from widget values to engine arguments and from engine results to table rows.

Nothing here imports Qt, napari or magicgui, so every function is tested without a viewer.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import UserError

__all__ = [
    "LABELS_HINT", "WIDGET_COMMAND", "optional_path", "layer_array", "labels_name", "probabilities_name",
    "uncertainty_name", "segment_options", "DIMENSIONS", "dims_value", "dims_choice", "scale_text", "resolve_dims",
    "check_layer_shapes", "not_a_volume", "AUTO", "FOREGROUND", "foreground_value", "train_config", "given_settings",
    "plan_summary", "layer_pairs", "model_choices", "model_label", "curve_series", "best_rows", "evaluation_table",
    "comparison_table", "runs_table", "write_csv", "kept_files", "plane_key",
]

#: What a model file records as the command that made it, when the Train widget made it.
WIDGET_COMMAND = "napari: napari-unet-seg Train widget"

#: Metrics shown in the Evaluate tables, with their column titles.
TABLE_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("accuracy", "accuracy"))


def optional_path(value: str | os.PathLike | None) -> str | None:
    """A path from a file widget as a string, or None when the widget is empty."""
    if value is None:
        return None
    text = os.fspath(value).strip()
    return text or None


def layer_array(data: Any, multiscale: bool) -> Any:
    """The array to segment from an Image layer's data: the highest resolution of a multiscale pyramid."""
    return data[0] if multiscale else data


#: Added where a Labels layer is missing: napari opens a mask file as an Image layer.
LABELS_HINT = "(a mask opened from a file is an Image layer: right-click it in the layer list > Convert to Labels)"


def labels_name(image_name: str) -> str:
    """Name of the Labels layer that Segment writes for an image layer."""
    return f"{image_name} labels"


def probabilities_name(image_name: str) -> str:
    """Name of the probability Image layer that Segment writes for an image layer."""
    return f"{image_name} probabilities"


def uncertainty_name(image_name: str) -> str:
    """Name of the uncertainty Image layer that Segment writes for an image layer."""
    return f"{image_name} uncertainty"


def segment_options(*, device: str = "auto", tile: int = 0, overlap: float = 0.25, threshold: float = 0.5,
                    tta: bool = False, min_size: int = 0, keep_largest: bool = False, fill_holes: bool = False,
                    probabilities: bool = False, rgb: bool | None = None, instances: str = "none",
                    min_distance: int = 5, uncertainty: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``predict_steps`` from the Segment widget's values (tile 0: the model's own)."""
    return {"device": str(device), "tile": int(tile) or None, "overlap": float(overlap),
            "threshold": float(threshold), "tta": bool(tta), "min_size": int(min_size),
            "keep_largest": bool(keep_largest), "fill_holes": bool(fill_holes),
            "return_probabilities": bool(probabilities), "rgb": rgb, "instances": str(instances),
            "min_distance": int(min_distance), "uncertainty": bool(uncertainty)}


#: The Train widget's "dimensions" choices, and the ``spatial_dims`` each one means.
DIMENSIONS = {"auto": "auto", "2D slices": 2, "3D volumes": 3}


def dims_value(choice: str) -> str | int:
    """``spatial_dims`` (``auto``, 2 or 3) of a "dimensions" choice."""
    return DIMENSIONS[choice]


def dims_choice(spatial_dims: str | int) -> str:
    """The "dimensions" choice of ``spatial_dims`` (``auto``, 2 or 3)."""
    return next(choice for choice, value in DIMENSIONS.items() if str(value) == str(spatial_dims))


def scale_text(scale: Sequence[float], spatial_ndim: int) -> str:
    """The voxel spacing a layer's ``scale`` gives, as text (``"2, 0.5, 0.5"``); empty for 2D layers."""
    if spatial_ndim != 3:
        return ""
    return ", ".join(f"{float(v):g}" for v in tuple(scale)[-3:])


def resolve_dims(spatial_dims: str | int, shape: Sequence[int], spacing: Sequence[float] | None) -> tuple[int, str]:
    """``(2 or 3, why)``: the dimensions to train a layer of spatial ``shape`` in (``auto`` decided by
    :func:`~napari_unet_seg.planning.choose_spatial_dims` from its depth and voxel spacing)."""
    if spatial_dims != "auto":
        return int(spatial_dims), "chosen"
    if len(shape) != 3:
        return 2, "a 2D image"
    from ..planning import choose_spatial_dims

    return choose_spatial_dims([tuple(shape)], None if spacing is None else list(spacing))


def not_a_volume(name: str, shape: Sequence[int]) -> str:
    """The message refusing 3D training on the 2D layer ``name``."""
    return (f"layer {name!r} {tuple(shape)} is 2D: choose dimensions '2D slices', or a volume (Z, Y, X) layer to "
            "train in 3D")


def check_layer_shapes(image_shape: Sequence[int], labels_shape: Sequence[int], *, rgb: bool, image_name: str,
                       labels_name: str) -> None:
    """Refuse a Labels layer whose shape differs from the Image layer's in any (spatial) axis."""
    spatial = tuple(image_shape[:-1] if rgb else image_shape)
    if tuple(labels_shape) != spatial:
        raise UserError(f"layer {labels_name!r} {tuple(labels_shape)} does not match layer {image_name!r} "
                        f"{spatial}; pick a Labels layer painted on that image")


#: A Train spin box at this value shows "auto": the setting is chosen from the data (the plan).
AUTO = 0

#: The Train widget's "foreground patches" choices: the share of patches centred on foreground
#: (``TrainConfig.foreground_sampling``; auto: the plan's).
FOREGROUND = {"auto": None, "none (uniform)": 0.0, "1 in 3": 0.33, "half": 0.5, "all": 1.0}

_PLAN_LABELS = {"spatial_dims": "dimensions", "spacing": "voxel spacing", "resize": "image size",
                "patch_size": "patch size", "batch_size": "batch size", "epochs": "epochs",
                "normalization": "normalization", "foreground_sampling": "foreground patches"}


def foreground_value(choice: str) -> float | None:
    """``foreground_sampling`` of a "foreground patches" choice (None: auto)."""
    return FOREGROUND[choice]


def given_settings(*, epochs: int, batch_size: int, patch_size: int, spatial_dims: str | int = "auto",
                   spacing: str | Sequence[float] | None = None, foreground_sampling: float | None = None) -> set[str]:
    """The planned settings (:data:`~napari_unet_seg.planning.PLANNED`) that the Train widget's values set
    (the plan keeps them): spin boxes not at :data:`AUTO`, dimensions other than auto, a spacing typed, a
    foreground share chosen."""
    given = {name for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patch_size", patch_size))
             if int(value) != AUTO}
    if spatial_dims != "auto":
        given.add("spatial_dims")
    if spacing:
        given.add("spacing")
    if foreground_sampling is not None:
        given.add("foreground_sampling")
    return given


def plan_summary(plan: Mapping[str, Any]) -> str:
    """A stored plan (``config.extra["plan"]``) in one line of the widget's words: what it chose."""
    chosen = []
    for name, value in plan.get("settings", {}).items():
        if name in plan.get("kept", {}):
            continue
        if name == "resize":
            value = "full resolution" if value is None else f"resized to {value}²"
        elif name == "spatial_dims":
            value = "3D volumes" if int(value) == 3 else "2D"
        elif name == "spacing":
            value = ", ".join(f"{v:g}" for v in value)
        elif name == "foreground_sampling":
            value = f"{float(value):.0%}"
        chosen.append(f"{_PLAN_LABELS.get(name, name)} {value}")
    epochs = plan.get("reasons", {}).get("epochs", "")
    took = f" ({epochs.split(' at ')[0]})" if "epochs" not in plan.get("kept", {}) and " at " in epochs else ""
    return f"settings from the data: {', '.join(chosen)}{took}" if chosen else "settings: all as set"


def train_config(*, out: str | os.PathLike | None, images: str | os.PathLike | None = None,
                 masks: str | os.PathLike | None = None, from_layers: bool = False, model: str = "unet",
                 width: float = 1.0, classes: int = 2, loss: str = "dicece", optimizer: str = "adamw",
                 lr: float = 1e-3, epochs: int = 50, batch_size: int = 8, patch_size: int = 256,
                 val_fraction: float = 0.1, augment: str = "light", device: str = "auto",
                 overwrite: bool = False, spatial_dims: str | int = "auto",
                 spacing: str | Sequence[float] | None = None,
                 foreground_sampling: float | None = None) -> TrainConfig:
    """The validated :class:`TrainConfig` of the Train widget's values (those at :data:`AUTO` hold the
    defaults until the plan sets them).

    With ``from_layers`` the folders are ignored (the data come from layers, see :func:`layer_pairs`).
    ``spacing``: ``Z, Y, X`` numbers (text or a sequence); empty or None reads it from the data.

    Raises:
        UserError: a folder is missing, or a value is out of range (the message names it).
    """
    out_dir = optional_path(out)
    if out_dir is None:
        raise UserError("choose an output folder for the run (the model files and the history go there)")
    images_dir, masks_dir = (None, None) if from_layers else (optional_path(images), optional_path(masks))
    if not from_layers and (images_dir is None or masks_dir is None):
        raise UserError("choose the images folder and the masks folder, or train on the open layers")
    if not from_layers and Path(images_dir).resolve() == Path(masks_dir).resolve():
        raise UserError(f"images folder and masks folder are both {images_dir}; choose the folder of the masks")
    config = TrainConfig(images=images_dir, masks=masks_dir, out=out_dir, model=str(model), width=float(width),
                         classes=int(classes), loss=str(loss), optimizer=str(optimizer), lr=float(lr),
                         epochs=int(epochs) or TrainConfig.epochs,
                         batch_size=int(batch_size) or TrainConfig.batch_size,
                         patch_size=int(patch_size) or TrainConfig.patch_size,
                         val_fraction=float(val_fraction), augment=str(augment), device=str(device),
                         overwrite=bool(overwrite), command=WIDGET_COMMAND, curves_every=0,
                         spatial_dims=spatial_dims, spacing=spacing or None,
                         foreground_sampling=foreground_sampling)
    return config.validate()


def layer_pairs(image: Any, labels: Any, *, rgb: bool = False, image_name: str = "image",
                labels_name: str = "labels", spatial_dims: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training pairs ``[(image, labels), ...]`` from an Image layer's and a Labels layer's data.

    With ``spatial_dims`` 2, a 2D image gives one pair and a stack ``(Z, Y, X)`` one pair per slice that
    holds any label (unpainted slices are left out). With 3, a volume gives one pair, whole: its unpainted
    voxels are background.

    Raises:
        UserError: the shapes differ, the data are not 2D or a stack (a volume for 3), or nothing is labelled.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    check_layer_shapes(image.shape, labels.shape, rgb=rgb, image_name=image_name, labels_name=labels_name)
    spatial = labels.shape
    if len(spatial) not in (2, 3):
        raise UserError(f"layer {image_name!r} {image.shape}: train on 2D images or stacks of 2D slices")
    if spatial_dims == 3 and len(spatial) != 3:
        raise UserError(not_a_volume(image_name, image.shape))
    if spatial_dims == 3 or len(spatial) == 2:
        pairs = [(image, labels)] if labels.any() else []
    else:
        pairs = [(image[z], labels[z]) for z in range(spatial[0]) if labels[z].any()]
    if not pairs:
        raise UserError(f"layer {labels_name!r} holds no labels; paint the objects to learn first")
    return pairs


def model_label(value: str | os.PathLike, shipped: Mapping[str, Path] | None = None) -> str:
    """How a model shows in a model list: a shipped model's display name or ``run-folder/file.pt``."""
    if shipped and str(value) in shipped:
        from ..pretrained import display_name

        return display_name(str(value))
    path = Path(value)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def model_choices(shipped: Mapping[str, Path], files: Sequence[str | os.PathLike],
                  dims: Callable[[str], int | None] | None = None) -> list[tuple[str, str]]:
    """``(label, value)`` choices of a model list: shipped models by name, then model files by path.

    With ``dims`` (a model's value -> its ``spatial_dims``), 3D models are marked ``(3D)``.
    """
    def label(value: str, text: str) -> str:
        return f"{text} (3D)" if dims is not None and "3D" not in text and dims(value) == 3 else text

    choices = [(label(name, model_label(name, shipped)), name) for name in shipped]
    seen = set()
    for file in files:
        value = os.fspath(file)
        if value not in seen:
            seen.add(value)
            choices.append((label(value, model_label(value)), value))
    return choices


def curve_series(history: Sequence[Mapping[str, float]]) -> dict[str, tuple[list[int], list[float]]]:
    """Per-epoch curves of the training plot: ``{title: (epochs, values)}`` (loss and score panels)."""
    keys = {"train loss": "train_loss", "val loss": "val_loss", "val Dice": "val_dice", "val IoU": "val_iou"}
    series = {}
    for title, key in keys.items():
        rows = [row for row in history if key in row]
        series[title] = ([int(row["epoch"]) for row in rows], [float(row[key]) for row in rows])
    return series


def best_rows(best_epoch: int, metrics: Mapping[str, float]) -> list[list[str]]:
    """``[[metric, value], ...]`` rows of the best epoch's table."""
    names = (("epoch", "epoch"), ("val_dice", "val Dice"), ("val_iou", "val IoU"),
             ("val_accuracy", "val accuracy"), ("val_loss", "val loss"), ("train_loss", "train loss"))
    rows = [["epoch", str(int(best_epoch))]]
    rows += [[title, f"{float(metrics[key]):.4f}"] for key, title in names[1:] if key in metrics]
    return rows


#: The row of the scores over all voxels of all volumes together (micro average).
POOLED = "pooled (all voxels)"


def evaluation_table(result: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """``(headers, rows)`` of a folder evaluation: one row per image (or volume), then the mean; with
    volumes also the scores :data:`POOLED`."""
    headers = ["image"] + [title for _, title in TABLE_METRICS]
    rows = [[row["name"]] + [round(float(row[key]), 4) for key, _ in TABLE_METRICS]
            for row in result.get("per_image", [])]
    rows.append(["mean"] + [round(float(result[key]), 4) for key, _ in TABLE_METRICS])
    if result.get("volumes") and all(f"pooled_{key}" in result for key, _ in TABLE_METRICS):
        rows.append([POOLED] + [round(float(result[f"pooled_{key}"]), 4) for key, _ in TABLE_METRICS])
    return headers, rows


#: Object-level scores of an instance comparison (``compare_labels``), with their row titles.
OBJECT_METRICS = (("object_precision", "object precision (IoU 0.5)"), ("object_recall", "object recall (IoU 0.5)"),
                  ("object_f1", "object F1 (IoU 0.5)"))


def comparison_table(scores: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """``(headers, rows)`` of a Labels-against-ground-truth comparison; one row per class when multi-class,
    and the object-level scores (in the Dice column) when the labels are instances."""
    headers = ["class", "Dice", "IoU"]
    per_class = scores.get("per_class")
    first = "mean of classes" if per_class else "foreground"
    rows = [[first, round(float(scores["dice"]), 4), round(float(scores["iou"]), 4)]]
    absent = scores.get("absent_classes", ())
    for label, values in (per_class or {}).items():
        rows.append([str(label), "absent", "absent"] if label in absent else
                    [str(label), round(float(values["dice"]), 4), round(float(values["iou"]), 4)])
    rows += [[title, round(float(scores[key]), 4), "-"] for key, title in OBJECT_METRICS if key in scores]
    return headers, rows


#: Columns of the Evaluate widget's run list: (title, key of a ``sweep.list_runs`` row).
RUN_COLUMNS = (("run", "run"), ("model", "model"), ("loss", "loss"), ("val Dice", "best_val_dice"),
               ("val IoU", "best_val_iou"), ("test Dice", "test_dice"), ("test IoU", "test_iou"),
               ("epochs", "epochs_run"), ("time", "seconds"))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def runs_table(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``(headers, rows)`` of a folder of runs (rows of ``sweep.read_comparison``); ``-`` where unknown."""
    def cell(key: str, value: Any) -> Any:
        if value is None or value == "":
            return "-"
        if key == "seconds":
            return _duration(float(value))
        return round(value, 4) if isinstance(value, float) else value

    return [title for title, _ in RUN_COLUMNS], [[cell(key, run.get(key)) for _, key in RUN_COLUMNS]
                                                  for run in runs]


def write_csv(path: str | os.PathLike, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a table to ``path`` as CSV (comma-separated, header first); return the path.

    A name without ``.csv`` gets it appended (``scores`` -> ``scores.csv``); a file of that appended name that
    exists already is not replaced, since the user named another.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        path = path.with_name(path.name + ".csv")
        if path.exists():
            raise UserError(f"{path} exists; name it with .csv to replace it, or choose another file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(headers)
            writer.writerows(rows)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}); choose another file") from None
    return path


def kept_files(run: str | Path) -> list[str]:
    """The run files that exist in the folder ``run``."""
    from ..run_lock import RUN_FILES

    return [name for name in RUN_FILES if (Path(run) / name).exists()]


def plane_key(*planes: np.ndarray) -> str:
    """A digest of 2D planes (shape, dtype and values): the same pair gives the same key."""
    import hashlib

    digest = hashlib.sha1()
    for plane in planes:
        digest.update(str((plane.shape, plane.dtype.str)).encode())
        digest.update(np.ascontiguousarray(plane).tobytes())
    return digest.hexdigest()
