"""Training data: decode pairs once into memory, check them, split them, and serve augmented patches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError, size_text
from .image_io import read_image, read_mask
from .normalization import is_rgb, normalize, to_channels_first
from .pairing import Pair

__all__ = ["Sample", "mask_to_classes", "is_volume", "prepare_groups", "read_pairs", "load_samples",
           "samples_from_arrays", "split_indices",
           "build_augmentation", "PatchDataset"]


@dataclass
class Sample:
    """One decoded, normalized example: ``image`` ``(C, *spatial)`` float16, ``mask`` ``(*spatial)`` uint8 class
    ids; spatial is ``(Y, X)`` or, for 3D training, ``(Z, Y, X)``."""

    name: str
    image: np.ndarray
    mask: np.ndarray


def mask_to_classes(mask: np.ndarray, classes: int, name: str = "mask", spatial_dims: int | None = 2) -> np.ndarray:
    """Class ids ``(Y, X)`` (or ``(Z, Y, X)``) uint8 from a mask file's array.

    Binary (``classes == 2``): foreground is ``mask > 0`` (0/255, 0/1 and label images all work).
    Multi-class: values must be ids ``0 .. classes - 1``. A colour mask is accepted only when its
    channels are equal. ``spatial_dims``: 2 (one image), 3 (a volume) or None (either).
    """
    mask = np.asarray(mask)
    if (is_rgb(mask) and spatial_dims != 3) or (mask.ndim == 4 and mask.shape[-1] in (3, 4) and spatial_dims != 2):
        rgb = mask[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise UserError(f"{name}: is a colour (RGB) mask; save it as a single-channel image of class ids "
                            "(0 background, 1, 2, ... foreground)")
        mask = rgb[..., 0]
    if spatial_dims == 3 and mask.ndim != 3:
        raise UserError(f"{name}: a mask for 3D training must be one volume (Z, Y, X), got shape {mask.shape}")
    if mask.ndim != 2 and (spatial_dims == 2 or mask.ndim != 3):
        raise UserError(f"{name}: a mask must be one 2D image, got shape {mask.shape}")
    if not np.isfinite(mask).all():
        raise UserError(f"{name}: holds NaN or infinite values; masks must hold class ids")
    if classes == 2:
        if np.issubdtype(mask.dtype, np.signedinteger) or np.issubdtype(mask.dtype, np.floating):
            low = mask.min(initial=0)
            if low < 0:  # an "ignore" label (-1) would silently train as background
                raise UserError(f"{name}: holds negative values (e.g. {low:g}); masks must hold class ids (0 "
                                "background, 1, 2, ... foreground), with no ignore label")
        return (mask > 0).astype(np.uint8)
    values = np.unique(mask)
    bad = values[(values < 0) | (values >= classes) | (values != np.round(values))]
    if bad.size:
        raise UserError(f"{name}: holds values {bad[:5].tolist()} outside the class ids 0..{classes - 1}; "
                        f"check --classes {classes} or the mask")
    return mask.astype(np.uint8)


def _resize(array: np.ndarray, size: int, order: int) -> np.ndarray:
    from skimage.transform import resize

    shape = (array.shape[0], size, size) if array.ndim == 3 else (size, size)
    out = resize(array, shape, order=order, preserve_range=True, anti_aliasing=order > 0, mode="edge")
    return out.astype(array.dtype) if order == 0 else out.astype(np.float32)


def is_volume(image: np.ndarray) -> bool:
    """Whether ``image`` is a stack: ``(Z, Y, X)`` or a colour stack ``(Z, Y, X, 3|4)``."""
    return image.ndim == 4 or (image.ndim == 3 and not is_rgb(image))


def _prepare(name: str, image: np.ndarray, mask: np.ndarray, *, in_channels: int, classes: int,
             normalization: dict, resize: int | None) -> Sample:
    image = np.asarray(image)
    if image.ndim == 2 and in_channels == 3:
        image = np.repeat(image[..., None], 3, axis=-1)
    if not (image.ndim == 2 or (image.ndim == 3 and is_rgb(image))):
        raise UserError(f"{name}: image shape {image.shape} is not one 2D gray or RGB image; "
                        "split stacks (Z, Y, X) into one file per slice")
    labels = mask_to_classes(mask, classes, f"{name} (mask)")
    if labels.shape != image.shape[:2]:
        raise UserError(f"{name}: image is {size_text(image.shape[:2])} but its mask is "
                        f"{size_text(labels.shape)}; they must have the same size")
    channels = normalize(to_channels_first(image, in_channels, name=name), normalization)
    if resize:
        channels = _resize(channels, resize, order=1)
        labels = _resize(labels, resize, order=0)
    return Sample(name, channels.astype(np.float16), labels)


def _prepare_volume(name: str, image: np.ndarray, mask: np.ndarray, *, in_channels: int, classes: int,
                    normalization: dict) -> Sample:
    """A volume ``(Z, Y, X[, C])`` and its mask as one 3D sample, normalized over the whole volume."""
    image = np.asarray(image)
    if not is_volume(image):
        raise UserError(f"{name}: image shape {image.shape} is a 2D image, not a volume (Z, Y, X); 3D training "
                        "needs stacks (or use --spatial-dims 2)")
    if image.shape[0] < 2:
        raise UserError(f"{name}: volume of shape {image.shape} has {image.shape[0]} slice; 3D training needs at "
                        "least 2 (or use --spatial-dims 2)")
    labels = mask_to_classes(mask, classes, f"{name} (mask)", spatial_dims=3)
    if labels.shape != image.shape[:3]:
        raise UserError(f"{name}: image volume is {size_text(image.shape[:3])} but its mask "
                        f"is {size_text(labels.shape)}; they must match in every axis")
    if image.ndim == 4:
        image = image[..., :3]
        image = image.astype(np.float32).mean(axis=-1)[None] if in_channels == 1 else np.moveaxis(image, -1, 0)
    else:
        image = np.repeat(image[None], in_channels, axis=0)
    return Sample(name, normalize(image, normalization).astype(np.float16), labels)


def _slices(name: str, image: np.ndarray, mask: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """A stack and its mask as per-slice pairs ``(name[z], image[z], mask[z])``; a 2D pair as itself."""
    image, mask = np.asarray(image), np.asarray(mask)
    if not is_volume(image):
        return [(name, image, mask)]
    if mask.shape[0] != image.shape[0] or mask.ndim < 3:
        raise UserError(f"{name}: image stack is {size_text(image.shape[:3])} but its mask "
                        f"is {size_text(mask.shape)}; they must match in every axis")
    return [(f"{name}[z={z}]", image[z], mask[z]) for z in range(image.shape[0])]


def _channels_of(images: Sequence[np.ndarray], spatial_dims: int = 2) -> int:
    if spatial_dims == 3:
        return 3 if any(np.asarray(im).ndim == 4 and np.asarray(im).shape[-1] in (3, 4) for im in images) else 1
    return 3 if any(is_rgb(np.asarray(im)[0] if is_volume(np.asarray(im)) else np.asarray(im))
                    for im in images) else 1


def prepare_groups(decoded: Sequence[tuple[str, np.ndarray, np.ndarray]], *, classes: int, normalization: dict,
                   resize: int | None = None, in_channels: int | None = None, spatial_dims: int = 2,
                   slices: bool = False) -> tuple[list[list[Sample]], int]:
    """The samples of each ``(name, image, mask)`` (one list per pair) and the input channels.

    ``spatial_dims=3``: each pair is one volume sample. ``2``: each pair one 2D sample; with ``slices``
    each slice of a stack becomes its own sample (2D training on volumes), else stacks are refused.
    """
    channels = in_channels or _channels_of([d[1] for d in decoded], spatial_dims if not slices else 2)
    if spatial_dims == 3:
        return [[_prepare_volume(n, im, m, in_channels=channels, classes=classes, normalization=normalization)]
                for n, im, m in decoded], channels
    groups = []
    for name, image, mask in decoded:
        parts = _slices(name, image, mask) if slices else [(name, image, mask)]
        groups.append([_prepare(n, im, m, in_channels=channels, classes=classes, normalization=normalization,
                                resize=resize) for n, im, m in parts])
    return groups, channels


def read_pairs(pairs: Sequence[Pair]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(image file name, image, mask)`` of each pair, as read."""
    return [(p.image.name, read_image(p.image), read_mask(p.mask)) for p in pairs]


