"""Training batches made where the network runs: cached images, random crops and batched augmentation.

The decoded training images are copied to the device once; each batch is cropped there and augmented
as a whole (a few batched kernels: flips, 90-degree rotations, one ``grid_sample`` for the affine and
elastic warps, intensity changes) instead of patch by patch on the host as the DataLoader path does
with MONAI's dictionary transforms. The augmentation ranges are those of
:func:`napari_unet_seg.dataset.build_augmentation`. ``benchmarks/bench_train.py`` measures both paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .crops import (centred_corner, coarse_axis, foreground_locations, pad_to_patch, patch_count, patch_shape,
                    spacing_of, turn_planes)
from .dataset import Sample

__all__ = ["DeviceBatches", "augment_batch", "fits_on_device"]

#: The training images may use this share of the GPU's free memory; larger sets use the DataLoader path.
DEVICE_SHARE = 0.25


def fits_on_device(samples: Sequence[Sample], device: torch.device) -> bool:
    """Whether the decoded samples (float16 images, uint8 masks) fit in :data:`DEVICE_SHARE` of free memory."""
    if device.type != "cuda":
        return True
    size = sum(s.image.size * 2 + s.mask.size for s in samples)
    free, _ = torch.cuda.mem_get_info(device)
    return size < DEVICE_SHARE * free


def _chance(count: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator) < p


def _uniform(count: int, spread: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(count, generator=generator) * 2 - 1) * spread


def _warp_grid(count: int, size: tuple[int, int], strong: bool, generator: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Sampling grids of the random affine (and, for ``strong``, elastic) warps of the samples they move, and
    which samples those are."""
    height, width = size
    affine = _chance(count, 0.5 if strong else 0.3, generator)
    elastic = _chance(count, 0.2, generator) if strong else torch.zeros(count, dtype=torch.bool)
    if not (affine.any() or elastic.any()):
        return None
    angle = _uniform(count, math.pi / (6 if strong else 12), generator)
    shear = _uniform(count, 0.15 if strong else 0.05, generator)
    zoom = 1 + _uniform(count, 0.2 if strong else 0.1, generator)
    shift = _uniform(count * 2, 0.1 if strong else 0.05, generator).view(count, 2) * 2  # normalized units
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / zoom, (-sin + shear * cos) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = sin / zoom, (cos + shear * sin) / zoom
    theta[:, :, 2] = shift
    theta[~affine] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    moved = affine | elastic
    grid = F.affine_grid(theta[moved].to(device), [int(moved.sum()), 1, height, width], align_corners=False)
    if elastic.any():  # a coarse random displacement field of 1-3 pixels, smoothly upsampled
        magnitude = 1 + 2 * torch.rand(count, generator=generator)
        coarse = torch.randn(count, 2, 5, 5, generator=generator) * magnitude.view(count, 1, 1, 1)
        coarse[~elastic] = 0
        field = F.interpolate(coarse[moved].to(device), size=(height, width), mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1) * 2 / torch.tensor([width, height], device=device)
    return grid, moved


def _rotation_3d(count: int, spread: float, axis: int | None, generator: torch.Generator) -> torch.Tensor:
    """Random rotations ``(count, 3, 3)`` in (z, y, x) order: about ``axis`` only, or about all three axes."""
    rotation = torch.eye(3).repeat(count, 1, 1)
    for about in ((axis,) if axis is not None else (0, 1, 2)):
        angle = _uniform(count, spread, generator)
        first, second = [a for a in range(3) if a != about]
        turn = torch.eye(3).repeat(count, 1, 1)
        turn[:, first, first], turn[:, first, second] = torch.cos(angle), -torch.sin(angle)
        turn[:, second, first], turn[:, second, second] = torch.sin(angle), torch.cos(angle)
        rotation = turn @ rotation
    return rotation


