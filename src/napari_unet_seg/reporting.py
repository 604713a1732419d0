"""Run reports: ``history.csv`` and ``curves.png`` (loss, Dice, IoU, accuracy, lr), and montages."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .image_io import atomic_write

__all__ = ["HISTORY_COLUMNS", "write_history", "read_history", "plot_curves", "save_montage"]

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_accuracy", "lr", "seconds")


def write_history(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write the per-epoch rows as CSV (atomically, so a kill never leaves half a file)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def read_history(path: str | Path) -> list[dict]:
    """The rows of a ``history.csv`` with numbers parsed."""
    with open(path, newline="") as handle:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def plot_curves(path: str | Path, rows: Sequence[dict]) -> Path:
    """Draw loss, Dice/IoU, accuracy and learning rate per epoch into one PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in threads

    figure = Figure(figsize=(12, 3.2), dpi=100)
    axes = figure.subplots(1, 4)
    epochs = [r["epoch"] for r in rows]
    panels = [("loss", ("train_loss", "val_loss")), ("Dice / IoU", ("val_dice", "val_iou")),
              ("pixel accuracy", ("val_accuracy",)), ("learning rate", ("lr",))]
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            axis.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", markersize=3, label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., :3]
    low, high = np.percentile(image, [1, 99.8])
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def save_montage(path: str | Path, rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]) -> Path:
    """One figure row per ``(name, image, prediction, mask)``: image | prediction | mask."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3 * len(rows)), dpi=90)
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for (name, image, prediction, mask), row in zip(rows, axes):
        row[0].imshow(_to_rgb(image))
        row[0].set_title(name, fontsize=9)
        row[1].imshow(prediction, cmap="magma", interpolation="nearest")
        row[1].set_title("prediction", fontsize=9)
        if mask is not None:
            row[2].imshow(mask, cmap="magma", interpolation="nearest")
            row[2].set_title("ground truth", fontsize=9)
        for axis in row:
            axis.set_axis_off()
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