def load_samples(pairs: Sequence[Pair], *, classes: int, normalization: dict, resize: int | None = None,
                 in_channels: int | None = None, spatial_dims: int = 2, slices: bool = False
                 ) -> tuple[list[Sample], int]:
    """Decode and check every pair; return the samples and the number of input channels (1 or 3).

    Gray and colour images may be mixed: then gray images are repeated to three channels.
    ``spatial_dims=3``: every file is a volume ``(Z, Y, X)`` or colour volume ``(Z, Y, X, C)``;
    ``slices`` (2D): the slices of stacks are the samples (see :func:`prepare_groups`).
    """
    groups, channels = prepare_groups(read_pairs(pairs), classes=classes, normalization=normalization,
                                      resize=resize, in_channels=in_channels, spatial_dims=spatial_dims,
                                      slices=slices)
    return [s for group in groups for s in group], channels


def samples_from_arrays(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, classes: int, normalization: dict,
                        resize: int | None = None, in_channels: int | None = None,
                        names: Sequence[str] | None = None, spatial_dims: int = 2, slices: bool = False
                        ) -> tuple[list[Sample], int]:
    """As :func:`load_samples`, for images and label arrays already in memory (e.g. napari layers)."""
    names = list(names or [f"array {i}" for i in range(len(pairs))])
    groups, channels = prepare_groups([(n, im, m) for n, (im, m) in zip(names, pairs)], classes=classes,
                                      normalization=normalization, resize=resize, in_channels=in_channels,
                                      spatial_dims=spatial_dims, slices=slices)
    return [s for group in groups for s in group], channels


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(count)`` into train and validation indices.

    At least one sample goes to each side when ``count >= 2`` and ``val_fraction > 0``; a single
    sample serves both (there is nothing else to validate on).
    """
    if count == 0:
        raise UserError("no training pairs: the folders hold no usable image/mask pair")
    order = np.random.default_rng(seed).permutation(count).tolist()
    if val_fraction <= 0:
        return order, []
    if count == 1:
        return order, order
    n_val = validation_count(count, val_fraction)
    return sorted(order[n_val:]), sorted(order[:n_val])


def validation_count(count: int, val_fraction: float) -> int:
    """How many of ``count`` samples :func:`split_indices` keeps for validation (0 for one or none)."""
    if count < 2 or val_fraction <= 0:
        return 0
    return min(count - 1, max(1, int(round(count * val_fraction))))


def build_augmentation(preset: str, patch_size: int | Sequence[int], spatial_dims: int = 2,
                       spacing: Sequence[float] | None = None):
    """MONAI dictionary transforms for ``{"image", "mask"}`` channel-first arrays; None for ``none``.

    ``light``: flips, 90-degree rotations, a mild affine (rotation, shift, zoom, shear, as Keras'
    ImageDataGenerator) and intensity jitter. ``strong``: wider ranges, contrast, noise and elastic.
    ``spatial_dims=3``: the same for volumes (``patch_size`` an int or one size per axis; ``spacing``
    per axis, None: isotropic), as :func:`~napari_unet_seg.device_batches.augment_batch` makes them:
    flips on every axis, turns in the planes of equal extent and spacing, rotation about the coarse
    axis only when the voxels are anisotropic, ``Rand3DElasticd``.
    """
    if preset == "none":
        return None
    if spatial_dims == 3:
        return _augmentation_3d(preset, patch_size, spacing)
    from monai import transforms as T

    keys = ["image", "mask"]
    strong = preset == "strong"
    affine = T.RandAffined(keys, prob=0.5 if strong else 0.3, mode=("bilinear", "nearest"), padding_mode="reflection",
                           rotate_range=math.pi / (6 if strong else 12), shear_range=0.15 if strong else 0.05,
                           translate_range=patch_size * (0.1 if strong else 0.05),
                           scale_range=0.2 if strong else 0.1)
    steps = [
        T.RandFlipd(keys, prob=0.5, spatial_axis=0),
        T.RandFlipd(keys, prob=0.5, spatial_axis=1),
        T.RandRotate90d(keys, prob=0.5),
        affine,
        T.RandScaleIntensityd("image", factors=0.2 if strong else 0.1, prob=0.5),
        T.RandShiftIntensityd("image", offsets=0.2 if strong else 0.1, prob=0.5),
    ]
    if strong:
        steps += [
            T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
            T.RandGaussianNoised("image", std=0.03, prob=0.3),
            T.Rand2DElasticd(keys, spacing=(patch_size // 4,) * 2, magnitude_range=(1, 3), prob=0.2,
                             mode=("bilinear", "nearest"), padding_mode="reflection"),
        ]
    return T.Compose(steps)


def _augmentation_3d(preset: str, patch_size: int | Sequence[int], spacing: Sequence[float] | None):
    """The 3D transforms of :func:`build_augmentation`."""
    from monai import transforms as T

    from .crops import coarse_axis, patch_shape, spacing_of, turn_planes

    keys, strong = ["image", "mask"], preset == "strong"
    patch, spacing = patch_shape(patch_size, 3), spacing_of(spacing, 3)
    coarse = coarse_axis(spacing)
    rotate = [math.pi / (6 if strong else 12) if coarse in (None, axis) else 0.0 for axis in range(3)]
    # MONAI's 3D shear coefficients, in the order of its matrix entries (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    shear = [(0.15 if strong else 0.05) if coarse not in (a, b) else 0.0
             for a in range(3) for b in range(3) if a != b]
    steps = [T.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    steps += [T.RandRotate90d(keys, prob=0.5, spatial_axes=(a + 3, b + 3))
              for (a, b), allowed in turn_planes(patch, spacing) if allowed]
    steps += [
        T.RandAffined(keys, prob=0.5 if strong else 0.3, mode=("bilinear", "nearest"), padding_mode="reflection",
                      rotate_range=rotate, shear_range=shear, scale_range=[0.2 if strong else 0.1] * 3,
                      translate_range=[p * (0.1 if strong else 0.05) for p in patch]),
        T.RandScaleIntensityd("image", factors=0.2 if strong else 0.1, prob=0.5),
        T.RandShiftIntensityd("image", offsets=0.2 if strong else 0.1, prob=0.5),
    ]
    if strong:
        # uniform(-1, 1) offsets smoothed by a gaussian of sigma voxels: this gain gives a field of about 1-3 voxels
        sigma = max(2.0, min(patch) / 8)
        gain = (2 * math.sqrt(math.pi) * sigma) ** 1.5 * math.sqrt(3)
        steps += [
            T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
            T.RandGaussianNoised("image", std=0.03, prob=0.3),
            T.Rand3DElasticd(keys, sigma_range=(sigma, sigma), magnitude_range=(gain, 3 * gain), prob=0.2,
                             mode=("bilinear", "nearest"), padding_mode="reflection"),
        ]
    return T.Compose(steps)


class PatchDataset(torch.utils.data.Dataset):
    """Random ``patch_size`` crops of 2D or 3D samples (zero-padded where a sample is smaller), augmented.

    ``patch_size``: an int (every axis), one size per spatial axis, or None for the whole (resized)
    images. One epoch draws about as many patches from each sample as it holds patch volumes, so every
    voxel is seen about once an epoch whatever the sample size. Each crop is centred on a random
    foreground voxel (as :class:`~napari_unet_seg.device_batches.DeviceBatches` does) with chance
    ``foreground``.
    """

    def __init__(self, samples: Sequence[Sample], patch_size: int | Sequence[int] | None, augmentation=None,
                 seed: int = 0, *, foreground: float = 0.0) -> None:
        from .crops import foreground_locations, patch_count, patch_shape

        self.samples = list(samples)
        self.patch_size = patch_size
        self.patch = patch_shape(patch_size, self.samples[0].mask.ndim if self.samples else 2)
        self.augmentation = augmentation
        self.foreground = foreground
        self.reseed(seed)
        self.index = []
        for i, s in enumerate(self.samples):
            self.index += [i] * patch_count(s.mask.shape, self.patch)
        use = foreground > 0 and self.patch is not None
        self.locations = [foreground_locations(s.mask) if use else [] for s in self.samples]

    def reseed(self, seed: int) -> None:
        """Restart the crop and augmentation random streams from ``seed``."""
        self.rng = np.random.default_rng(seed)
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed=seed % 2**32)

    def __len__(self) -> int:
        return len(self.index)

    def _crop(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        from .crops import centred_corner, pad_to_patch

        sample, patch = self.samples[self.index[item]], self.patch
        if patch is None:
            return sample.image, sample.mask
        image, mask = pad_to_patch(sample.image, sample.mask, patch)
        locations = self.locations[self.index[item]]
        if self.foreground > 0 and self.rng.random() < self.foreground and locations:
            found = locations[self.rng.integers(len(locations))]
            voxel = found[self.rng.integers(len(found))].tolist()
            corner = centred_corner(voxel, [self.rng.integers(-(p // 4), p // 4 + 1) for p in patch],
                                    mask.shape, patch)
        else:
            corner = [self.rng.integers(0, s - p + 1) for s, p in zip(mask.shape, patch)]
        window = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        return image[(slice(None), *window)], mask[window]

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._crop(item)
        image = np.ascontiguousarray(image, dtype=np.float32)
        mask = np.ascontiguousarray(mask[None], dtype=np.float32)
        if self.augmentation is not None:
            out = self.augmentation({"image": image, "mask": mask})
            image, mask = out["image"], out["mask"]
        return torch.as_tensor(np.asarray(image), dtype=torch.float32), torch.as_tensor(np.asarray(mask),
                                                                                       dtype=torch.float32)
