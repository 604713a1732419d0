"""Small synthetic volumes with their masks, written as ImageJ TIFF stacks (shared by the 3D tests)."""

from __future__ import annotations

import numpy as np
import tifffile


def blobs(seed: int, shape=(16, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy uint8 volume with a few bright balls and their mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(4):
        cz, cy, cx = rng.uniform([3, 8, 8], [shape[0] - 3, shape[1] - 8, shape[2] - 8])
        mask |= (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 16
    image = (rng.normal(60, 15, shape) + 100 * mask).clip(0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8)


def write_volumes(folder, volumes, spacing=(1.0, 0.5, 0.5)):
    """ImageJ TIFF volumes (µm ``spacing``, one per volume or one for all) and their masks; returns the folders."""
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for index, (image, mask) in enumerate(volumes):
        step = spacing[index] if isinstance(spacing[0], (list, tuple)) else spacing
        meta = {"spacing": step[0], "unit": "um", "axes": "ZYX"[-image.ndim:]}
        tifffile.imwrite(images / f"v{index}.tif", image, imagej=True, resolution=(1 / step[2], 1 / step[1]),
                         metadata=meta)
        tifffile.imwrite(masks / f"v{index}.tif", mask * 255, imagej=True, metadata={"axes": "ZYX"[-mask.ndim:]})
    return images, masks
