"""``napari-unet-seg predict`` with a 3D model: 3D TIFF in, 3D TIFF mask out; 2D images refused up front."""

from __future__ import annotations

import numpy as np
import pytest

from cli_helpers import cli, one_line, snapshot


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    import torch

    from napari_unet_seg.model_file import SegmentationModel, save_model
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization

    torch.manual_seed(0)
    kwargs = network_kwargs("unet", 0.25, spatial_dims=3)
    network = build_network("unet", 1, 1, **kwargs).eval()
    model = SegmentationModel(network, {"name": "unet", "kwargs": kwargs}, 1, 2, default_normalization("percentile"),
                              {"patch_size": 32, "spatial_dims": 3})
    return save_model(tmp_path_factory.mktemp("model3d") / "unet3d.pt", model)


def test_predict_writes_a_3d_mask_for_a_3d_tiff(tmp_path, model_3d):
    import tifffile

    from napari_unet_seg import predict

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    volume = np.random.default_rng(0).integers(0, 4000, (12, 40, 48), dtype=np.uint16)
    tifffile.imwrite(inputs / "stack.tif", volume)
    done = cli("predict", "--model", model_3d, "--input", inputs, "--output", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    written = tifffile.imread(out / "stack.tif")
    assert written.shape == volume.shape
    np.testing.assert_array_equal(written, predict(str(model_3d), volume, device="cpu"))


def test_predict_refuses_a_2d_image_for_a_3d_model_and_writes_nothing(tmp_path, model_3d):
    import imageio.v3 as iio
    import tifffile

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a_stack.tif", np.zeros((6, 32, 32), np.uint8), photometric="minisblack")  # first
    iio.imwrite(inputs / "b_plane.png", np.zeros((32, 32), np.uint8))
    before = snapshot(tmp_path)
    done = cli("predict", "--model", model_3d, "--input", inputs, "--output", out, "--device", "cpu")
    one_line(done, r"b_plane\.png: image of shape \(32, 32\) is a 2D image but the model is 3D")
    assert snapshot(tmp_path) == before and not out.exists()


def test_predict_names_the_mask_file_and_keeps_the_voxel_size(tmp_path, model_3d):
    import tifffile

    from napari_unet_seg.image_io import read_spacing

    volume = np.random.default_rng(1).integers(0, 255, (12, 40, 48), dtype=np.uint8)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, volume, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"})
    done = cli("predict", "--model", model_3d, "--input", source, "--output", tmp_path / "labels.tiff",
               "--uncertainty", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tiff", "labels_uncertainty.tif", "stack.tif"]
    assert tifffile.imread(tmp_path / "labels.tiff").shape == volume.shape
    for written in ("labels.tiff", "labels_uncertainty.tif"):
        assert read_spacing(tmp_path / written) == [0.05, 0.004, 0.004]

    before = snapshot(tmp_path)
    one_line(cli("predict", "--model", model_3d, "--input", source, "--output", tmp_path / "labels.png"),
             r"--output .*labels\.png: a stack's labels do not fit a PNG; name it labels\.tif")
    one_line(cli("predict", "--model", model_3d, "--input", source, "--output", tmp_path / "labels.tiff"),
             r"--output .*labels\.tiff: exists already; pass --overwrite")
    one_line(cli("predict", "--model", model_3d, "--input", tmp_path, "--output", tmp_path / "all.tif"),
             r"--output .*all\.tif: names one mask file, but --input .* is a folder of 3 image\(s\); give a folder")
    assert snapshot(tmp_path) == before


def test_a_volume_of_other_voxels_than_the_models_is_named_in_a_warning(tmp_path, model_3d):
    import tifffile

    from napari_unet_seg.model_file import load_model, save_model

    model = load_model(model_3d)
    model.config["spacing"] = [0.005, 0.005, 0.005]  # trained at 5 nm
    at_5nm = save_model(tmp_path / "m.pt", model)
    volume = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    for name, spacing in (("same.tif", 5), ("coarse.tif", 10)):
        tifffile.imwrite(tmp_path / name, volume, imagej=True, resolution=(1 / spacing, 1 / spacing),
                         metadata={"spacing": spacing, "unit": "nm", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "unknown.tif", volume)  # no unit stated: nothing to compare
    for name in ("same.tif", "unknown.tif"):
        done = cli("predict", "--model", at_5nm, "--input", tmp_path / name, "--output", tmp_path / f"l_{name}",
                   "--device", "cpu")
        assert done.returncode == 0 and "warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    done = cli("predict", "--model", at_5nm, "--input", tmp_path / "coarse.tif", "--output", tmp_path / "l.tif",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert ("warning: coarse.tif: voxels of 10 x 10 x 10 nm (Z x Y x X), the model was trained on 5 x 5 x 5 nm: "
            "2.0x coarser in every axis, so objects look smaller to it than in training; resample the image to the "
            "model's spacing for reliable labels") in done.stdout + done.stderr
