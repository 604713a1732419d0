"""Intensity normalization and channel layout; the settings travel inside every model file."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UserError

__all__ = ["NORMALIZATIONS", "default_normalization", "intensity_range", "normalize", "to_channels_first", "is_rgb"]

#: ``percentile``: per image, (x - p_low) / (p_high - p_low); ``minmax``: per image; ``none``: as float.
from .config import NORMALIZATIONS  # noqa: E402  (the choice lists live in config)


def default_normalization(method: str = "percentile") -> dict[str, Any]:
    """The normalization record stored in model files."""
    if method not in NORMALIZATIONS:
        raise UserError(f"normalization {method!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    return {"method": method, "low": 1.0, "high": 99.8}


def is_rgb(array: np.ndarray) -> bool:
    """Whether the last axis of ``array`` holds RGB(A) colour channels (``(..., Y, X, 3|4)``)."""
    return array.ndim >= 3 and array.shape[-1] in (3, 4) and min(array.shape[-3:-1]) > 4


def to_channels_first(image: np.ndarray, in_channels: int, *, rgb: bool | None = None,
                      name: str = "image") -> np.ndarray:
    """One 2D image as ``(C, Y, X)`` with ``C == in_channels``.

    Gray ``(Y, X)`` and colour ``(Y, X, 3|4)`` are accepted (alpha is dropped). A colour image given
    to a 1-channel model is converted to gray (channel mean); a gray image given to a 3-channel model
    is refused, because the model was trained on colour.
    """
    image = np.asarray(image)
    colour = is_rgb(image) if rgb is None else rgb
    if colour:
        if image.ndim != 3:
            raise UserError(f"{name}: expected one colour image (Y, X, 3), got shape {image.shape}")
        image = image[..., :3]
        if in_channels == 1:
            return image.astype(np.float32).mean(axis=-1)[None]
        return np.moveaxis(image, -1, 0)
    if image.ndim != 2:
        raise UserError(f"{name}: expected a 2D image (Y, X) or colour (Y, X, 3), got shape {image.shape}; "
                        "pass stacks slice by slice through predict()")
    if in_channels != 1:
        raise UserError(f"{name}: is grayscale but the model expects {in_channels} colour channels; "
                        "use a model trained on grayscale images, or convert the image to RGB")
    return image[None]


#: Images larger than this many values are measured on an even subsample (the percentiles of 4 M values
#: of a huge image are those of the whole to well under 1 %; the full sort would cost a copy of it).
STATS_SAMPLE = 4_000_000


def intensity_range(image: np.ndarray, normalization: dict[str, Any]) -> dict[str, float]:
    """``{"low", "high", "fill"}`` of a ``(C, Y, X)`` image under ``normalization``: the values mapped to 0
    and 1, and the one that replaces NaN/inf. Pass the result to :func:`normalize` to scale parts of a
    large image (blocks) exactly as the whole."""
    image = np.asarray(image)
    step = max(1, int(np.ceil(np.sqrt(image.size / STATS_SAMPLE))))
    sample = np.asarray(image[..., ::step, ::step], dtype=np.float32)
    finite = np.isfinite(sample)
    fill = 0.0
    if not finite.all():
        fill = float(np.median(sample[finite])) if finite.any() else 0.0
        sample = sample[finite] if finite.any() else np.zeros(1, np.float32)
    method = normalization.get("method", "percentile")
    if method == "none":
        return {"low": 0.0, "high": 1.0, "fill": fill}
    if method == "percentile":
        low, high = np.percentile(sample, [normalization.get("low", 1.0), normalization.get("high", 99.8)])
    elif method == "minmax":  # exact over the whole image where that needs no float copy
        low, high = (image.min(), image.max()) if image.dtype.kind in "iub" else (sample.min(), sample.max())
    else:
        raise UserError(f"normalization {method!r} is unknown; use one of {', '.join(NORMALIZATIONS)}")
    return {"low": float(low), "high": float(high), "fill": fill}


def normalize(image: np.ndarray, normalization: dict[str, Any], value_range: dict[str, float] | None = None
              ) -> np.ndarray:
    """Scale ``(C, Y, X)`` intensities to about [0, 1] as ``float32``; NaN and inf become finite.

    Percentiles are taken over the whole image (all channels together, so colours keep their
    balance), or given as ``value_range`` (:func:`intensity_range`). A constant image gives zeros,
    never a division by zero.
    """
    stats = value_range or intensity_range(image, normalization)
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        image = np.where(finite, image, np.float32(stats["fill"])).astype(np.float32)
    if normalization.get("method", "percentile") == "none":
        return image
    scale = stats["high"] - stats["low"]
    if scale <= 1e-12:
        return np.zeros_like(image)
    return (image - np.float32(stats["low"])) / np.float32(scale)