def _warp_grid_3d(count: int, size: tuple[int, int, int], strong: bool, spacing: Sequence[float] | None,
                  generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """As :func:`_warp_grid` for ``(D, H, W)`` patches: rotation, shear, zoom and shift in physical units
    (voxels times ``spacing``; None: isotropic), and the elastic field. When the voxels are anisotropic the
    rotation, shear and elastic field stay in the plane across the coarse axis."""
    affine = _chance(count, 0.5 if strong else 0.3, generator)
    elastic = _chance(count, 0.2, generator) if strong else torch.zeros(count, dtype=torch.bool)
    if not (affine.any() or elastic.any()):
        return None
    spacing = torch.tensor(spacing if spacing is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
    coarse = coarse_axis(spacing.tolist())
    rotation = _rotation_3d(count, math.pi / (6 if strong else 12), coarse, generator)
    shear = torch.eye(3).repeat(count, 1, 1)
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b and coarse not in (a, b)]
    for a, b in pairs:
        shear[:, a, b] = _uniform(count, 0.15 if strong else 0.05, generator)
    zoom = 1 + _uniform(count, 0.2 if strong else 0.1, generator)
    shift = _uniform(count * 3, 0.1 if strong else 0.05, generator).view(count, 3) * 2  # normalized units
    # the warp in physical units about the patch centre, expressed in normalized (z, y, x) coordinates
    half = torch.tensor(size, dtype=torch.float32) / 2 * spacing
    matrix = (rotation @ shear) / zoom.view(count, 1, 1)
    matrix = matrix / half.view(1, 3, 1) * half.view(1, 1, 3)
    matrix[~affine] = torch.eye(3)
    shift[~affine] = 0
    theta = torch.cat([matrix.flip(1, 2), shift.flip(1)[:, :, None]], dim=2)  # affine_grid wants (x, y, z)
    moved = affine | elastic
    grid = F.affine_grid(theta[moved].to(device), [int(moved.sum()), 1, *size], align_corners=False)
    if elastic.any():  # a coarse random field of 1-3 voxels (of the finest axis; none along a coarse axis)
        magnitude = 1 + 2 * torch.rand(count, generator=generator)
        field = torch.randn(count, 3, 5, 5, 5, generator=generator) * magnitude.view(count, 1, 1, 1, 1)
        reach = spacing.min() / spacing
        if coarse is not None:
            reach[coarse] = 0
        field = field * reach.view(1, 3, 1, 1, 1)
        field[~elastic] = 0
        field = F.interpolate(field[moved].to(device), size=size, mode="trilinear", align_corners=True)
        scale = 2 / torch.tensor(size[::-1], dtype=torch.float32, device=device)
        grid = grid + field.flip(1).permute(0, 2, 3, 4, 1) * scale
    return grid, moved


def _flip_and_turn(images: torch.Tensor, masks: torch.Tensor, flips: torch.Tensor, turns: torch.Tensor,
                   planes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample flipped on the axes ``flips (B, dims)`` marks, then turned ``turns (B, planes)`` times
    90 degrees in each of ``planes``: one copy per sample and operation (not per batch)."""
    out_images, out_masks = [], []
    for image, mask, flip, turn in zip(images, masks, flips.tolist(), turns.tolist()):
        axes = [axis + 1 for axis, chosen in enumerate(flip) if chosen]  # axes of (C, *spatial)
        if axes:
            image, mask = image.flip(axes), mask.flip(axes)
        for plane, k in zip(planes, turn):
            if k:
                image, mask = torch.rot90(image, k, plane), torch.rot90(mask, k, plane)
        out_images.append(image)
        out_masks.append(mask)
    return torch.stack(out_images), torch.stack(out_masks)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, preset: str, generator: torch.Generator,
                  spacing: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch ``(B, C, *spatial)`` float images and ``(B, 1, *spatial)`` float class-id masks
    together, in 2D ``(Y, X)`` or 3D ``(Z, Y, X)``.

    ``light``/``strong``: random flips on every axis, 90-degree rotations (in the planes whose axes have
    equal patch extent and equal ``spacing``; None: isotropic), an affine warp (rotation, shear, zoom,
    shift; in 3D the rotation is about the coarse axis only when the voxels are anisotropic; reflection
    at the border; (tri)linear for images, nearest for masks), intensity scale and shift; ``strong``
    also gamma contrast, gaussian noise and an elastic warp. The random parameters come from the CPU
    ``generator`` (so a seed gives the same batches on every device).
    """
    if preset == "none":
        return images, masks
    strong = preset == "strong"
    count, device = images.shape[0], images.device
    spatial = tuple(images.shape[2:])
    view = (-1,) + (1,) * (images.dim() - 1)
    flips = torch.stack([_chance(count, 0.5, generator) for _ in spatial], dim=1)
    planes = turn_planes(spatial, spacing)
    turns = torch.stack([torch.randint(1, 4, (count,), generator=generator) * _chance(count, 0.5, generator)
                         for _ in planes], dim=1)
    turns[:, [not allowed for _, allowed in planes]] = 0
    if flips.any() or turns.any():
        images, masks = _flip_and_turn(images, masks, flips, turns, [plane for plane, _ in planes])
    if len(spatial) == 2:
        warp = _warp_grid(count, spatial, strong, generator, device)
    else:
        warp = _warp_grid_3d(count, spatial, strong, spacing, generator, device)
    if warp is not None:
        grid, moved = warp
        index = moved.nonzero().flatten().to(device)
        images, masks = images.clone(), masks.clone()
        images[index] = F.grid_sample(images[index], grid, mode="bilinear", padding_mode="reflection",
                                      align_corners=False)
        masks[index] = F.grid_sample(masks[index], grid, mode="nearest", padding_mode="reflection",
                                     align_corners=False)

    def per_sample(values: torch.Tensor, chosen: torch.Tensor, neutral: float) -> torch.Tensor:
        return torch.where(chosen, values, torch.full_like(values, neutral)).to(device).view(view)

    images = images * per_sample(1 + _uniform(count, 0.2 if strong else 0.1, generator),
                                 _chance(count, 0.5, generator), 1.0)
    images = images + per_sample(_uniform(count, 0.2 if strong else 0.1, generator),
                                 _chance(count, 0.5, generator), 0.0)
    if strong:
        gamma = per_sample(0.7 + torch.rand(count, generator=generator) * 0.8, _chance(count, 0.3, generator), 1.0)
        reduce = tuple(range(1, images.dim()))
        low = images.amin(dim=reduce, keepdim=True)
        span = (images.amax(dim=reduce, keepdim=True) - low).clamp_min(1e-7)
        images = ((images - low) / span) ** gamma * span + low
        noisy = per_sample(torch.ones(count), _chance(count, 0.3, generator), 0.0)
        noise = torch.randn(images.shape, generator=generator).to(device)
        images = images + noisy * 0.03 * noise
    return images, masks


class DeviceBatches:
    """The training epochs of ``samples`` (2D or 3D) as batches made on ``device``.

    An epoch draws as many random ``patch_size`` crops (an int for every axis, one size per spatial
    axis, or None for the whole, equally sized images; zero-padded where a sample is smaller) as
    :class:`~napari_unet_seg.dataset.PatchDataset` does, in a seeded random order. ``foreground`` is
    the share of each batch's crops centred (with a jitter of up to a quarter patch) on a random voxel
    of a random foreground class of their sample (nnU-Net oversamples 0.33); samples without
    foreground get random crops. ``spacing`` (voxel size per axis; None: isotropic) guides the
    augmentation's 90-degree turns and rotations in 3D.
    """

    def __init__(self, samples: Sequence[Sample], patch_size: int | Sequence[int] | None, augment: str,
                 device: torch.device, *, foreground: float = 0.0, spacing: Sequence[float] | None = None) -> None:
        self.augment, self.device, self.foreground = augment, device, foreground
        self.spatial_dims = samples[0].mask.ndim if samples else 2
        self.spacing = spacing_of(spacing, self.spatial_dims)
        self.patch = patch_shape(patch_size, self.spatial_dims)
        self.images, self.masks, self.index, self.locations = [], [], [], []
        for i, sample in enumerate(samples):
            image, mask = pad_to_patch(sample.image, sample.mask, self.patch)
            self.images.append(torch.from_numpy(np.ascontiguousarray(image)).to(device))
            self.masks.append(torch.from_numpy(np.ascontiguousarray(mask)).to(device))
            self.locations.append(foreground_locations(sample.mask) if foreground > 0 and self.patch else [])
            self.index += [i] * patch_count(sample.mask.shape, self.patch)

    def __len__(self) -> int:
        return len(self.index)

    def batch_count(self, batch_size: int, world: int = 1) -> int:
        """Batches in an epoch of each of ``world`` processes."""
        return math.ceil(math.ceil(len(self.index) / world) / batch_size)

    def _forced(self, count: int, generator: torch.Generator) -> set[int]:
        """Which of a batch's ``count`` crops are centred on foreground: ``foreground * count`` of them,
        rounded up or down at random so that the share is exact on average."""
        if self.foreground <= 0 or self.patch is None:
            return set()
        chosen = int(self.foreground * count + float(torch.rand(1, generator=generator)))
        return set(torch.randperm(count, generator=generator)[:chosen].tolist())

    def _corner(self, sample: int, forced: bool, generator: torch.Generator) -> list[int]:
        shape, patch = tuple(self.masks[sample].shape), self.patch
        locations = self.locations[sample]
        if forced and locations:
            found = locations[int(torch.randint(0, len(locations), (1,), generator=generator))]
            voxel = found[int(torch.randint(0, len(found), (1,), generator=generator))]
            jitter = [int(torch.randint(-(p // 4), p // 4 + 1, (1,), generator=generator)) for p in patch]
            return centred_corner(voxel.tolist(), jitter, shape, patch)
        return [int(torch.randint(0, s - p + 1, (1,), generator=generator)) for s, p in zip(shape, patch)]

    def epoch(self, batch_size: int, seed: int, rank: int = 0, world: int = 1
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches ``(images (B, C, *patch), masks (B, 1, *patch))``, float32 on the device, of one epoch.

        ``seed`` orders the epoch; process ``rank`` of ``world`` takes every ``world``-th item of that
        order (padded to equal shares, as ``DistributedSampler`` does) and draws its own crops and
        augmentation from ``seed * world + rank``.
        """
        order = torch.randperm(len(self.index), generator=torch.Generator().manual_seed(seed)).tolist()
        order = (order * world)[:math.ceil(len(order) / world) * world][rank::world]
        generator = torch.Generator().manual_seed(seed * world + rank)
        for start in range(0, len(order), batch_size):
            items = order[start:start + batch_size]
            forced = self._forced(len(items), generator)
            images, masks = [], []
            for position, item in enumerate(items):
                sample = self.index[item]
                image, mask = self.images[sample], self.masks[sample]
                if self.patch is not None:
                    corner = self._corner(sample, position in forced, generator)
                    window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
                    image, mask = image[(slice(None), *window)], mask[window]
                images.append(image)
                masks.append(mask)
            batch = torch.stack(images).float(), torch.stack(masks)[:, None].float()
            yield augment_batch(*batch, self.augment, generator, spacing=self.spacing)
