"""OME-Zarr in and out: level 0 opened lazily with its axes and spacing, labels groups written beside it."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import snapshot
from napari_unet_seg.errors import UserError
from napari_unet_seg.zarr_io import labels_writer, open_image, read_labels

zarr = pytest.importorskip("zarr")
ome_writer = pytest.importorskip("ome_zarr.writer")


def write_ome(path: Path, data: np.ndarray, axes: str, scale: dict | None = None, zarr_format: int = 3,
              levels: int = 2) -> Path:
    """An OME-Zarr image written by ome-zarr's own writer (``levels`` pyramid levels)."""
    from ome_zarr.format import CurrentFormat, FormatV04

    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    ome_writer.write_image(data, group, axes=axes, scale=scale, scale_factors=(2,) * (levels - 1),
                           fmt=FormatV04() if zarr_format == 2 else CurrentFormat())
    return path


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (6, 32, 40), dtype=np.uint8)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_image_gives_level_0_lazily_with_its_spacing(tmp_path, volume, zarr_format):
    path = write_ome(tmp_path / "image.zarr", volume, "zyx", {"z": 2.5, "y": 0.5, "x": 0.25}, zarr_format)
    array, spacing, info = open_image(path)
    assert not isinstance(array, np.ndarray) and hasattr(array, "compute")  # dask: nothing read yet
    assert array.shape == volume.shape and array.dtype == np.uint8
    assert spacing == (2.5, 0.5, 0.25)
    assert info.axes == "zyx" and info.levels == 2 and not info.colour and info.zarr_format == zarr_format
    np.testing.assert_array_equal(np.asarray(array[3]), volume[3])


