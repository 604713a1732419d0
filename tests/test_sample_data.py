"""The shipped samples: the EM volume loads as a 3D Image and Labels with its spacing and terms; the manifest
lists it; it stays small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from napari_unet_seg.pretrained import LUCCHI_CITES
from napari_unet_seg.sample_data import EM3D_SPACING, em3d_sample_layers, sample_folders


def test_em3d_sample_is_a_3d_image_and_labels_with_scale_and_terms():
    (volume, image_kwargs, image_kind), (labels, labels_kwargs, labels_kind) = em3d_sample_layers()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert volume.shape == labels.shape == (64, 192, 192) and volume.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1} and 0.05 < labels.mean() < 0.3  # mitochondria, not empty
    assert volume[labels == 1].mean() < volume[labels == 0].mean()  # mitochondria are dark in this EM
    for kwargs in (image_kwargs, labels_kwargs):
        assert tuple(kwargs["scale"]) == EM3D_SPACING == (5.0, 5.0, 5.0)
        assert kwargs["metadata"]["unit"] == "nm" and kwargs.get("units", ("nm",) * 3) == ("nm",) * 3
        assert "non-commercial research" in kwargs["metadata"]["terms"]
        assert "Lucchi" in kwargs["metadata"]["terms"] and "EPFL CVLab" in kwargs["metadata"]["terms"]
        assert any(LUCCHI_CITES[0]["doi"] in c for c in kwargs["metadata"]["cite"])


def test_em3d_sample_file_states_its_spacing_and_stays_small():
    import tifffile

    images, masks = sample_folders("em3d")
    (image,), (mask,) = sorted(images.iterdir()), sorted(masks.iterdir())
    assert image.name == mask.name and image.stat().st_size + mask.stat().st_size < 2.5e6
    with tifffile.TiffFile(image) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.imagej_metadata["spacing"] == 5.0 and tif.imagej_metadata["unit"] == "nm"
        assert tif.pages[0].resolution == (0.2, 0.2)  # 0.2 pixels per nm: 5 nm in Y and X
    readme = (images.parents[1] / "README.md").read_text()
    assert "em3d/" in readme and "non-commercial research" in readme and LUCCHI_CITES[0]["doi"] in readme


def test_em3d_sample_is_the_stated_crop_of_the_validation_block(shared_data):
    import tifffile

    lucchi = shared_data / "lucchi-mito-em3d"
    source = lucchi / "images" / "train_y0384_x0512.tif"
    (volume, _, _), (labels, _, _) = em3d_sample_layers()
    crop = np.s_[48:112, 96:288, 128:320]
    np.testing.assert_array_equal(volume, tifffile.imread(source)[crop])
    np.testing.assert_array_equal(labels, tifffile.imread(lucchi / "masks" / source.name)[crop] > 0)


def test_manifest_offers_the_em3d_sample():
    manifest = yaml.safe_load((Path(sample_folders("em3d")[0]).parents[2] / "napari.yaml").read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    entry = next(s for s in manifest["contributions"]["sample_data"] if s["key"] == "em3d")
    assert entry["display_name"] == "EM mitochondria volume (FIB-SEM, 3D)"
    assert commands[entry["command"]] == "napari_unet_seg.sample_data:em3d_sample_layers"
