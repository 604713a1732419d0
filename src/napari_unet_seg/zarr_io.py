"""OME-Zarr in and out: an image's full-resolution level read lazily, labels written beside it.

:func:`open_image` gives level 0 of an OME-Zarr image (or a plain zarr array) as a dask array: nothing is
read until a part of it is indexed, so a volume larger than memory is predicted chunk by chunk.
:func:`labels_writer` yields a chunked zarr array that becomes ``image.zarr/labels/<name>``, an OME-Zarr
labels group (``image-label`` metadata, multiscales with the image's scale and levels), once it is filled;
the image's own arrays and metadata are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

__all__ = ["ZARR_SUFFIX", "ZarrInfo", "is_zarr", "open_image", "labels_writer", "read_labels"]

ZARR_SUFFIX = ".zarr"
_SPATIAL = "zyx"


@dataclass(frozen=True)
class ZarrInfo:
    """What :func:`open_image` read: the kept ``axes`` (spatial, then ``c`` for colour), ``colour``,
    the number of pyramid ``levels``, level 0's ``path`` inside the store (``""`` for a plain array),
    the spatial ``units`` (None where not stated), the store's ``zarr_format`` and level 0's ``chunks``."""

    axes: str
    colour: bool
    levels: int
    path: str
    units: tuple[str | None, ...]
    zarr_format: int
    chunks: tuple[int, ...]


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` folder, by its suffix)."""
    return Path(path).suffix.lower() == ZARR_SUFFIX


def _open(path: Path, mode: str = "r") -> Any:
    import zarr

    if not path.exists():
        raise UserError(f"{path}: no such zarr folder; check the path")
    try:
        return zarr.open(str(path), mode=mode)
    except Exception as error:  # noqa: BLE001 - zarr's errors differ by format and store
        raise UserError(f"{path}: not a zarr store ({type(error).__name__}); give an OME-Zarr image folder "
                        "(e.g. written by ome-zarr, bioformats2raw or napari)") from None


def _ome(group: Any) -> dict:
    """The OME metadata of a group (zarr v3 keeps it under ``ome``)."""
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def _multiscale(path: Path, group: Any) -> dict:
    meta = _ome(group)
    if "multiscales" not in meta:
        kind = next((k for k in ("plate", "well", "labels") if k in meta), None)
        what = f"an OME-Zarr {kind}, not an image" if kind else "not an OME-Zarr image (no multiscales metadata)"
        raise UserError(f"{path}: {what}; give the folder of one image (the one holding multiscales)")
    scales = meta["multiscales"]
    if not isinstance(scales, list) or not scales or not scales[0].get("datasets"):
        raise UserError(f"{path}: its multiscales metadata lists no resolution level; the store is incomplete")
    return scales[0]


def _axes(path: Path, scale: dict, ndim: int) -> list[dict]:
    """The axes as ``{"name", "type", "unit"}`` dicts (OME-NGFF 0.1/0.2 had none: ``tczyx``)."""
    axes = scale.get("axes") or (list("tczyx") if ndim == 5 else None)
    if axes is None or len(axes) != ndim:
        raise UserError(f"{path}: its axes metadata ({axes}) does not match level 0's {ndim} dimensions; the "
                        "store is inconsistent")
    kinds = {"t": "time", "c": "channel"}
    out = []
    for axis in axes:
        axis = {"name": axis} if isinstance(axis, str) else dict(axis)
        name = str(axis.get("name", "")).lower()
        axis["type"] = axis.get("type") or kinds.get(name, "space" if name in _SPATIAL else None)
        out.append(axis)
    return out


def _level_scale(scale: dict, dataset: dict, ndim: int) -> list[float] | None:
    """Level 0's voxel size per axis: its ``scale`` transform times the multiscales-wide one, if any."""
    found = None
    for transforms in (dataset.get("coordinateTransformations"), scale.get("coordinateTransformations")):
        for transform in transforms or ():
            if transform.get("type") == "scale" and len(transform.get("scale", ())) == ndim:
                values = [float(v) for v in transform["scale"]]
                found = values if found is None else [a * b for a, b in zip(found, values)]
    return found


