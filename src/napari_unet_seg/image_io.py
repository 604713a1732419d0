"""Reading images and masks (TIFF, PNG, JPEG, BMP) and writing predicted masks, atomically.

One reader decides the layout of every file, from what the file says (TIFF axes and photometric, Pillow
modes, EXIF orientation) rather than from the array's shape, and returns it in one of four layouts:
gray ``(Y, X)``, colour ``(Y, X, 3|4)``, a stack ``(Z, Y, X)`` or a colour stack ``(Z, Y, X, 3|4)``.
What it cannot tell apart it refuses in one line that shows the shape it saw.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_image_layout", "read_mask", "clean_mask", "write_mask",
           "write_map", "write_tiff", "mask_suffix", "atomic_write", "is_image_file", "image_stem", "read_spacing",
           "stated_spacing"]

#: File suffixes the readers accept (lower case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

#: Suffixes of lossy formats: a mask stored so carries compression noise.
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with one of :data:`IMAGE_SUFFIXES` or a ``.zarr`` store (a folder); hidden
    ones excluded."""
    from .zarr_io import is_zarr

    if path.name.startswith("."):
        return False
    return path.is_dir() if is_zarr(path) else path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_stem(path: str | os.PathLike) -> str:
    """The name without its image suffixes, as image and mask files pair: ``a.ome.tif`` and ``a.ome.zarr``
    give ``a``."""
    stem = Path(path).stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file into a numpy array (values as stored, no scaling), in its decided layout.

    Gray gives ``(Y, X)``; colour ``(Y, X, 3|4)``; a multi-page TIFF ``(Z, Y, X[, C])`` (see
    :func:`read_image_layout`, which also says whether the last axis is colour); a ``.zarr`` store its
    full-resolution level, read whole.

    Raises:
        UserError: the path is missing, a folder, of an unsupported type, empty, unreadable, or of a
            layout that cannot be told (the message shows the shape and what to save instead).
    """
    return _in_memory(path, read_image_layout(path)[0])


def _in_memory(path: str | os.PathLike, array) -> np.ndarray:
    """``array`` (a lazy zarr level or a numpy array) as a numpy array, refusing one larger than the memory."""
    if isinstance(array, np.ndarray):
        return array
    from .memory import available_ram

    needed, available = array.size * array.dtype.itemsize, available_ram() or 1 << 40
    if needed > available / 2:
        raise UserError(f"{path}: its {'x'.join(map(str, array.shape))} level 0 needs {needed / 2**30:.1f} GiB, more "
                        f"than half the {available / 2**30:.1f} GiB free; crop it (predict reads it block by block)")
    return np.asarray(array)


def read_image_layout(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """``(array, colour)``: the image of :func:`read_image` and whether its last axis holds RGB(A).

    A ``.zarr`` folder gives its full-resolution level as a lazy dask array (:func:`.zarr_io.open_image`).
    """
    from .zarr_io import is_zarr, open_image

    if is_zarr(path):
        array, _, info = open_image(path)
        return array, info.colour
    return _read(_checked_path(path), mask=False)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file as label values: palette (indexed) PNGs give their indices, a gray-valued colour
    file its one channel, a JPEG is cleaned of compression noise (see :func:`clean_mask`).

    Raises:
        UserError: as :func:`read_image`, and for masks that are not labels (see :func:`clean_mask`).
    """
    from .zarr_io import is_zarr

    if is_zarr(path):
        array, colour = read_image_layout(path)
        array, path = _in_memory(path, array), Path(path)
    else:
        path = _checked_path(path)
        array, colour = _read(path, mask=True)
    lossy = _is_lossy(path)
    if colour:
        rgb = array[..., :3]
        if lossy:
            array = rgb.mean(axis=-1).round().astype(array.dtype)
        elif np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            array = rgb[..., 0]
        elif _image_like_values(rgb[..., 0]):
            raise _image_like(str(path), rgb)
        else:
            return array  # a true colour mask: mask_to_classes refuses it in one line
    return clean_mask(array, str(path), lossy=lossy)


