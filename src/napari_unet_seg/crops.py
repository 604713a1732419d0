"""Patch geometry of both training batch paths (2D and 3D): patch shapes, padding, patch counts, the
corners of crops centred on foreground voxels (nnU-Net's foreground oversampling), and which planes and
axes the augmentation may turn and rotate for a voxel spacing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import UserError

__all__ = ["patch_shape", "spacing_of", "pad_to_patch", "patch_count", "foreground_locations", "centred_corner",
           "coarse_axis", "turn_planes", "ANISOTROPY", "FOREGROUND_CAP"]

#: Voxels are anisotropic when their largest edge exceeds this many times the smallest (nnU-Net's rule).
ANISOTROPY = 3.0

#: At most this many foreground voxels per class and sample are kept as crop centres (evenly spaced).
FOREGROUND_CAP = 10000


def patch_shape(patch_size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    """One patch edge per spatial axis from an int (the same on every axis), a tuple, or None (whole images)."""
    if patch_size is None:
        return None
    if isinstance(patch_size, (int, np.integer)):
        return (int(patch_size),) * spatial_dims
    shape = tuple(int(p) for p in patch_size)
    if len(shape) != spatial_dims:
        raise UserError(f"patch size {shape} has {len(shape)} axes but the images have {spatial_dims}; "
                        "give one size per axis or a single size")
    return shape


def spacing_of(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...] | None:
    """``spacing`` as floats, one per spatial axis (None stays None: isotropic)."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != spatial_dims or min(values) <= 0:
        raise UserError(f"spacing {values} must hold {spatial_dims} positive values, one per axis of the images")
    return values


def pad_to_patch(image: np.ndarray, mask: np.ndarray, shape: tuple[int, ...] | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``image (C, *spatial)`` and ``mask (*spatial)`` zero-padded at the end of each axis to at least ``shape``."""
    if shape is None:
        return image, mask
    pads = [(0, max(0, p - m)) for p, m in zip(shape, mask.shape)]
    if not any(after for _, after in pads):
        return image, mask
    return np.pad(image, [(0, 0), *pads]), np.pad(mask, pads)


def patch_count(mask_shape: tuple[int, ...], shape: tuple[int, ...] | None) -> int:
    """Patches an epoch draws from one sample: about as many as it holds patch volumes (at least one)."""
    if shape is None:
        return 1
    return max(1, round(math.prod(mask_shape) / math.prod(shape)))


def foreground_locations(mask: np.ndarray, cap: int = FOREGROUND_CAP) -> list[np.ndarray]:
    """Coordinates ``(N, ndim)`` int32 of the voxels of each foreground class present in ``mask`` (ids > 0),
    at most ``cap`` per class, evenly spaced through the volume; an empty list without foreground."""
    flat = mask.reshape(-1)
    classes = np.unique(flat)
    found = []
    for value in classes[classes > 0]:
        where = np.flatnonzero(flat == value)
        if len(where) > cap:
            where = where[np.linspace(0, len(where) - 1, cap).astype(np.int64)]
        found.append(np.stack(np.unravel_index(where, mask.shape), axis=1).astype(np.int32))
    return found


def centred_corner(voxel: Sequence[int], jitter: Sequence[int], shape: tuple[int, ...],
                   patch: tuple[int, ...]) -> list[int]:
    """The corner of the ``patch`` crop of an array of ``shape`` centred on ``voxel`` moved by ``jitter``,
    kept inside the array; the voxel stays in the crop while ``|jitter| <= patch // 4``."""
    return [int(min(max(v - p // 2 + j, 0), s - p)) for v, j, s, p in zip(voxel, jitter, shape, patch)]


def coarse_axis(spacing: Sequence[float] | None) -> int | None:
    """The axis of the coarse voxel direction when the voxels are anisotropic (:data:`ANISOTROPY`), else None."""
    if spacing is None or max(spacing) <= ANISOTROPY * min(spacing):
        return None
    return int(np.argmax(spacing))


def turn_planes(shape: tuple[int, ...], spacing: Sequence[float] | None) -> list[tuple[tuple[int, int], bool]]:
    """The planes (negative axis pairs) of 90-degree turns of a patch of ``shape``, each with whether it may
    turn: its two axes have equal extent and equal spacing (None: isotropic)."""
    dims = len(shape)
    axes = [(-2, -1)] if dims == 2 else [(-3, -2), (-3, -1), (-2, -1)]
    spacing = spacing if spacing is not None else (1.0,) * dims
    return [((a, b), shape[a] == shape[b] and math.isclose(spacing[a], spacing[b], rel_tol=1e-3))
            for a, b in axes]
