"""Sample data: real EM and dermoscopy images and an EM volume shipped with the package, and synthetic pairs
made on demand."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["EM3D_SPACING", "EM3D_UNIT", "sample_folders", "em_sample_layers", "dermoscopy_sample_layers",
           "em3d_sample_layers", "synthetic_pair", "write_synthetic_folder"]

#: Voxel spacing (Z, Y, X) and its unit of the shipped EM volume (``sample_data/em3d``, Lucchi et al. 2012).
EM3D_SPACING = (5.0, 5.0, 5.0)
EM3D_UNIT = "nm"


def sample_folders(name: str = "em") -> tuple[Path, Path]:
    """``(images, masks)`` folders of a shipped sample set (``em``: six 256x256 ISBI-2012 crops;
    ``dermoscopy``: three ISIC 2018 images resized to 256x256; ``em3d``: one 64x192x192 crop of the Lucchi
    FIB-SEM training volume, a 3D TIFF with its 5 nm spacing)."""
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


def em3d_sample_layers() -> list[tuple]:
    """napari sample-data hook: an EM volume (FIB-SEM, 5 nm voxels) and its mitochondria labels (Lucchi et al.
    2012, see sample_data/README.md), both with ``scale`` = the voxel spacing in nm and the data's terms."""
    from .image_io import read_image, read_mask
    from .pretrained import LUCCHI_CITES, LUCCHI_TERMS

    images, masks = sample_folders("em3d")
    name = "lucchi_train_y0384_x0512_z048_y096_x128.tif"
    volume = read_image(images / name)
    labels = (read_mask(masks / name) > 0).astype(np.uint8)
    metadata = {"spacing": list(EM3D_SPACING), "unit": EM3D_UNIT, "terms": LUCCHI_TERMS,
                "cite": [f"{c['text']} (doi:{c['doi']})" for c in LUCCHI_CITES]}
    common = {"scale": EM3D_SPACING, "metadata": metadata, **_units(EM3D_UNIT, ("z", "y", "x"))}
    return [(volume, {"name": "EM volume (Lucchi 2012, FIB-SEM)", **common}, "image"),
            (labels, {"name": "EM mitochondria (ground truth)", **common}, "labels")]


def _units(unit: str, axes: tuple[str, ...]) -> dict:
    """``units`` and ``axis_labels`` layer arguments where napari takes them (0.6 and newer), else none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("napari").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return {}
    return {"units": (unit,) * len(axes), "axis_labels": axes} if (major, minor) >= (0, 6) else {}


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