#: TIFF compressions that change pixel values: old-style and new-style JPEG, lossy JPEG (DNG), WebP.
_LOSSY_TIFF = (6, 7, 34892, 50001)


def _is_lossy(path: Path) -> bool:
    """Whether the file's pixels went through lossy compression: a JPEG, or a TIFF compressed as one."""
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return True
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return int(tif.pages[0].compression) in _LOSSY_TIFF


def clean_mask(mask: np.ndarray, name: str = "mask", *, lossy: bool = False) -> np.ndarray:
    """``mask`` when it holds label values; a lossy (JPEG) two-level mask thresholded at its mid-level,
    with a warning that names it and the fraction of pixels changed.

    Raises:
        UserError: continuous (non-integer) values, or many grey levels that vary from pixel to pixel
            as an image's do (e.g. the images folder given as masks), or a lossy mask of more than two levels.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind == "f" and np.isfinite(mask).all() and not np.array_equal(mask, np.round(mask)):
        example = float(mask[mask != np.round(mask)].flat[0])
        raise UserError(f"{name}: holds continuous values (e.g. {example:.3g}), not class ids; threshold it "
                        "into a mask of ids (0 background, 1, 2, ... foreground)")
    if mask.size == 0 or mask.dtype.kind not in "uif" or not np.isfinite(mask).all():
        return mask
    low, high = mask.min(), mask.max()
    if low == high or np.unique(mask).size <= 2:
        return mask
    if lossy:
        return _threshold_lossy(mask, name, float(low), float(high))
    if _image_like_values(mask):
        raise _image_like(name, mask)
    return mask


def _image_like_values(mask: np.ndarray) -> bool:
    """Many levels that change from pixel to pixel, as an image's do (labels form regions of one value)."""
    return np.unique(mask).size > 16 and _neighbours_differ(mask) > 0.3


def _image_like(name: str, mask: np.ndarray) -> UserError:
    return UserError(f"{name}: looks like an image, not a mask ({np.unique(mask).size} levels, "
                     f"{_neighbours_differ(mask):.0%} of neighbouring pixels differ); check that the masks folder "
                     "holds masks")


def _threshold_lossy(mask: np.ndarray, name: str, low: float, high: float) -> np.ndarray:
    margin = 0.25 * (high - low)
    near = (np.abs(mask - low) <= margin) | (np.abs(mask - high) <= margin)
    if near.mean() < 0.98:
        raise UserError(f"{name}: a JPEG of {np.unique(mask).size} grey levels, not a two-level mask (an image "
                        "given as mask?); JPEG noise cannot be told from labels, save the masks as PNG")
    middle = (low + high) / 2
    cleaned = np.where(mask > middle, high, low).astype(mask.dtype)
    changed = float(np.mean(cleaned != mask))
    warnings.warn(f"{name}: JPEG mask with compression noise, thresholded at {middle:g}; {changed:.1%} of its "
                  "pixels changed (save masks as PNG, or TIFF without JPEG compression, to keep them exact)",
                  stacklevel=3)
    return cleaned


def _neighbours_differ(mask: np.ndarray) -> float:
    """The fraction of horizontally adjacent pixel pairs whose values differ (labels: few; images: most)."""
    if mask.shape[-1] < 2:
        return 0.0
    return float(np.mean(mask[..., 1:] != mask[..., :-1]))


def _checked_path(path: str | os.PathLike) -> Path:
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
    return path


def _read(path: Path, mask: bool) -> tuple[np.ndarray, bool]:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array, colour = _read_tiff(path, mask)
        else:
            array, colour = _read_pillow(path, mask)
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{path}: too large to decode in the memory available; crop or tile it first") from None
    except Exception as error:  # every decoder has its own exception types
        raise UserError(f"{path}: cannot be read as an image ({type(error).__name__}: {_reason(error)}); the file "
                        "may be truncated or corrupt, replace it") from None
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim < 2 or array.size == 0:
        raise UserError(f"{path}: holds no 2D image (shape {array.shape}); the file may be corrupt, replace it")
    return array, colour


