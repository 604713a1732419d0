"""Growing a training set: save an image and its (corrected) labels as a new pair, never overwriting.

This is the "correct and retrain" loop of the Train widget (as in cellpose 2): segment, fix the labels
with napari's brush, :func:`add_pair` into the training folders, then fine-tune the model on them. A
pair is a 2D image (gray or colour) or a volume ``(Z, Y, X)`` / ``(Z, Y, X, C)`` with its labels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import UserError
from .image_io import atomic_write, is_image_file, write_mask, write_tiff
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


def _checked(image: np.ndarray, labels: np.ndarray) -> int:
    """The number of spatial axes (2 or 3) of an image/labels couple; refuse one that cannot be a pair."""
    if labels.ndim not in (2, 3):
        raise UserError(f"labels of shape {labels.shape}: add one 2D image or one volume (Z, Y, X) at a time")
    colour = image.ndim == labels.ndim + 1 and image.shape[-1] in (3, 4)
    if image.shape != labels.shape and not (colour and image.shape[:-1] == labels.shape):
        raise UserError(f"labels of shape {labels.shape} do not match the image {image.shape}; pick the Labels "
                        "layer painted on that image")
    if labels.ndim == 3 and labels.shape[0] < 2:
        raise UserError(f"labels of shape {labels.shape}: a volume needs at least 2 slices; add it as a 2D image")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise UserError(f"labels of type {labels.dtype}: use a Labels layer (integer ids)")
    if labels.size and labels.min() < 0:
        raise UserError("labels hold negative values; use ids 0 (background) and above")
    if not labels.any():
        raise UserError("the labels are all background (0); paint or correct the labels first")
    return labels.ndim


def _write_image(path: Path, image: np.ndarray) -> Path:
    data = image.astype(np.uint8) if image.dtype == bool else image
    return atomic_write(path, lambda tmp: write_tiff(tmp, data, colour=data.ndim == 3))


def _write_labels(folder: Path, stem: str, labels: np.ndarray) -> Path:
    return write_mask(folder / f"{stem}.png", labels)  # PNG, or TIFF for ids beyond what PNG holds


def _write_volume(path: Path, volume: np.ndarray, spacing: Sequence[float] | None) -> Path:
    """Write a volume ``(Z, Y, X)`` or ``(Z, Y, X, C)`` as a zlib TIFF with its spacing (micrometres)."""
    return atomic_write(path, lambda tmp: write_tiff(tmp, volume, spacing, colour=volume.ndim == 4))


def _volume_labels(labels: np.ndarray) -> np.ndarray:
    """Labels of a volume in the smallest unsigned type that holds their ids."""
    largest = int(labels.max(initial=0))
    return labels.astype(np.uint8 if largest <= 255 else np.uint16 if largest <= 65535 else np.uint32)


def add_pair(image, labels, images_dir: str | os.PathLike, masks_dir: str | os.PathLike,
             name: str = "pair", spacing: Sequence[float] | None = None) -> tuple[Path, Path]:
    """Save an image and its labels as a new pair ``images_dir/NAME.tif`` + ``masks_dir/NAME.png`` (or ``.tif``).

    A 2D image (gray or colour) gets a TIFF and its labels a PNG (or a TIFF for very many ids, as
    :func:`~napari_unet_seg.image_io.write_mask` writes them). A volume ``(Z, Y, X)`` or ``(Z, Y, X, C)``
    with labels ``(Z, Y, X)`` gets two volume TIFFs; with ``spacing`` (``Z, Y, X``, taken as micrometres)
    both state it: ImageJ ``spacing`` and resolution (OME-TIFF physical sizes for data types ImageJ
    lacks), so 3D training reads it back; 2D pairs ignore ``spacing``. The two files have the same
    stem, so :func:`~napari_unet_seg.pairing.pair_files` pairs them; images keep their dtype, labels
    their ids (binary training reads every id > 0 as foreground). Each file is written atomically. When
    ``name`` is taken in either folder, ``name-2``, ``name-3``, ... is used: nothing in the folders is
    ever overwritten. Missing folders are created. Returns ``(image_path, mask_path)``.

    Raises:
        UserError: the labels are not 2D or 3D or not of the image's shape, hold no label, the spacing
            is not 3 positive numbers for a volume, or a folder cannot be written.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    image, labels = np.asarray(image), np.asarray(labels)
    volume = _checked(image, labels) == 3
    if volume and spacing is not None:
        spacing = [float(v) for v in spacing]
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            raise UserError(f"voxel spacing {spacing}: give 3 positive numbers (Z, Y, X) for a volume, or none")
    _check_folder(images_dir, "images")
    _check_folder(masks_dir, "masks")
    if images_dir.resolve() == masks_dir.resolve():
        raise UserError(f"images and masks folder are both {images_dir}; choose two different folders")
    stem = fresh_name(_safe_name(name), _taken((images_dir, masks_dir)))
    if volume:
        data = image.astype(np.uint8) if image.dtype == bool else image
        image_path = _write_volume(images_dir / f"{stem}.tif", data, spacing)
    else:
        image_path = _write_image(images_dir / f"{stem}.tif", image)
    try:
        if volume:
            mask_path = _write_volume(masks_dir / f"{stem}.tif", _volume_labels(labels), spacing)
        else:
            mask_path = _write_labels(masks_dir, stem, labels)
    except BaseException:
        image_path.unlink(missing_ok=True)  # an image without its mask would break pairing
        raise
    return image_path, mask_path
