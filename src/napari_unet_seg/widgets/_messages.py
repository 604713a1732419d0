"""Engine messages in the widgets' words: command-line flags become the names of the controls.

The engine speaks to the command line ("pass --overwrite", "check --classes 3"); a widget user has
controls, not flags. :func:`widget_words` rewrites one message with the table :data:`FLAG_LABELS`
and strips third-party install advice. Pure functions: no Qt, tested without a viewer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["FLAG_LABELS", "CHECKBOXES", "widget_words"]

#: A CLI flag -> the label of the widget control that sets it (None: no control; its advice is dropped).
FLAG_LABELS: dict[str, str | None] = {
    "--out": "output folder", "--output": "output", "--images": "images folder", "--masks": "masks folder",
    "--input": "image", "--overwrite": "overwrite", "--classes": "classes", "--patch-size": "patch size",
    "--batch-size": "batch size", "--width": "width", "--device": "device", "--val-fraction": "val fraction",
    "--epochs": "epochs", "--lr": "learning rate", "--loss": "loss", "--model": "model",
    "--optimizer": "optimizer", "--augment": "augmentation", "--tile": "tile size", "--overlap": "overlap",
    "--threshold": "threshold", "--min-size": "min object size", "--instances": "instances",
    "--min-distance": "min distance", "--spatial-dims": "dimensions", "--spacing": "voxel spacing",
    "--tta": "test-time augmentation", "--uncertainty": "add uncertainty layer",
    "--keep-largest": "keep largest object", "--fill-holes": "fill holes",
    "--skip-unpaired": None, "--resume": None, "--resize": None, "--workers": None, "--weight-decay": None,
    "--early-stop": None, "--val-images": None, "--val-masks": None, "--foreground-sampling": None,
}

#: Flags whose control is a check box: "pass --overwrite" reads "tick 'overwrite'".
CHECKBOXES = frozenset({"--overwrite", "--tta", "--uncertainty", "--keep-largest", "--fill-holes"})

_INSTALL = re.compile(r"[;,]?\s*\(?[^;,()]*\b(?:pip|conda|mamba)\s+install\b[^;)]*\)?", re.IGNORECASE)
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_END = r"[^;,.)]*"


def _drop(text: str, flag: str) -> str:
    """Remove the advice to pass ``flag`` (a flag the widget has no control for)."""
    flag = re.escape(flag)
    text = re.sub(rf",?\s+or\s+(?:pass\s+|use\s+|give\s+)?{flag}\b{_END}", "", text)
    text = re.sub(rf"(?:pass\s+|use\s+|give\s+)?{flag}\b{_END}\s+or\s+", "", text)
    text = re.sub(rf"[;,]\s*(?:pass\s+|use\s+|give\s+)?{flag}\b{_END}", "", text)
    return text.replace(flag.replace("\\", ""), f"the command line's {flag.replace(chr(92), '')}")


def widget_words(text: str, labels: Mapping[str, str | None] = FLAG_LABELS) -> str:
    """``text`` with each CLI flag named as its widget control and no third-party install advice."""
    text = _INSTALL.sub("", str(text)).replace("`", "").strip(" ;,")
    for flag in sorted(set(_FLAG.findall(text)), key=len, reverse=True):
        if flag not in labels:
            continue
        label = labels[flag]
        if label is None:
            text = _drop(text, flag)
            continue
        if flag in CHECKBOXES:
            text = re.sub(rf"\b(?:pass|use|give)\s+{re.escape(flag)}\b", f"tick '{label}'", text)
        text = re.sub(rf"{re.escape(flag)}(?![a-z-])", f"'{label}'", text)
    return text.strip(" ;,") or "the job failed"