def _reason(error: BaseException) -> str:
    """The first line of a decoder's message, without its advice to install packages."""
    text = (str(error).strip().splitlines() or [""])[0]
    return text.split(" pip install")[0].split(". Please")[0][:200] or "unknown format"


# ------------------------------------------------------------------------------------------------ TIFF


#: TIFF photometric interpretations of colour spaces other than RGB (TIFF 6.0 and its Lab supplements).
_OTHER_COLOUR_SPACES = {5: "CMYK", 8: "CIELab", 9: "ICCLab", 10: "ITULab", 32844: "LogL", 32845: "LogLuv"}


def _read_tiff(path: Path, mask: bool) -> tuple[np.ndarray, bool]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series
        if not series:
            raise UserError(f"{path}: holds no image; the file may be corrupt, replace it")
        shapes = [tuple(s.shape) for s in series]
        if len(set(shapes)) > 1:
            sizes = ", ".join("x".join(map(str, shape)) for shape in shapes[:4])
            raise UserError(f"{path}: holds {len(series)} images of different sizes ({sizes}); only one could be "
                            "read, save each as its own file")
        first = series[0]
        page = first.pages[0] if hasattr(first, "pages") and first.pages else tif.pages[0]
        photometric = int(getattr(page, "photometric", 1) or 0)
        if photometric in _OTHER_COLOUR_SPACES:  # their channels would read as red, green and blue
            raise UserError(f"{path}: is a {_OTHER_COLOUR_SPACES[photometric]} TIFF, not RGB; save it as an RGB "
                            "or a gray image")
        axes = first.axes
        array = first.asarray() if len(series) == 1 else np.stack([s.asarray() for s in series])
        axes = axes if len(series) == 1 else "I" + axes
        alpha = bool(getattr(page, "extrasamples", ()))
        colormap = getattr(page, "colormap", None)
    if photometric == 3 and colormap is not None and not mask:  # palette: indices to colours
        array = (np.moveaxis(np.asarray(colormap), 0, -1)[array] // 257).astype(np.uint8)
        return _decide(path, array, axes + "S", colour=True)
    return _decide(path, array, axes, colour=photometric in (2, 6), alpha=alpha)


def _decide(path: Path, array: np.ndarray, axes: str, *, colour: bool, alpha: bool = False) -> tuple[np.ndarray, bool]:
    """Put the channel axis last (channel-first RGB, ImageJ ``C``) and tell gray, colour, stack and channels apart."""
    channel = next((axes.index(a) for a in "SC" if a in axes), None)
    if channel is not None:
        array = np.moveaxis(array, channel, -1)
        axes = axes.replace(axes[channel], "") + "S"
    elif array.ndim >= 3 and array.shape[-1] <= 4 < min(array.shape[-3:-1]):
        axes = axes[:-1] + "S"  # pages a few pixels wide: a (Y, X, C) array saved page by page
    spatial = array.ndim - int(axes.endswith("S"))
    if spatial > 3 or spatial < 2:
        raise UserError(f"{path}: image shape {array.shape} is not one 2D gray or RGB image, nor one Z stack "
                        f"(axes {axes}); save one of them per file")
    if not axes.endswith("S"):
        return array, False
    count = array.shape[-1]
    if count == 1:
        return array[..., 0], False
    if count == 2 and alpha:
        return array[..., 0], False  # gray + alpha
    if count in (3, 4) and (colour or count == 3 or alpha):
        return array, True
    kind = "(Z, Y, X) stack or an RGB (Z, Y, X, 3) stack" if spatial == 3 else "(Y, X) or an RGB (Y, X, 3) image"
    raise UserError(f"{path}: shape {array.shape} has {count} channels, neither gray nor RGB; save it as a gray "
                    f"{kind} (one channel per file, e.g. with Fiji's Image > Color > Split Channels)")


#: Micrometres per unit of the spacing units TIFF files state (ImageJ ``unit``, OME ``PhysicalSize*Unit``).
_MICRONS = {"nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "\u00b5m": 1.0, "\\u00b5m": 1.0, "micron": 1.0,
            "microns": 1.0, "micrometer": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0}


def read_spacing(path: str | os.PathLike) -> list[float] | None:
    """The pixel or voxel spacing a TIFF states, slowest axis first (``[Z, Y, X]``, or ``[Y, X]`` without a Z
    step), in micrometres when the unit is known (else as stored); None for other files or no statement.

    Read from OME-TIFF ``PhysicalSizeZ/Y/X`` (with their units), else ImageJ ``spacing`` (Z) and ``unit``
    with the ``XResolution``/``YResolution`` tags (pixels per unit; ``ResolutionUnit`` inch or cm).
    """
    return _spacing_and_unit(Path(path))[0]


def stated_spacing(path: str | os.PathLike) -> list[float] | None:
    """:func:`read_spacing` in micrometres where the file names a microscope's unit (OME-TIFF, an ImageJ
    ``unit``, OME-Zarr axis units); None where it does not (a bare resolution tag is often a scanner's dpi)."""
    spacing, stated = _spacing_and_unit(Path(path))
    return spacing if stated else None


def _spacing_and_unit(path: Path) -> tuple[list[float] | None, bool]:
    """The spacing :func:`read_spacing` returns, and whether the file named its unit."""
    from .zarr_io import is_zarr

    if is_zarr(path):
        return _zarr_spacing(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None, False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                spacing = _ome_spacing(tif.ome_metadata)
                if spacing:
                    return spacing, True
            tags = tif.pages[0].tags
            if "XResolution" not in tags or "YResolution" not in tags:
                return None, False
            steps = [v[1] / v[0] for v in (tags[k].value for k in ("YResolution", "XResolution")) if v[0]]
            if len(steps) != 2:
                return None, False
            imagej = tif.imagej_metadata or {}
            resolution_unit = {2: "inch", 3: "cm"}.get(int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags
                                                       else 2)
            named = str(imagej.get("unit", "")).strip().lower()
            z = [float(imagej["spacing"])] if imagej.get("spacing") else []
            return _in_microns(z + steps, named or resolution_unit), named in _MICRONS
    except Exception:  # noqa: BLE001 - a spacing that cannot be read is an unknown one
        return None, False


def _zarr_spacing(path: Path) -> tuple[list[float] | None, bool]:
    """Level 0's ``scale`` of an OME-Zarr image, in micrometres where its axes state a unit (all alike)."""
    from .zarr_io import open_image

    _, spacing, info = open_image(path)
    if spacing is None:
        return None, False
    units = {unit.lower() for unit in info.units if unit}
    unit = units.pop() if len(units) == 1 else None
    return _in_microns(list(spacing), unit), unit in _MICRONS


def _in_microns(values: list[float], unit: str | None) -> list[float]:
    factor = _MICRONS.get(unit or "", 1.0)
    return [float(f"{v * factor:.6g}") for v in values]


def _ome_spacing(xml: str | None) -> list[float] | None:
    """``[Z, Y, X]`` (or ``[Y, X]``) micrometres from the first OME ``Pixels`` element."""
    import xml.etree.ElementTree as ElementTree

    if not xml:
        return None
    pixels = next((e for e in ElementTree.fromstring(xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    values = []
    for axis in "ZYX":
        size = pixels.get(f"PhysicalSize{axis}")
        if size is not None:
            values.append(_in_microns([float(size)], pixels.get(f"PhysicalSize{axis}Unit", "µm").lower())[0])
        elif axis != "Z":
            return None
    return values


# --------------------------------------------------------------------------------------- PNG, JPEG, BMP

_PILLOW_COLOUR = {"RGB": 3, "RGBA": 4, "RGBa": 4, "RGBX": 3}


def _read_pillow(path: Path, mask: bool) -> tuple[np.ndarray, bool]:
    from PIL import Image, ImageOps

    with _pixel_limit_lifted(), Image.open(path) as image:
        _check_memory(path, image)
        deep = _png_16bit_colour(path, image)
        if deep is not None:  # gray+alpha: the gray; RGB(A): colour
            return (deep[..., 0], False) if deep.shape[-1] == 2 else (deep, True)
        image = ImageOps.exif_transpose(image)  # the orientation a viewer shows (a copy, always)
        mode = image.mode
        if mode in ("P", "PA"):
            if mask:
                return np.asarray(image.getchannel(0) if mode == "PA" else image), False
            image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
        elif mode in ("LA", "La", "PA"):
            return np.asarray(image.getchannel(0)), False  # gray + alpha: the gray
        elif mode in ("1",):
            return np.asarray(image.convert("L")) > 0, False
        elif mode not in _PILLOW_COLOUR and mode not in ("L", "I", "F", "I;16", "I;16B", "I;16L"):
            image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
        array = np.asarray(image)
    return array, image.mode in _PILLOW_COLOUR


@contextlib.contextmanager
def _pixel_limit_lifted():
    """Pillow calls images above ~179 M pixels decompression bombs; a file the user named may be that big
    (memory is checked instead, by :func:`_check_memory`)."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _check_memory(path: Path, image) -> None:
    width, height = image.size
    needed = width * height * max(1, len(image.getbands())) * (2 if image.mode.startswith("I;16") else 4)
    from .memory import available_ram

    available = available_ram() or 1 << 40  # no answer: only absurd sizes are refused
    if needed > available:
        raise UserError(f"{path}: a {width}x{height} image needs about {needed / 2**30:.1f} GiB to decode, more "
                        f"than the {available / 2**30:.1f} GiB free; crop or tile it first")


def _png_16bit_colour(path: Path, image) -> np.ndarray | None:
    """A 16-bit colour or gray+alpha PNG decoded with its full values (Pillow would cut them to 8 bits:
    0..999 becomes 0..3), else None."""
    if getattr(image, "format", None) != "PNG":
        return None
    with open(path, "rb") as handle:
        header = handle.read(26)
    if len(header) < 26 or header[24] != 16 or header[25] not in (2, 4, 6):
        return None
    import imagecodecs

    try:
        return imagecodecs.png_decode(path.read_bytes())
    except Exception as error:  # noqa: BLE001  (any decoder failure is a damaged file)
        raise UserError(f"{path}: cannot be read as a 16-bit PNG ({str(error).splitlines()[0]}); the file may "
                        "be truncated or corrupt, replace it") from None


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then move it onto ``path``.

    A crash or a kill at any moment leaves either the old file or the new one, never half of one. The new
    file gets the mode of the file it replaces, else the user's umask (0644 under umask 022). Errors from
    the file system (disk full, no permission; torch reports them as ``RuntimeError``) become a
    :class:`UserError` that names the path; the old file is then untouched.
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
        os.chmod(tmp, _mode_for(path))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, RuntimeError) and not _is_write_failure(error):
            raise
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1][:120]
        raise UserError(f"{path}: writing failed ({reason}); check free disk space and permissions of the "
                        "output folder (any previous file there is unchanged)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _mode_for(path: Path) -> int:
    """The permission bits a file written at ``path`` gets: those of the file it replaces, else 0666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _is_write_failure(error: RuntimeError) -> bool:
    """Whether a ``RuntimeError`` reports a failed write (torch.save: "PytorchStreamWriter failed writing ...")."""
    text = str(error).lower()
    return any(word in text for word in ("writ", "no space", "disk", "errno"))


#: 2D masks above this many pixels are written as TIFF: other programs' Pillow refuses larger PNGs as
#: decompression bombs (its warning limit, ``PIL.Image.MAX_IMAGE_PIXELS``; our reader reads them anyway).
PNG_MAX_PIXELS = 89_478_485


def mask_suffix(ndim: int, largest: int, pixels: int = 0) -> str:
    """The suffix :func:`write_mask` gives labels of ``ndim`` axes and ``pixels`` pixels whose largest id is
    ``largest``."""
    return ".png" if ndim == 2 and largest <= 65535 and pixels <= PNG_MAX_PIXELS else ".tif"


def write_mask(path: str | os.PathLike, labels: np.ndarray, spacing: Sequence[float] | None = None, *,
               named: bool = False) -> Path:
    """Write a label image: PNG (8-bit up to 255, else 16-bit) for 2D labels up to 65535, TIFF (zlib;
    8, 16 or 32-bit) for stacks, more labels (instance ids) or more than :data:`PNG_MAX_PIXELS` pixels.

    The suffix of ``path`` is replaced to match the chosen format, unless ``named`` (the user named the
    file): then a ``.tif``/``.tiff`` name is kept as TIFF, and only labels a PNG cannot hold leave a
    ``.png`` name for a ``.tif`` beside it. TIFFs state ``spacing`` (micrometres, ``[Z,] Y, X``) as
    :func:`write_tiff` does. Returns the written path.
    """
    path = Path(path)
    labels = np.asarray(labels)
    largest = int(labels.max(initial=0))
    dtype = np.uint8 if largest <= 255 else np.uint16 if largest <= 65535 else np.uint32
    suffix = mask_suffix(labels.ndim, largest, labels.size)
    if not (named and path.suffix.lower() in (".tif", ".tiff")):
        path = path.with_suffix(suffix)
    if path.suffix == ".png":
        import imageio.v3 as iio

        atomic_write(path, lambda tmp: iio.imwrite(tmp, labels.astype(dtype), extension=".png"))
    else:
        atomic_write(path, lambda tmp: write_tiff(tmp, labels.astype(dtype), spacing))
    return path


def write_map(path: str | os.PathLike, values: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Write a float32 map (e.g. uncertainty) as a zlib TIFF at ``path`` (suffix made ``.tif``), with
    ``spacing`` as in :func:`write_mask`; return it."""
    path = Path(path).with_suffix(".tif")
    values = np.asarray(values, dtype=np.float32)
    return atomic_write(path, lambda tmp: write_tiff(tmp, values, spacing))


#: Data types an ImageJ TIFF holds (others get their spacing as OME-TIFF physical sizes).
_IMAGEJ_TYPES = (np.uint8, np.uint16, np.float32)


def write_tiff(path: str | os.PathLike, array: np.ndarray, spacing: Sequence[float] | None = None, *,
               colour: bool = False) -> None:
    """Write ``array`` (``[Z,] Y, X``, and a last colour axis if ``colour``) as a zlib TIFF, its axes never
    guessed (a 3-slice stack stays 3 gray planes, not RGB), stating ``spacing`` (micrometres, slowest axis
    first; a ``[Y, X]`` spacing leaves Z unstated): ImageJ ``spacing`` and resolution for the types ImageJ
    holds, OME ``PhysicalSize`` otherwise. :func:`read_spacing` reads both back."""
    import tifffile

    spatial = array.ndim - int(colour)
    options: dict = {"compression": "zlib", "photometric": "rgb" if colour else "minisblack"}
    if spacing and spatial in (2, 3):
        axes = "ZYX"[-spatial:] + ("S" if colour else "")
        steps = dict(zip("XYZ", [float(v) for v in list(spacing)[::-1]][:spatial]))
        if array.dtype.type in _IMAGEJ_TYPES and (not colour or array.dtype == np.uint8):
            z = {"spacing": steps["Z"]} if "Z" in steps else {}
            options.update(imagej=True, resolution=(1 / steps["X"], 1 / steps["Y"]),
                           metadata={"axes": axes, "unit": "micron", **z})
        else:
            options.update(ome=True, metadata={"axes": axes, **{f"PhysicalSize{a}": v for a, v in steps.items()},
                                               **{f"PhysicalSize{a}Unit": "µm" for a in steps}})
    tifffile.imwrite(path, array, **options)