def test_size_one_time_and_channel_axes_are_dropped_and_three_channels_move_last(tmp_path, volume):
    gray = write_ome(tmp_path / "gray.zarr", volume[None, None], "tczyx", levels=1)
    array, spacing, info = open_image(gray)
    assert array.shape == volume.shape and info.axes == "zyx" and spacing == (1.0, 1.0, 1.0)
    rgb = np.stack([volume, volume // 2, volume // 3])  # (c, z, y, x)
    array, _, info = open_image(write_ome(tmp_path / "rgb.zarr", rgb, "czyx", levels=1))
    assert array.shape == volume.shape + (3,) and info.colour and info.axes == "zyxc"
    np.testing.assert_array_equal(np.asarray(array[2]), np.moveaxis(rgb[:, 2], 0, -1))


@pytest.mark.parametrize("shape, axes, message", [
    ((2, 1, 6, 32, 40), "tczyx", "holds 2 time points"),
    ((2, 6, 32, 40), "czyx", "has 2 channels"),
])
def test_several_time_points_or_odd_channel_counts_are_refused(tmp_path, shape, axes, message):
    path = write_ome(tmp_path / "image.zarr", np.zeros(shape, np.uint8), axes, levels=1)
    with pytest.raises(UserError, match=message):
        open_image(path)


def test_a_plain_zarr_array_opens_without_spacing(tmp_path, volume):
    zarr.create_array(str(tmp_path / "plain.zarr"), data=volume, chunks=(2, 16, 16))
    array, spacing, info = open_image(tmp_path / "plain.zarr")
    assert not isinstance(array, np.ndarray) and array.shape == volume.shape and spacing is None
    assert info.axes == "zyx" and info.chunks == (2, 16, 16)


def test_stores_that_are_no_image_are_refused_in_one_line(tmp_path, volume):
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    with pytest.raises(UserError, match="not an OME-Zarr image"):
        open_image(tmp_path / "group.zarr")
    path = write_ome(tmp_path / "image.zarr", volume, "zyx")
    shutil.rmtree(path / "s0")
    with pytest.raises(UserError, match=r"level 0 \('s0'\) .* is missing"):
        open_image(path)
    with pytest.raises(UserError, match="no such zarr folder"):
        open_image(tmp_path / "absent.zarr")


def _image_files(path: Path) -> dict:
    return {k: v for k, v in snapshot(path).items() if not k.startswith("labels")}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_labels_group_is_written_beside_the_image_and_read_by_ome_zarr(tmp_path, volume, zarr_format):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = write_ome(tmp_path / "image.zarr", volume, "zyx", {"z": 2.5, "y": 0.5, "x": 0.5}, zarr_format)
    before = _image_files(path)
    image, _, _ = open_image(path)
    expected = (volume > 128).astype(np.uint8)
    with labels_writer(path, "cells", volume.shape, chunks=(1, 32, 40)) as out:
        assert out.chunks == (1, 32, 40)
        for z in range(volume.shape[0]):  # block by block, as predict fills it
            out[z] = (np.asarray(image[z]) > 128).astype(np.uint8)
    assert _image_files(path) == before  # the image's own arrays and metadata are untouched
    nodes = list(Reader(parse_url(str(path)))())
    label = next(node for node in nodes if node.zarr.path.endswith("cells"))
    np.testing.assert_array_equal(np.asarray(label.data[0]), expected)
    assert "image-label" in _attrs(path / "labels" / "cells")
    assert _attrs(path / "labels")["labels"] == ["cells"]
    _, spacing, info = open_image(path / "labels" / "cells")
    assert spacing == (2.5, 0.5, 0.5) and info.axes == "zyx" and info.levels == 2  # as many levels as the image
    assert label.data[1].shape == open_image_level(path, 1).shape  # the image's level-1 shape, every 2nd voxel
    np.testing.assert_array_equal(np.asarray(label.data[1]), expected[:, ::2, ::2])
    level1 = _attrs(path / "labels" / "cells")["multiscales"][0]["datasets"][1]
    assert level1["coordinateTransformations"][0]["scale"] == [2.5, 1.0, 1.0]
    np.testing.assert_array_equal(np.asarray(read_labels(path, "cells")), expected)


def open_image_level(path: Path, index: int):
    entry = _attrs(path)["multiscales"][0]["datasets"][index]
    return zarr.open_array(str(path / entry["path"]), mode="r")


def _attrs(path: Path) -> dict:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return attrs.get("ome", attrs)


def test_an_existing_labels_group_is_refused_without_overwrite_and_replaced_with_it(tmp_path, volume):
    path = write_ome(tmp_path / "image.zarr", volume, "zyx")
    with labels_writer(path, "cells", volume.shape) as out:
        out[:] = 1
    before = snapshot(path)
    with pytest.raises(UserError, match="labels/cells: a labels group of that name exists already; pass --overwrite"):
        with labels_writer(path, "cells", volume.shape):
            pass
    assert snapshot(path) == before
    with labels_writer(path, "cells", volume.shape, overwrite=True) as out:
        out[:] = 2
    assert int(read_labels(path, "cells").max()) == 2 and _attrs(path / "labels")["labels"] == ["cells"]
    assert sorted(p.name for p in (path / "labels").iterdir() if p.is_dir()) == ["cells"]  # no staging left


def test_a_failed_fill_leaves_the_image_and_any_old_group_as_they_were(tmp_path, volume):
    path = write_ome(tmp_path / "image.zarr", volume, "zyx")
    before = snapshot(path)
    with pytest.raises(RuntimeError, match="stopped"):
        with labels_writer(path, "cells", volume.shape) as out:
            out[0] = 1
            raise RuntimeError("stopped")
    assert snapshot(path) == before and not (path / "labels").exists()
    with labels_writer(path, "cells", volume.shape) as out:
        out[:] = 1
    kept = snapshot(path)
    with pytest.raises(KeyboardInterrupt):
        with labels_writer(path, "cells", volume.shape, overwrite=True) as out:
            out[:] = 2
            raise KeyboardInterrupt
    assert snapshot(path) == kept
    with pytest.raises(UserError, match=r"labels/cells: writing failed \(No space left on device\); check free"):
        with labels_writer(path, "cells", volume.shape, overwrite=True) as out:
            out[:] = 3
            raise OSError(errno.ENOSPC, "No space left on device")
    assert snapshot(path) == kept


@pytest.mark.parametrize("name, shape, message", [
    ("../up", (6, 32, 40), "labels group name"),
    ("cells", (6, 32, 41), r"do not fit .*\(spatial shape \(6, 32, 40\)\)"),
])
def test_bad_names_and_shapes_are_refused_before_anything_is_written(tmp_path, volume, name, shape, message):
    path = write_ome(tmp_path / "image.zarr", volume, "zyx")
    before = snapshot(path)
    with pytest.raises(UserError, match=message):
        with labels_writer(path, name, shape):
            pass
    assert snapshot(path) == before


# ------------------------------------------------------------------------------------ predict on a .zarr


@pytest.fixture(scope="module")
def disc_stack() -> np.ndarray:
    """Six 64x64 planes of bright discs, a (Z, Y, X) uint8 stack."""
    from napari_unet_seg.sample_data import synthetic_pair

    return np.stack([synthetic_pair((64, 64), seed=seed, objects=3)[0] for seed in range(6)]).astype(np.uint8)


def test_cli_predict_writes_a_labels_group_slice_by_slice_equal_to_predict(tmp_path, tiny_model, disc_stack):
    from cli_helpers import cli
    from napari_unet_seg.inference import predict

    path = write_ome(tmp_path / "image.zarr", disc_stack, "zyx", {"z": 4.0, "y": 1.0, "x": 1.0})
    before = _image_files(path)
    done = cli("predict", "--model", tiny_model, "--input", path, "--labels-group", "discs", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "labels/discs" in done.stdout and _image_files(path) == before
    written = np.asarray(read_labels(path, "discs"))
    expected = predict(tiny_model, disc_stack, device="cpu")
    np.testing.assert_array_equal(written, expected)
    assert 0.02 < written.mean() < 0.9  # the trained model finds the discs
    assert open_image(path / "labels" / "discs")[1] == (4.0, 1.0, 1.0)
    # A .zarr input with a plain --output folder writes the mask file, as for a TIFF stack.
    import tifffile

    from napari_unet_seg.cli import main

    assert main(["predict", "--model", str(tiny_model), "--input", str(path), "--output", str(tmp_path / "masks"),
                 "--device", "cpu"]) == 0

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "masks" / "image.tif"), expected)


def test_cli_predict_labels_group_refusals_are_one_line_and_change_nothing(tmp_path, tiny_model, disc_stack,
                                                                           capsys):
    from napari_unet_seg.cli import main

    image = write_ome(tmp_path / "image.zarr", disc_stack, "zyx")
    with labels_writer(image, "discs", disc_stack.shape) as out:
        out[:] = 1
    tif = tmp_path / "stack.tif"
    import tifffile

    tifffile.imwrite(tif, disc_stack)
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    zarr.create_array(str(tmp_path / "plain.zarr"), data=disc_stack)
    timed = write_ome(tmp_path / "timed.zarr", np.zeros((2, 1, 4, 32, 32), np.uint8), "tczyx", levels=1)
    before = snapshot(tmp_path)
    base = ["predict", "--model", str(tiny_model), "--device", "cpu"]
    cases = [
        (["--input", image, "--labels-group", "discs"], "discs: a labels group of that name exists already"),
        (["--input", tif, "--labels-group", "x"], "--labels-group x: needs an OME-Zarr image"),
        (["--input", tmp_path / "group.zarr", "--labels-group", "x"], "not an OME-Zarr image"),
        (["--input", timed, "--labels-group", "x"], "holds 2 time points"),
        (["--input", timed, "--output", tmp_path / "out"], "holds 2 time points"),
        (["--input", image], "give --output DIR"),
        (["--input", image, "--labels-group", "x", "--uncertainty"], "--uncertainty writes a TIFF"),
        (["--input", tmp_path / "plain.zarr", "--labels-group", "x"], "a plain zarr array has no place"),
        (["--input", image, "--labels-group", "x", "--output", tmp_path / "out"], "give one of them"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(base + [str(a) for a in extra]) == 2, extra
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, lines)
    assert snapshot(tmp_path) == before


class _Recorder:
    """An array-like that records the shape of every read (dask reads it chunk by chunk)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim, self.reads = data, data.shape, data.dtype, data.ndim, []

    def __getitem__(self, key):
        part = self.data[key]
        self.reads.append(part.shape)
        return part


def test_a_multiscale_layers_level_0_is_predicted_slice_by_slice_at_full_resolution(tiny_model, disc_stack):
    import dask.array as da

    from napari_unet_seg.inference import predict
    from napari_unet_seg.widgets._params import layer_array

    source = _Recorder(disc_stack)
    level0 = da.from_array(source, chunks=(1, 32, 64), asarray=False)
    pyramid = [level0, level0[:, ::2, ::2]]  # as a multiscale Image layer holds it
    labels = predict(tiny_model, layer_array(pyramid, True), device="cpu")
    assert labels.shape == disc_stack.shape
    np.testing.assert_array_equal(labels, predict(tiny_model, disc_stack, device="cpu"))
    assert source.reads and max(int(np.prod(shape)) for shape in source.reads) <= 32 * 64  # never the whole stack


def test_instance_ids_of_a_labels_group_stay_unique_across_the_stack(tmp_path, tiny_model, disc_stack):
    from napari_unet_seg.cli import main
    from napari_unet_seg.inference import predict

    path = write_ome(tmp_path / "image.zarr", disc_stack, "zyx", levels=1)
    assert main(["predict", "--model", str(tiny_model), "--input", str(path), "--labels-group", "objects",
                 "--instances", "components", "--device", "cpu"]) == 0
    written = np.asarray(read_labels(path, "objects"))
    assert written.dtype == np.int32
    np.testing.assert_array_equal(written, predict(tiny_model, disc_stack, device="cpu", instances="components"))
    per_slice = [set(np.unique(plane)) - {0} for plane in written]
    assert all(per_slice) and len(set.union(*per_slice)) == sum(map(len, per_slice))  # no id in two slices


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory) -> Path:
    """A tiny random 3D U-Net saved as a model file (batch-norm statistics set so its output varies)."""
    import torch

    from napari_unet_seg.model_file import SegmentationModel, save_model
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization

    torch.manual_seed(0)
    kwargs = network_kwargs("unet", 0.125, spatial_dims=3)
    network = build_network("unet", 1, 1, **kwargs).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_var.uniform_(0.5, 1.0, generator=generator)
    model = SegmentationModel(network, {"name": "unet", "kwargs": kwargs}, 1, 2, default_normalization("percentile"),
                              {"patch_size": 16, "spatial_dims": 3})
    return save_model(tmp_path_factory.mktemp("unet3d") / "unet3d.pt", model)


def test_a_3d_model_fills_the_labels_group_as_predict_labels_the_volume(tmp_path, model_3d):
    from scipy.ndimage import gaussian_filter

    from napari_unet_seg.cli import main
    from napari_unet_seg.inference import predict

    smooth = gaussian_filter(np.random.default_rng(1).random((16, 32, 48)), 2.0)
    volume = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    path = write_ome(tmp_path / "volume.zarr", volume, "zyx", {"z": 1.0, "y": 1.0, "x": 1.0})
    before = _image_files(path)
    assert main(["predict", "--model", str(model_3d), "--input", str(path), "--labels-group", "blobs",
                 "--device", "cpu"]) == 0
    written = np.asarray(read_labels(path, "blobs"))
    np.testing.assert_array_equal(written, predict(model_3d, volume, device="cpu"))
    assert 0 < written.mean() < 1 and _image_files(path) == before


def _zarr_pairs(root: Path, volume: np.ndarray, unit: str | None = None) -> tuple[Path, Path, list[np.ndarray]]:
    """Three OME-Zarr volumes (``a.ome.zarr``...) in ``root/images`` and plain zarr masks (``a_mask.zarr``)
    in ``root/masks``; the OME axes state ``unit`` when given."""
    from ome_zarr.format import CurrentFormat

    images, masks, truths = root / "images", root / "masks", []
    images.mkdir(parents=True)
    masks.mkdir()
    for k, name in enumerate("abc"):
        truth = (np.roll(volume, 7 * k, axis=2) > 150).astype(np.uint8)
        group = zarr.open_group(str(images / f"{name}.ome.zarr"), mode="w")
        ome_writer.write_image(truth * 200 + 20, group, axes="zyx", scale_factors=(2,), fmt=CurrentFormat(),
                               scale={"z": 50.0, "y": 10.0, "x": 10.0},
                               axes_units=dict.fromkeys("zyx", unit) if unit else None)
        zarr.save_array(str(masks / f"{name}_mask.zarr"), truth)
        truths.append(truth)
    return images, masks, truths


def test_folders_of_zarr_stores_train_and_evaluate_as_volumes_with_their_spacing(tmp_path, volume):
    from napari_unet_seg.cli import main
    from napari_unet_seg.image_io import read_image, read_mask, read_spacing
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.pairing import pair_files

    images, masks, truths = _zarr_pairs(tmp_path, volume, unit="nanometer")
    pairs = pair_files(images, masks)
    assert [(p.image.name, p.mask.name) for p in pairs] == [(f"{n}.ome.zarr", f"{n}_mask.zarr") for n in "abc"]
    assert read_spacing(images / "a.ome.zarr") == [0.05, 0.01, 0.01]  # nm -> um
    assert isinstance(read_image(images / "b.ome.zarr"), np.ndarray)
    np.testing.assert_array_equal(read_mask(masks / "b_mask.zarr"), truths[1])
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(run), "--epochs", "1",
                 "--width", "0.25", "--device", "cpu", "--spatial-dims", "3"]) == 0
    model = load_model(run / "best.pt")
    assert model.spatial_dims == 3 and model.config["spacing"] == [0.05, 0.01, 0.01]
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(run / "best.pt"), "--images", str(images), "--masks", str(masks),
                 "--device", "cpu", "--json", str(scores)]) == 0
    import json

    assert [row["name"] for row in json.loads(scores.read_text())["per_image"]] == [f"{n}.ome.zarr" for n in "abc"]


def test_a_zarr_store_given_as_the_training_folder_is_refused_in_one_line(tmp_path, volume):
    from cli_helpers import cli, one_line

    images, masks, _ = _zarr_pairs(tmp_path, volume)
    before = snapshot(tmp_path)
    done = cli("train", "--images", images / "a.ome.zarr", "--masks", masks, "--out", tmp_path / "run")
    one_line(done, r"a\.ome\.zarr: holds no image file .*it is itself a zarr store: give the folder that holds it")
    assert snapshot(tmp_path) == before


def test_a_sweep_split_links_zarr_stores_that_pair_again(tmp_path, volume):
    from napari_unet_seg.pairing import pair_files
    from napari_unet_seg.sweep import _materialize_split, load_sweep

    images, masks, _ = _zarr_pairs(tmp_path / "data", volume)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"images: {images}\nmasks: {masks}\nsplit:\n  test_fraction: 0.34\n  seed: 0\nepochs: 1\n")
    folders, _ = _materialize_split(load_sweep(path), tmp_path / "out")
    sides = {side: [p.name for p in pair_files(*found)] for side, found in folders.items()}
    assert sorted(sides) == ["test", "trainval"] and len(sides["test"]) == 1
    assert sorted(sides["test"] + sides["trainval"]) == ["a.ome", "b.ome", "c.ome"]
    np.testing.assert_array_equal(open_image(folders["test"][0] / f"{sides['test'][0]}.zarr")[0],
                                  open_image(images / f"{sides['test'][0]}.zarr")[0])
