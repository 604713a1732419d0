"""Growing a training set: save an image and its (corrected) labels as a new pair, never overwriting.

This is the "correct and retrain" loop of the Train widget (as in cellpose 2): segment, fix the labels
with napari's brush, :func:`add_pair` into the training folders, then fine-tune the model on them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import UserError
from .image_io import atomic_write, is_image_file, write_mask
from .pairing import mask_key

__all__ = ["add_pair", "fresh_name", "fresh_folder"]


def _safe_name(name: str) -> str:
    """``name`` as a file stem: letters, digits, ``.-_`` (others become ``_``), no leading dot."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    for suffix in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)].rstrip("._-")
    return stem or "pair"


def _taken(folders: Iterable[Path]) -> set[str]:
    """Stems (lower case, also without a mask suffix) of the image files in ``folders``."""
    taken = set()
    for folder in folders:
        if folder.is_dir():
            for path in folder.iterdir():
                if is_image_file(path):
                    taken.update((path.stem.lower(), mask_key(path.stem).lower()))
    return taken


def fresh_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... : the first one not in ``taken`` (compared in lower case)."""
    taken = {t.lower() for t in taken}
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def fresh_folder(folder: str | os.PathLike, files: Iterable[str]) -> Path:
    """``folder``, or ``folder-2``, ``folder-3``, ... : the first one that holds none of ``files``."""
    folder, files = Path(folder), tuple(files)
    candidate, number = folder, 1
    while candidate.exists() and (not candidate.is_dir() or any((candidate / f).exists() for f in files)):
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    return candidate


def _check_folder(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} folder {folder}: is a file; choose a folder")


def _plane(image: np.ndarray, labels: np.ndarray) -> None:
    """Refuse an image/labels couple that is not one 2D (gray or colour) image with labels of its shape."""
    if labels.ndim != 2:
        raise UserError(f"labels of shape {labels.shape}: add one 2D image at a time (for a stack, its current "
                        "slice)")
    colour = image.ndim == 3 and image.shape[2] in (3, 4)
    if image.shape != labels.shape and not (colour and image.shape[:2] == labels.shape):
        raise UserError(f"labels of shape {labels.shape} do not match the image {image.shape}; pick the Labels "
                        "layer painted on that image")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise UserError(f"labels of type {labels.dtype}: use a Labels layer (integer ids)")
    if labels.size and labels.min() < 0:
        raise UserError("labels hold negative values; use ids 0 (background) and above")
    if not labels.any():
        raise UserError("the labels are all background (0); paint or correct the labels first")


def _write_image(path: Path, image: np.ndarray) -> Path:
    import tifffile

    data = image.astype(np.uint8) if image.dtype == bool else image
    colour = data.ndim == 3
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, photometric="rgb" if colour else
                                                           "minisblack", compression="zlib"))


def _write_labels(folder: Path, stem: str, labels: np.ndarray) -> Path:
    return write_mask(folder / f"{stem}.png", labels)  # PNG, or TIFF for ids beyond what PNG holds


def add_pair(image, labels, images_dir: str | os.PathLike, masks_dir: str | os.PathLike,
             name: str = "pair") -> tuple[Path, Path]:
    """Save a 2D image and its labels as a new pair ``images_dir/NAME.tif`` + ``masks_dir/NAME.png``.

    The two files have the same stem, so :func:`~napari_unet_seg.pairing.pair_files` pairs them. The
    image keeps its dtype (and its colour channels) in a TIFF; the labels keep their ids (PNG, or TIFF
    for very many ids, as :func:`~napari_unet_seg.image_io.write_mask` writes them); binary training
    reads every id > 0 as foreground. When ``name`` is taken in either folder, ``name-2``, ``name-3``,
    ... is used: nothing in the folders is ever overwritten. Missing folders are created. Returns
    ``(image_path, mask_path)``.

    Raises:
        UserError: the labels are not 2D or not of the image's shape, hold no label, or a folder
            cannot be written.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    image, labels = np.asarray(image), np.asarray(labels)
    _plane(image, labels)
    _check_folder(images_dir, "images")
    _check_folder(masks_dir, "masks")
    if images_dir.resolve() == masks_dir.resolve():
        raise UserError(f"images and masks folder are both {images_dir}; choose two different folders")
    stem = fresh_name(_safe_name(name), _taken((images_dir, masks_dir)))
    image_path = _write_image(images_dir / f"{stem}.tif", image)
    try:
        mask_path = _write_labels(masks_dir, stem, labels)
    except BaseException:
        image_path.unlink(missing_ok=True)  # an image without its mask would break pairing
        raise
    return image_path, mask_path
