"""Instance labels: one id per object from a binary foreground mask, so touching objects can be told apart.

``components`` numbers the connected regions (scikit-image ``measure.label``); ``watershed`` splits
touching objects at the necks of the foreground's distance transform (peaks of the distance are the
seeds, scikit-image ``watershed`` floods from them inside the foreground).

A volume ``(Z, Y, X)`` is split in 3D (a 3D model's labels), or slice by slice with ids unique across the
stack (``spatial_dims=2``: a 2D model's). Components are fully connected: 8-connected in 2D and
26-connected in 3D (faces, edges and corners), as ``measure.label`` connects by default, so that an object
predict numbers as one is the object :mod:`.evaluation` counts as one in a binary result, and a thin
structure crossing the sections obliquely (anisotropic EM) stays one object; touching objects are what
``watershed`` is for. With a voxel ``spacing`` the distance transform is measured in physical units, so
the seeds follow the objects' true shape, not their shape in voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import UserError
from .postprocessing import labels_dims

__all__ = ["INSTANCE_MODES", "check_instances", "instance_labels"]

#: The ``instances`` options of ``predict``: class labels as they are, connected components, watershed.
INSTANCE_MODES = ("none", "components", "watershed")


def check_instances(mode: str, num_classes: int = 2, min_distance: int = 1) -> None:
    """Refuse an unknown mode, a ``min_distance`` below 1, and instances of multi-class models."""
    if mode not in INSTANCE_MODES:
        raise UserError(f"instances {mode!r} is unknown; use {', '.join(INSTANCE_MODES)}")
    if min_distance < 1:
        raise UserError(f"min distance must be at least 1 pixel, got {min_distance}")
    if mode != "none" and num_classes != 2:
        raise UserError(f"instances need a binary model, this one has {num_classes} classes; "
                        "use instances none (or a binary model)")


def instance_labels(labels: np.ndarray, probability: np.ndarray | None = None, *, mode: str = "watershed",
                    min_distance: int = 5, offset: int = 0, spatial_dims: int | None = None,
                    spacing: Sequence[float] | None = None) -> np.ndarray:
    """int32 instance ids (0 background, ``offset + 1`` upwards) of a binary mask ``(Y, X)`` or volume ``(Z, Y, X)``.

    ``labels``: 0/1 (or bool) foreground of a binary model. ``mode``: ``components`` or ``watershed``
    (seeds at least ``min_distance`` pixels, or voxels, apart; with ``probability``, the foreground
    probability of the same shape, the distance is weighted by it so a dip between touching objects
    deepens their border). ``spatial_dims``: 3 (the default for a volume) splits a volume in 3D, 2 each
    slice on its own with ids unique across the stack. ``spacing``: the pixel (voxel) size per axis,
    slowest first, for the watershed's distance transform (a 3-axis spacing serves the slices as its last
    two); unknown spacing counts every axis as 1.

    Raises:
        UserError: class ids above 1 (a multi-class model's labels), a shape mismatch or a bad option.
    """
    labels = np.asarray(labels)
    check_instances(mode, 2, min_distance)
    if mode == "none":
        raise UserError("instances none gives no instance labels; use components or watershed")
    spatial_dims = labels_dims(labels, spatial_dims, "split")
    if labels.max(initial=0) > 1:
        raise UserError(f"labels hold class ids up to {int(labels.max())}: instances split the 0/1 foreground "
                        "of binary models only; use a binary model")
    if probability is not None and np.shape(probability) != labels.shape:
        raise UserError(f"probability {np.shape(probability)} does not match labels {labels.shape}; "
                        "pass the foreground probability of the same image")
    sampling = _sampling(spacing, spatial_dims)
    if labels.ndim == 3 and spatial_dims == 2:
        out = np.zeros(labels.shape, dtype=np.int32)
        for z in range(labels.shape[0]):
            out[z] = instance_labels(labels[z], None if probability is None else probability[z], mode=mode,
                                     min_distance=min_distance, offset=offset, spacing=sampling)
            offset = max(offset, int(out[z].max()))
        return out
    ids = _split(labels > 0, probability, mode, min_distance, sampling).astype(np.int32)
    if offset:
        ids[ids > 0] += offset
    return ids


def _sampling(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...] | None:
    """The spacing of the arrays split (its last ``spatial_dims`` values), checked."""
    if spacing is None:
        return None
    values = tuple(float(v) for v in spacing)
    if len(values) not in (2, 3) or len(values) < spatial_dims or not all(np.isfinite(values)) \
            or min(values) <= 0:
        raise UserError(f"spacing {list(spacing)} is not a positive size per axis (z, y, x or y, x) of "
                        f"{spatial_dims}D labels; give one positive number per axis")
    return values[-spatial_dims:]


def _split(mask: np.ndarray, probability: np.ndarray | None, mode: str, min_distance: int,
           sampling: tuple[float, ...] | None) -> np.ndarray:
    from skimage.measure import label

    components = label(mask)
    if mode == "components" or not mask.any():
        return components
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = _distance(components, sampling)
    if probability is not None:
        distance = distance * np.asarray(probability, dtype=np.float64)
    # One seed per plateau of peaks; every component has at least one (its distance maximum).
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    seeds = np.zeros(mask.shape, dtype=bool)
    seeds[tuple(peaks.T)] = True
    ids = watershed(-distance, label(seeds), mask=mask)
    unseeded = mask & (ids == 0)  # a component without a peak (all its weights 0) stays one object
    if unseeded.any():
        ids[unseeded] = label(unseeded)[unseeded] + ids.max()
    return ids


def _distance(components: np.ndarray, sampling: tuple[float, ...] | None) -> np.ndarray:
    """The Euclidean distance of each foreground pixel (voxel) to the background, as SciPy's
    ``distance_transform_edt`` of the whole mask gives it, computed object by object in its bounding box
    grown by one: far fewer voxels to visit in a volume of sparse objects. The same values, since the voxel
    nearest to a fully connected object outside it is background (a nearer one of another object would be
    a neighbour of this one), and lies in the grown box."""
    from scipy.ndimage import distance_transform_edt, find_objects

    distance = np.zeros(components.shape, dtype=np.float64)
    for index, box in enumerate(find_objects(components), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(axis.start - 1, 0), axis.stop + 1) for axis in box)
        inside = components[grown] == index
        distance[grown][inside] = distance_transform_edt(inside, sampling=sampling)[inside]
    return distance
