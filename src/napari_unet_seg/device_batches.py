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
    """Sampling grid of the random affine (and, for ``strong``, elastic) warps, and which samples it moves."""
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
    grid = F.affine_grid(theta.to(device), [count, 1, height, width], align_corners=False)
    if elastic.any():  # a coarse random displacement field of 1-3 pixels, smoothly upsampled
        magnitude = 1 + 2 * torch.rand(count, generator=generator)
        coarse = torch.randn(count, 2, 5, 5, generator=generator) * magnitude.view(count, 1, 1, 1)
        coarse[~elastic] = 0
        field = F.interpolate(coarse.to(device), size=(height, width), mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1) * 2 / torch.tensor([width, height], device=device)
    return grid, affine | elastic


def augment_batch(images: torch.Tensor, masks: torch.Tensor, preset: str, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch ``(B, C, Y, X)`` float images and ``(B, 1, Y, X)`` float class-id masks together.

    ``light``/``strong``: random flips, 90-degree rotations (square patches), an affine warp (rotation,
    shear, zoom, shift; reflection at the border; bilinear for images, nearest for masks), intensity
    scale and shift; ``strong`` also gamma contrast, gaussian noise and an elastic warp. The random
    parameters come from the CPU ``generator`` (so a seed gives the same batches on every device).
    """
    if preset == "none":
        return images, masks
    strong = preset == "strong"
    count, device = images.shape[0], images.device
    for dim in (-2, -1):
        chosen = _chance(count, 0.5, generator).to(device).view(-1, 1, 1, 1)
        images = torch.where(chosen, images.flip(dim), images)
        masks = torch.where(chosen, masks.flip(dim), masks)
    turns = torch.randint(1, 4, (count,), generator=generator) * _chance(count, 0.5, generator)
    if images.shape[-1] == images.shape[-2] and turns.any():
        images, masks = images.clone(), masks.clone()
        for k in (1, 2, 3):
            index = (turns == k).nonzero().flatten().to(device)
            if len(index):
                images[index] = torch.rot90(images[index], k, (-2, -1))
                masks[index] = torch.rot90(masks[index], k, (-2, -1))
    warp = _warp_grid(count, tuple(images.shape[-2:]), strong, generator, device)
    if warp is not None:
        grid, moved = warp
        index = moved.nonzero().flatten().to(device)
        images, masks = images.clone(), masks.clone()
        images[index] = F.grid_sample(images[index], grid[index], mode="bilinear", padding_mode="reflection",
                                      align_corners=False)
        masks[index] = F.grid_sample(masks[index], grid[index], mode="nearest", padding_mode="reflection",
                                     align_corners=False)

    def per_sample(values: torch.Tensor, chosen: torch.Tensor, neutral: float) -> torch.Tensor:
        return torch.where(chosen, values, torch.full_like(values, neutral)).to(device).view(-1, 1, 1, 1)

    images = images * per_sample(1 + _uniform(count, 0.2 if strong else 0.1, generator),
                                 _chance(count, 0.5, generator), 1.0)
    images = images + per_sample(_uniform(count, 0.2 if strong else 0.1, generator),
                                 _chance(count, 0.5, generator), 0.0)
    if strong:
        gamma = per_sample(0.7 + torch.rand(count, generator=generator) * 0.8, _chance(count, 0.3, generator), 1.0)
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-7)
        images = ((images - low) / span) ** gamma * span + low
        noisy = per_sample(torch.ones(count), _chance(count, 0.3, generator), 0.0)
        noise = torch.randn(images.shape, generator=generator).to(device)
        images = images + noisy * 0.03 * noise
    return images, masks


class DeviceBatches:
    """The training epochs of ``samples`` as batches made on ``device``.

    An epoch draws as many random ``patch_size`` crops (zero-padded where an image is smaller) as
    :class:`~napari_unet_seg.dataset.PatchDataset` does, in a seeded random order; with
    ``patch_size=None`` the whole (equally resized) images are served.
    """

    def __init__(self, samples: Sequence[Sample], patch_size: int | None, augment: str,
                 device: torch.device) -> None:
        self.patch_size, self.augment, self.device = patch_size, augment, device
        self.images, self.masks, self.index = [], [], []
        for i, sample in enumerate(samples):
            image, mask = sample.image, sample.mask
            if patch_size is not None:
                pad_y, pad_x = max(0, patch_size - mask.shape[0]), max(0, patch_size - mask.shape[1])
                image = np.pad(image, ((0, 0), (0, pad_y), (0, pad_x)))
                mask = np.pad(mask, ((0, pad_y), (0, pad_x)))
            self.images.append(torch.from_numpy(np.ascontiguousarray(image)).to(device))
            self.masks.append(torch.from_numpy(np.ascontiguousarray(mask)).to(device))
            count = 1 if patch_size is None else max(1, round(sample.mask.size / patch_size**2))
            self.index += [i] * count

    def __len__(self) -> int:
        return len(self.index)

    def batch_count(self, batch_size: int, world: int = 1) -> int:
        """Batches in an epoch of each of ``world`` processes."""
        return math.ceil(math.ceil(len(self.index) / world) / batch_size)

    def epoch(self, batch_size: int, seed: int, rank: int = 0, world: int = 1
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches ``(images (B, C, Y, X), masks (B, 1, Y, X))``, float32 on the device, of one epoch.

        ``seed`` orders the epoch; process ``rank`` of ``world`` takes every ``world``-th item of that
        order (padded to equal shares, as ``DistributedSampler`` does) and draws its own crops and
        augmentation from ``seed * world + rank``.
        """
        order = torch.randperm(len(self.index), generator=torch.Generator().manual_seed(seed)).tolist()
        order = (order * world)[:math.ceil(len(order) / world) * world][rank::world]
        generator = torch.Generator().manual_seed(seed * world + rank)
        for start in range(0, len(order), batch_size):
            images, masks = [], []
            for item in order[start:start + batch_size]:
                image, mask = self.images[self.index[item]], self.masks[self.index[item]]
                if self.patch_size is not None:
                    size = self.patch_size
                    y = int(torch.randint(0, mask.shape[0] - size + 1, (1,), generator=generator))
                    x = int(torch.randint(0, mask.shape[1] - size + 1, (1,), generator=generator))
                    image, mask = image[:, y:y + size, x:x + size], mask[y:y + size, x:x + size]
                images.append(image)
                masks.append(mask)
            batch = torch.stack(images).float(), torch.stack(masks)[:, None].float()
            yield augment_batch(*batch, self.augment, generator)
