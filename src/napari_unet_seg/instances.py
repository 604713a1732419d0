"""Instance labels: one id per object from a binary foreground mask, so touching objects can be told apart.

``components`` numbers the connected regions (scikit-image ``measure.label``); ``watershed`` splits
touching objects at the necks of the foreground's distance transform (peaks of the distance are the
seeds, scikit-image ``watershed`` floods from them inside the foreground).
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

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
                    min_distance: int = 5, offset: int = 0) -> np.ndarray:
    """int32 instance ids (0 background, ``offset + 1`` upwards) of a binary mask ``(Y, X)`` or stack ``(Z, Y, X)``.

    ``labels``: 0/1 (or bool) foreground of a binary model. ``mode``: ``components`` or ``watershed``
    (seeds at least ``min_distance`` pixels apart; with ``probability``, the foreground probability of
    the same shape, the distance is weighted by it so a dip between touching objects deepens their
    border). Stacks are split slice by slice with ids unique across the stack.

    Raises:
        UserError: class ids above 1 (a multi-class model's labels), a shape mismatch or a bad option.
    """
    labels = np.asarray(labels)
    check_instances(mode, 2, min_distance)
    if mode == "none":
        raise UserError("instances none gives no instance labels; use components or watershed")
    if labels.max(initial=0) > 1:
        raise UserError(f"labels hold class ids up to {int(labels.max())}: instances split the 0/1 foreground "
                        "of binary models only; use a binary model")
    if probability is not None and np.shape(probability) != labels.shape:
        raise UserError(f"probability {np.shape(probability)} does not match labels {labels.shape}; "
                        "pass the foreground probability of the same image")
    if labels.ndim == 3:
        out = np.zeros(labels.shape, dtype=np.int32)
        for z in range(labels.shape[0]):
            out[z] = instance_labels(labels[z], None if probability is None else probability[z], mode=mode,
                                     min_distance=min_distance, offset=offset)
            offset = max(offset, int(out[z].max()))
        return out
    if labels.ndim != 2:
        raise UserError(f"labels of shape {labels.shape}: expected 2D (Y, X) or a stack (Z, Y, X)")
    ids = _split(labels > 0, probability, mode, min_distance).astype(np.int32)
    if offset:
        ids[ids > 0] += offset
    return ids


def _split(mask: np.ndarray, probability: np.ndarray | None, mode: str, min_distance: int) -> np.ndarray:
    from skimage.measure import label

    components = label(mask)
    if mode == "components" or not mask.any():
        return components
    from scipy.ndimage import distance_transform_edt
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = distance_transform_edt(mask)
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
