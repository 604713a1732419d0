"""Sample data: real EM and dermoscopy images shipped with the package, and synthetic pairs made on demand."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["sample_folders", "em_sample_layers", "dermoscopy_sample_layers", "synthetic_pair",
           "write_synthetic_folder"]


def sample_folders(name: str = "em") -> tuple[Path, Path]:
    """``(images, masks)`` folders of a shipped sample set (``em``: six 256x256 ISBI-2012 crops;
    ``dermoscopy``: three ISIC 2018 images resized to 256x256)."""
    root = Path(str(resources.files(__package__).joinpath("sample_data", name)))
    return root / "images", root / "masks"


def em_sample_layers() -> list[tuple]:
    """napari sample-data hook: an EM section and its membrane labels (ISBI 2012, see sample_data/README.md)."""
    from .image_io import read_image

    images, masks = sample_folders("em")
    image = read_image(images / "em_10.png")
    labels = (read_image(masks / "em_10.png") > 0).astype(np.uint8)
    return [(image, {"name": "EM section (ISBI 2012)"}, "image"),
            (labels, {"name": "EM membranes (ground truth)"}, "labels")]


def dermoscopy_sample_layers() -> list[tuple]:
    """napari sample-data hook: a dermoscopy image and its lesion labels (ISIC 2018, see sample_data/README.md)."""
    from .image_io import read_image

    images, masks = sample_folders("dermoscopy")
    image = read_image(images / "ISIC_0000013.jpg")
    labels = (read_image(masks / "ISIC_0000013_segmentation.png") > 0).astype(np.uint8)
    return [(image, {"name": "Dermoscopy (ISIC 2018)", "rgb": True}, "image"),
            (labels, {"name": "Lesion (ground truth)"}, "labels")]


def synthetic_pair(size: tuple[int, int] = (96, 96), *, seed: int = 0, objects: int = 6, rgb: bool = False,
                   noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of bright discs on a dark background and its 0/255 mask: a quick, learnable task."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    mask = np.zeros(size, dtype=bool)
    for _ in range(objects):
        r = rng.uniform(0.05, 0.12) * min(size)
        cy, cx = rng.uniform(r, size[0] - r), rng.uniform(r, size[1] - r)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    image = 0.25 + 0.5 * mask + rng.normal(0, noise, size)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if rgb:
        image = np.stack([image, (image * 0.8).astype(np.uint8), 255 - image], axis=-1)
    return image, (mask * 255).astype(np.uint8)


def write_synthetic_folder(root: str | Path, count: int = 8, size: tuple[int, int] = (96, 96), *, seed: int = 0,
                           rgb: bool = False, mask_suffix: str = "") -> tuple[Path, Path]:
    """Write ``count`` synthetic pairs as PNG into ``root/images`` and ``root/masks``; return both folders."""
    import imageio.v3 as iio

    root = Path(root)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = synthetic_pair(size, seed=seed + i, rgb=rgb)
        iio.imwrite(images / f"img{i:03d}.png", image)
        iio.imwrite(masks / f"img{i:03d}{mask_suffix}.png", mask)
    return images, masks
