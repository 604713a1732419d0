"""Reading images and masks (TIFF, PNG, JPEG, BMP) and writing predicted masks, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = ["IMAGE_SUFFIXES", "read_image", "write_mask", "write_map", "mask_suffix", "atomic_write", "is_image_file"]

#: File suffixes the readers accept (lower case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names a file with one of :data:`IMAGE_SUFFIXES` (hidden files excluded)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file into a numpy array, as stored (no scaling, no channel reordering).

    Grayscale gives ``(Y, X)``; RGB/RGBA ``(Y, X, 3|4)``; a multi-page TIFF ``(Z, Y, X[, C])``.

    Raises:
        UserError: the path is missing, a folder, of an unsupported type, empty or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file; pass a file or use the folder option")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes); replace it or remove it from the folder")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            array = iio.imread(path)
    except Exception as error:  # every decoder has its own exception types
        raise UserError(f"{path}: cannot be read as an image ({type(error).__name__}: {error}); the file may be "
                        "truncated or corrupt, replace it") from None
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim < 2 or array.size == 0:
        raise UserError(f"{path}: holds no 2D image (shape {array.shape}); the file may be corrupt, replace it")
    return array


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then move it onto ``path``.

    A crash or a kill at any moment leaves either the old file or the new one, never half of one.
    Errors from the file system become a :class:`UserError` that names the folder.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise UserError(f"{path.parent}: cannot write here ({error.strerror}); choose another output folder") from None
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: writing failed ({error.strerror or error}); check free disk space and "
                        "permissions of the output folder") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def mask_suffix(ndim: int, largest: int) -> str:
    """The suffix :func:`write_mask` gives labels of ``ndim`` axes whose largest id is ``largest``."""
    return ".png" if ndim == 2 and largest <= 65535 else ".tif"


def write_mask(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image: PNG (8-bit up to 255, else 16-bit) for 2D labels up to 65535, TIFF (zlib;
    8, 16 or 32-bit) for stacks or more labels (instance ids).

    The suffix of ``path`` is replaced to match the chosen format; the written path is returned.
    """
    path = Path(path)
    labels = np.asarray(labels)
    largest = int(labels.max(initial=0))
    dtype = np.uint8 if largest <= 255 else np.uint16 if largest <= 65535 else np.uint32
    path = path.with_suffix(mask_suffix(labels.ndim, largest))
    if path.suffix == ".png":
        import imageio.v3 as iio

        atomic_write(path, lambda tmp: iio.imwrite(tmp, labels.astype(dtype), extension=".png"))
    else:
        import tifffile

        atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib"))
    return path


def write_map(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Write a float32 map (e.g. uncertainty) as a zlib TIFF at ``path`` (suffix made ``.tif``); return it."""
    import tifffile

    path = Path(path).with_suffix(".tif")
    values = np.asarray(values, dtype=np.float32)
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, values, compression="zlib"))
