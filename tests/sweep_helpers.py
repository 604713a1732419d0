"""Helpers shared by tests/test_sweep.py and tests/test_sweep_spec.py: writing sweep files."""

from __future__ import annotations

import os
from pathlib import Path


def write_sweep(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def data_lines(folder: Path, synthetic_dir) -> str:
    """images/masks lines relative to ``folder`` (paths in a sweep file start at its folder)."""
    images, masks = synthetic_dir
    return f"images: {os.path.relpath(images, folder)}\nmasks: {os.path.relpath(masks, folder)}\n"