def open_image(path: str | os.PathLike) -> tuple[Any, tuple[float, ...] | None, ZarrInfo]:
    """``(array, spacing, info)`` of an OME-Zarr image's full-resolution level, or of a plain zarr array.

    ``array`` is a lazy dask array ``(Y, X)``, ``(Z, Y, X)`` or with a last colour axis of 3 (a channel axis
    moved last); a time or channel axis of size 1 is dropped. ``spacing`` is level 0's voxel size along the
    kept spatial axes (``(z, y, x)`` or ``(y, x)``; the ``scale`` transform), None for a plain array.

    Raises:
        UserError: not a zarr store, not an image (no multiscales, a plate), level 0 missing, axes that do
            not match it, several time points, a channel count other than 1 or 3, or not 2D or 3D.
    """
    import dask.array as da
    import zarr

    path = Path(path)
    node = _open(path)
    if isinstance(node, zarr.Array):
        return _plain(path, node)
    scale = _multiscale(path, node)
    dataset = scale["datasets"][0]
    level = str(dataset.get("path", ""))
    try:
        array = node[level]
    except (KeyError, FileNotFoundError):
        array = None
    if not isinstance(array, zarr.Array):
        raise UserError(f"{path}: level 0 ({level!r}) named in its multiscales metadata is missing; the store "
                        "is incomplete (copy it again)")
    axes = _axes(path, scale, array.ndim)
    sizes = _level_scale(scale, dataset, array.ndim)
    index = _selection(path, axes, array.shape)
    data = da.from_zarr(array)[index]
    kept = [i for i, part in enumerate(index) if isinstance(part, slice)]
    names = [axes[i]["type"] for i in kept]
    spatial = [i for i in kept if axes[i]["type"] == "space"]
    if len(spatial) not in (2, 3):
        raise UserError(f"{path}: level 0 has {len(spatial)} spatial axes; expected a 2D image or a 3D (z, y, x) "
                        "volume")
    colour = "channel" in names
    if colour:
        data = da.moveaxis(data, names.index("channel"), -1)
    info = ZarrInfo(axes="".join(str(axes[i]["name"]).lower() for i in spatial) + ("c" if colour else ""),
                    colour=colour, levels=len(scale["datasets"]), path=level,
                    units=tuple(axes[i].get("unit") for i in spatial), zarr_format=_format(node),
                    chunks=tuple(array.chunks))
    spacing = None if sizes is None else tuple(sizes[i] for i in spatial)
    return data, spacing, info


