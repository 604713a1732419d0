"""Pairing image files with mask files by stem, across the naming schemes of common data sets."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .image_io import image_stem, is_image_file

__all__ = ["MASK_SUFFIXES", "Pair", "mask_key", "list_images", "pair_files", "shorten_names"]

#: Stem endings that mark a mask file (ISIC ``_segmentation``/``_Segmentation``, PH2 ``_lesion``, ...).
MASK_SUFFIXES = ("_mask", "_masks", "_seg", "_segmentation", "_lesion", "_label", "_labels", "_gt")


@dataclass(frozen=True)
class Pair:
    """One training example: an image file and its mask file."""

    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return self.image.stem


def mask_key(stem: str) -> str:
    """The image stem a mask stem belongs to: ``ISIC_0000000_Segmentation`` -> ``ISIC_0000000``."""
    lower = stem.lower()
    for suffix in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def list_images(folder: str | os.PathLike, what: str = "images") -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Raises:
        UserError: the folder does not exist, is a file, or holds no image file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{what} folder {folder}: does not exist; check the path")
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder}: is a file, not a folder")
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        found = f"; found only other types ({shorten_names(others, 3)}), convert them" if others else ""
        inside = "; it is itself a zarr store: give the folder that holds it" if (folder / "zarr.json").is_file() \
            or (folder / ".zgroup").is_file() or (folder / ".zarray").is_file() else ""
        raise UserError(f"{what} folder {folder}: holds no image file (.tif, .png, .jpg, .bmp, .zarr){inside or found}")
    return files


def _index(files: list[Path], key, what: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        k = key(image_stem(path))
        if k in index:
            raise UserError(f"{what}: {index[k].name} and {path.name} have the same stem {k!r}; keep one of them")
        index[k] = path
    return index


def pair_files(images: str | os.PathLike, masks: str | os.PathLike, *, skip_unpaired: bool = False) -> list[Pair]:
    """Pair every image in ``images`` with its mask in ``masks``.

    A mask pairs with an image when its stem is the image's stem, optionally followed by one of
    :data:`MASK_SUFFIXES` (any case); extensions may differ (``IMD002.bmp`` with ``IMD002_lesion.png``).

    Raises:
        UserError: unpaired files (listed) unless ``skip_unpaired``, in which case they are skipped
            with a warning; duplicate stems; empty folders.
    """
    if Path(images).is_dir() and Path(masks).is_dir() and os.path.samefile(images, masks):
        raise UserError(f"images folder {images} and masks folder {masks} are the same folder, so each image "
                        "would pair with itself; put the masks in a folder of their own")
    image_files = list_images(images, "images")
    mask_files = list_images(masks, "masks")
    by_image = _index(image_files, lambda s: s, f"images folder {images}")
    # An exact stem match wins over a suffix-stripped one (the ISBI layout: same name in both folders).
    by_mask: dict[str, Path] = {}
    for path in mask_files:
        stem = image_stem(path)
        key = stem if stem in by_image else mask_key(stem)
        if key in by_mask:
            raise UserError(f"masks folder {masks}: {by_mask[key].name} and {path.name} both belong to image "
                            f"{key!r}; keep one of them")
        by_mask[key] = path
    pairs = [Pair(by_image[k], by_mask[k]) for k in sorted(by_image) if k in by_mask]
    lonely_images = sorted(by_image[k].name for k in by_image if k not in by_mask)
    lonely_masks = sorted(by_mask[k].name for k in by_mask if k not in by_image)
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) without mask: {shorten_names(lonely_images)}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) without image: {shorten_names(lonely_masks)}")
        message = f"images {images}, masks {masks}: " + "; ".join(parts)
        if not pairs:
            raise UserError(f"{message} (no pair at all: are these the right folders?); a mask is named as its "
                            f"image, optionally with {', '.join(MASK_SUFFIXES[:3])}, ... after the stem")
        if not skip_unpaired:
            raise UserError(f"{message}; add the missing files or pass --skip-unpaired")
        warnings.warn(f"skipping unpaired files: {message}", stacklevel=2)
    return pairs


def shorten_names(names: list[str], most: int = 5) -> str:
    """The first ``most`` names, comma-separated, and how many more there are."""
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")
