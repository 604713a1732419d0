"""The real data sets beside the clone (``../shared/data``): pairing and reading work on their naming schemes."""

import numpy as np
import pytest

from napari_unet_seg.dataset import mask_to_classes
from napari_unet_seg.image_io import read_image
from napari_unet_seg.pairing import pair_files

pytestmark = pytest.mark.shared_data

EXPECTED = {"isbi2012-em": 30, "ph2": 180, "isic2018": 1170, "cervical-herlev": 780}


@pytest.mark.parametrize("name, count", EXPECTED.items())
def test_every_real_set_pairs_completely(shared_data, name, count):
    root = shared_data / name
    if not root.is_dir():
        pytest.skip(f"{name} is not in ../shared/data")
    pairs = pair_files(root / "images", root / "masks")
    assert len(pairs) == count
    first = pairs[0]
    image, mask = read_image(first.image), read_image(first.mask)
    labels = mask_to_classes(mask, 2, first.mask.name)
    assert labels.shape == image.shape[:2] and set(np.unique(labels)) <= {0, 1} and labels.any()


def test_herlev_class_masks(shared_data):
    root = shared_data / "cervical-herlev"
    if not (root / "masks_classes").is_dir():
        pytest.skip("cervical-herlev is not in ../shared/data")
    pair = pair_files(root / "images", root / "masks_classes")[0]
    assert set(np.unique(mask_to_classes(read_image(pair.mask), 3, pair.mask.name))) == {0, 1, 2}