def _selection(path: Path, axes: list[dict], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """The index into level 0 that drops its time and channel axes of size 1; refuses several time
    points, channel counts other than 1 and 3, and axes of other types."""
    index: list[Any] = []
    for axis, count in zip(axes, shape):
        kind = axis["type"]
        if kind == "time" and count > 1:
            raise UserError(f"{path}: holds {count} time points; segment one at a time (save one time point "
                            "as its own image)")
        if kind == "channel" and count not in (1, 3):
            raise UserError(f"{path}: has {count} channels; models take one gray channel or 3 (RGB): save the "
                            "channel to segment as its own image")
        if kind not in ("time", "channel", "space"):
            raise UserError(f"{path}: axis {axis.get('name')!r} of type {kind!r} is not time, channel or space; "
                            "save the image with t, c, z, y, x axes")
        index.append(0 if kind != "space" and count == 1 else slice(None))
    return tuple(index)


def _plain(path: Path, array: Any) -> tuple[Any, None, ZarrInfo]:
    """A zarr array without OME metadata: ``(Y, X)``, ``(Z, Y, X)``, or either with a last axis of 3 or 4."""
    import dask.array as da

    from .normalization import is_rgb

    colour = is_rgb(np.empty(array.shape[-3:], dtype=np.uint8)) if array.ndim >= 3 else False
    spatial = array.ndim - int(colour)
    if spatial not in (2, 3):
        raise UserError(f"{path}: a zarr array of shape {array.shape}, neither 2D, colour nor one (Z, Y, X) volume; "
                        "save one image per array (or as OME-Zarr with its axes)")
    axes = _SPATIAL[3 - spatial:] + ("c" if colour else "")
    return da.from_zarr(array), None, ZarrInfo(axes, colour, 1, "", (None,) * spatial, _format(array),
                                               tuple(array.chunks))


def _format(node: Any) -> int:
    return int(node.metadata.zarr_format)


# ------------------------------------------------------------------------------------------------ labels

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def _labels_target(image: Path, name: str, overwrite: bool) -> tuple[Any, dict, Path]:
    """``(image group, level-0 multiscale entry, labels folder)``, after checking the name and the image."""
    import zarr

    if not _NAME.fullmatch(name or ""):
        raise UserError(f"labels group name {name!r}: use letters, digits, '_', '-' and '.', starting with a "
                        "letter or digit")
    group = _open(image, mode="r+")
    if not isinstance(group, zarr.Group):
        raise UserError(f"{image}: a plain zarr array has no place for a labels group; save the image as "
                        "OME-Zarr, or write the mask to a file with --output")
    if not image.is_dir():
        raise UserError(f"{image}: labels groups are written into a zarr folder on disk; give a local folder")
    scale = _multiscale(image, group)
    folder = image / "labels" / name
    listed = name in _ome(group["labels"]).get("labels", []) if "labels" in group else False
    if (folder.exists() or listed) and not overwrite:
        raise UserError(f"{folder}: a labels group of that name exists already; pass --overwrite to replace it, "
                        "or choose another name")
    return group, scale, folder


def _label_axes(scale: dict, dataset: dict, ndim: int, spatial: int) -> tuple[list[dict], list[dict]]:
    """The labels' axes and level-0 transforms: the image's spatial axes, their scale and translation."""
    every = _axes(Path("image"), scale, ndim)
    keep = [i for i, a in enumerate(every) if a["type"] == "space"][-spatial:]
    axes = [every[i] for i in keep]
    transforms = []
    for transform in dataset.get("coordinateTransformations") or ():
        key = transform.get("type")
        if key in ("scale", "translation") and len(transform.get(key, ())) == ndim:
            transforms.append({"type": key, key: [float(transform[key][i]) for i in keep]})
    if not any(t["type"] == "scale" for t in transforms):
        transforms.insert(0, {"type": "scale", "scale": [1.0] * spatial})
    return [{k: v for k, v in a.items() if k in ("name", "type", "unit")} for a in axes], transforms


@contextmanager
def labels_writer(image_path: str | os.PathLike, name: str, shape: tuple[int, ...], dtype: Any = np.uint8,
                  chunks: tuple[int, ...] | None = None, overwrite: bool = False) -> Iterator[Any]:
    """Yield a zarr array of ``shape`` (the image's spatial shape) to fill, block by block; when the
    ``with`` block ends, it becomes the OME-Zarr labels group ``image.zarr/labels/<name>``, with a pyramid
    level (nearest) for each lower level of the image.

    It is written in a hidden folder beside the other labels and moved into place only once filled, so
    an error or Ctrl-C leaves the image as it was (an existing group of that name too). ``chunks``
    default to level 0's spatial chunks.

    Raises:
        UserError: a bad name, an image that is not an OME-Zarr image folder, a shape that is not its
            spatial shape, an existing labels group of that name without ``overwrite``, or a failed write
            (disk full, no permission).
    """
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import CurrentFormat, add_metadata, write_multiscales_metadata

    image = Path(image_path)
    group, scale, folder = _labels_target(image, name, overwrite)
    array, _, info = open_image(image)
    spatial = len(info.axes) - int(info.colour)
    if tuple(shape) != tuple(array.shape[:spatial]):
        raise UserError(f"labels of shape {tuple(shape)} do not fit {image} (spatial shape "
                        f"{tuple(array.shape[:spatial])}); predict the whole level 0")
    dataset = scale["datasets"][0]
    axes, transforms = _label_axes(scale, dataset, group[info.path].ndim, spatial)
    chunks = tuple(chunks or _spatial_chunks(group[info.path], scale, spatial))
    fmt = FormatV04() if info.zarr_format == 2 else CurrentFormat()
    created = "labels" not in group
    labels = group.require_group("labels")
    staging = f".{name}.partial-{os.getpid()}"
    shutil.rmtree(folder.parent / staging, ignore_errors=True)
    try:
        part = labels.create_group(staging)
        out = part.create_array("0", shape=tuple(shape), dtype=dtype, chunks=chunks, fill_value=0)
        yield out
        datasets = _pyramid(part, out, group, scale, info.path, transforms)
        write_multiscales_metadata(part, datasets, fmt=fmt, axes=axes, name=name)
        add_metadata(part, {"image-label": {"version": fmt.version, "source": {"image": "../../"}}}, fmt=fmt)
        _move_into_place(folder.parent / staging, folder)
        names = [n for n in _ome(labels).get("labels", []) if n != name]
        add_metadata(labels, {"labels": names + [name]}, fmt=fmt)
    except BaseException as error:
        if created:  # nothing of this job stays in the image
            shutil.rmtree(folder.parent, ignore_errors=True)
        if isinstance(error, OSError):
            raise UserError(f"{folder}: writing failed ({error.strerror or error}); check free disk space and "
                            "permissions (the image and its labels are unchanged)") from None
        raise
    finally:
        shutil.rmtree(folder.parent / staging, ignore_errors=True)


def _pyramid(part: Any, out: Any, group: Any, scale: dict, level0: str, transforms: list[dict]) -> list[dict]:
    """The labels' datasets: level 0, then one level per lower level of the image, of that level's spatial
    shape, taking every f-th voxel (nearest, as labels are downsampled), read and written chunk by chunk."""
    import dask.array as da
    import zarr

    datasets = [{"path": "0", "coordinateTransformations": transforms}]
    spatial = out.ndim
    source = da.from_zarr(out)
    for index, entry in enumerate(scale["datasets"][1:], start=1):
        level = group.get(str(entry.get("path", "")))
        if not isinstance(level, zarr.Array) or level.ndim != group[level0].ndim:
            break
        shape = _spatial_chunks(level, scale, spatial, level.shape)
        factors = [max(1, round(a / b)) for a, b in zip(out.shape, shape)]
        lower = source[tuple(slice(0, None, f) for f in factors)][tuple(slice(0, n) for n in shape)]
        target = part.create_array(str(index), shape=lower.shape, dtype=out.dtype, fill_value=0,
                                   chunks=tuple(min(c, n) for c, n in zip(out.chunks, lower.shape)))
        da.store(lower.rechunk(target.chunks), target, lock=False)
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "scale", "scale": [v * f for v, f in zip(t["scale"], factors)]} if t["type"] == "scale" else t
            for t in transforms]})
    return datasets


def _spatial_chunks(array: Any, scale: dict, spatial: int, sizes: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The spatial entries of ``sizes`` (default: the array's chunks) along the image's axes."""
    kinds = [a["type"] for a in _axes(Path("image"), scale, array.ndim)]
    return tuple(c for c, kind in zip(sizes or array.chunks, kinds) if kind == "space")[-spatial:]


def _move_into_place(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by ``staging``: the old one is moved aside first and removed last."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def read_labels(image_path: str | os.PathLike, name: str) -> Any:
    """Level 0 of the labels group ``name`` of an OME-Zarr image, as a lazy dask array."""
    return open_image(Path(image_path) / "labels" / name)[0]
