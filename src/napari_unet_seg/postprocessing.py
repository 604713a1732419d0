"""Post-processing of label arrays: small objects removed, the largest object kept and holes filled, per
class, in 2D or in 3D; and the settings a prediction applies (the caller's, else the model's own choice).

An image ``(Y, X)`` is post-processed in 2D. A volume ``(Z, Y, X)`` is one 3D array (a 3D model's labels):
its objects are 3D connected components and its holes 3D cavities; with ``spatial_dims=2`` each slice is
post-processed as an image instead (a 2D model's stack, segmented slice by slice). Objects are connected by
their faces (4-connected in 2D, 6-connected in 3D), as scikit-image's ``remove_small_objects`` and
SciPy's ``binary_fill_holes`` connect them by default; sizes are counted in pixels (voxels).
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

__all__ = ["postprocess", "labels_dims", "CHOICES", "prediction_settings"]

#: What a prediction applies when neither the caller nor the model file says otherwise. A model file's
#: ``postprocess`` (chosen on validation data by :mod:`.tuning`) overrides these; the caller's options
#: override both.
CHOICES = {"threshold": 0.5, "tta": False, "keep_largest": False, "fill_holes": False}


def prediction_settings(chosen: dict, **given) -> dict:
    """:data:`CHOICES` as a job applies them: each of ``given`` that is not None, else the model's
    ``chosen`` value (its file's ``postprocess``), else the default."""
    return {name: given[name] if given.get(name) is not None else chosen.get(name, default)
            for name, default in CHOICES.items()}


def postprocess(labels: np.ndarray, *, min_size: int = 0, fill_holes: bool = False, keep_largest: bool = False,
                spatial_dims: int | None = None) -> np.ndarray:
    """Remove objects smaller than ``min_size`` pixels (voxels), keep only the largest object (per class),
    and fill holes, per class, in that order.

    ``labels``: class ids ``(Y, X)`` or ``(Z, Y, X)``. ``spatial_dims``: 3 (the default for a volume)
    treats a volume as one, 2 (the default for an image) each of its slices as an image. The input is
    not changed; it is returned as it is when there is nothing to do.

    Raises:
        UserError: labels that are neither 2D nor 3D, or ``spatial_dims=3`` for 2D labels.
    """
    labels = np.asarray(labels)
    spatial_dims = labels_dims(labels, spatial_dims, "post-process")
    steps = (min_size, keep_largest, fill_holes)
    if not any(steps):
        return labels
    if labels.ndim == 3 and spatial_dims == 2:
        return np.stack([_postprocess(plane, *steps) for plane in labels])
    return _postprocess(labels, *steps)


def _postprocess(labels: np.ndarray, min_size: int, keep_largest: bool, fill_holes: bool) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes
    from skimage.morphology import remove_small_objects

    out = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        region = labels == value
        if min_size:
            kept = remove_small_objects(region, max_size=min_size - 1) if _has_max_size() else \
                remove_small_objects(region, min_size=min_size)
            out[region & ~kept] = 0
            region = kept
        if keep_largest:
            kept = _largest(region)
            out[region & ~kept] = 0
            region = kept
        if fill_holes:
            out[binary_fill_holes(region) & (out == 0)] = value
    return out


def _largest(region: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean array (the array itself when it holds one or none)."""
    from scipy.ndimage import label

    components, count = label(region)
    if count <= 1:
        return region
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(sizes.argmax())


def _has_max_size() -> bool:
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def labels_dims(labels: np.ndarray, spatial_dims: int | None, action: str) -> int:
    """2 or 3: how labels ``(Y, X)`` or ``(Z, Y, X)`` are processed (``spatial_dims``, or their own
    dimensions when None; 2 on a volume is slice by slice).

    Raises:
        UserError: labels that are neither 2D nor 3D, or 3 for 2D labels (``action`` names the job).
    """
    if labels.ndim not in (2, 3):
        raise UserError(f"labels of shape {labels.shape}: expected an image (Y, X) or a volume (Z, Y, X)")
    dims = labels.ndim if spatial_dims is None else spatial_dims
    if dims not in (2, 3) or dims > labels.ndim:
        raise UserError(f"cannot {action} labels of shape {labels.shape} in {dims}D; "
                        "use 2 for images and slice-by-slice stacks, 3 for volumes")
    return dims
