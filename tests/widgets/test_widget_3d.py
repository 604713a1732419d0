"""The dock on volumes in a real viewer: dimensions and voxel spacing in Train, 3D models in the model lists,
Segment's refusal of a 3D model for a 2D layer, volume pairs added to the training set."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    """An untrained tiny 3D U-Net (width 0.125) saved as a model file."""
    from napari_unet_seg.model_file import SegmentationModel, save_model
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization

    kwargs = network_kwargs("unet", 0.125, spatial_dims=3)
    network = build_network("unet", 1, 1, **kwargs).eval()
    model = SegmentationModel(network, {"name": "unet", "kwargs": kwargs}, 1, 2, default_normalization("percentile"),
                              {"patch_size": 16, "spatial_dims": 3})
    return save_model(tmp_path_factory.mktemp("cube") / "best.pt", model)


def _volume(shape=(16, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(20, 5, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[4:12, 8:20, 10:22] = 1
    image[labels > 0] += 60
    return image, labels


def _dock(viewer, name):
    return viewer.window.add_plugin_dock_widget("napari-unet-seg", name)[1]


def test_train_spacing_follows_the_image_layer_and_dimensions_sit_in_advanced(make_napari_viewer):
    viewer = make_napari_viewer()
    volume = viewer.add_image(_volume()[0], name="vol", scale=(2.0, 0.5, 0.5))
    flat = viewer.add_image(np.zeros((32, 32), np.float32), name="flat", scale=(0.5, 0.5))
    widget = _dock(viewer, "Train")
    assert widget.dims in widget.advanced.widgets and widget.spacing in widget.advanced.widgets
    assert widget.dims.value == "auto" and "isotropic" in widget.dims.tooltip
    widget.source.value = "layers"
    widget.image_layer.value = volume
    assert widget.spacing.value == "2, 0.5, 0.5"
    assert "voxel spacing 2, 0.5, 0.5" in widget.advanced.values.text()
    widget.image_layer.value = flat
    assert widget.spacing.value == ""  # a 2D layer shows none
    assert "voxel spacing" not in widget.advanced.values.text() and "dimensions auto" in widget.advanced.values.text()
    widget.image_layer.value = volume
    widget.source.value = "folders"
    assert widget.spacing.value == ""  # folders: the files state their spacing
    widget.source.value = "layers"
    widget.spacing.value = "3, 1, 1"  # editable
    widget.out.value = "unused"
    config = widget.config()
    assert (config.spatial_dims, config.spacing) == ("auto", [3.0, 1.0, 1.0])


def test_train_refuses_layers_that_differ_in_depth_and_3d_on_a_2d_layer(make_napari_viewer, tmp_path,
                                                                       notifications):
    viewer = make_napari_viewer()
    image, labels = _volume()
    viewer.add_image(image, name="vol")
    viewer.add_labels(labels[:15], name="short labels")
    viewer.add_image(image[0], name="flat")
    viewer.add_labels(labels[6], name="flat labels")
    widget = _dock(viewer, "Train")
    widget.source.value, widget.out.value = "layers", tmp_path / "run"
    widget.image_layer.value, widget.labels_layer.value = viewer.layers["vol"], viewer.layers["short labels"]
    assert widget.start() is None
    text = notifications[-1][1]
    assert notifications[-1][0] == "error" and "\n" not in text
    assert "layer 'short labels' (15, 32, 32) does not match layer 'vol' (16, 32, 32)" in text
    widget.image_layer.value, widget.labels_layer.value = viewer.layers["flat"], viewer.layers["flat labels"]
    widget.dims.value = "3D volumes"
    assert widget.start() is None
    assert "layer 'flat' (32, 32) is 2D" in notifications[-1][1]
    assert widget.job is None and not (tmp_path / "run").exists()


def test_3d_models_are_marked_and_refused_for_a_2d_layer(make_napari_viewer, model_3d, tiny_model, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    segment = _dock(viewer, "Segment")
    segment.model_file.value = tiny_model
    segment.model_file.value = model_3d
    combo = segment.model.native
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert f"{model_3d.parent.name}/best.pt (3D)  [newest]" in texts
    assert f"{tiny_model.parent.name}/best.pt" in texts  # a 2D model: not marked
    assert segment.model.value == str(model_3d)
    assert segment.run() is None
    text = notifications[-1][1]
    assert notifications[-1][0] == "error" and "is a 3D model and layer 'flat' is 2D (32, 32)" in text
    assert [layer.name for layer in viewer.layers] == ["flat"]  # nothing added
    train = _dock(viewer, "Train")  # the lists of the other widgets mark it too
    assert any("(3D)" in train.start_from.native.itemText(i) for i in range(train.start_from.native.count()))
    train.start_from.value = str(model_3d)  # fine-tuning a 3D model keeps its dimensions
    assert train.dims.value == "3D volumes" and not train.dims.enabled


def test_add_a_volume_to_the_training_set_with_its_spacing(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    image, labels = _volume()
    viewer.add_image(image, name="vol", scale=(2.0, 0.5, 0.5))
    viewer.add_labels(labels, name="fixed", scale=(2.0, 0.5, 0.5))
    images, masks = tmp_path / "images", tmp_path / "masks"
    widget = _dock(viewer, "Train")
    widget.images.value, widget.masks.value = images, masks
    widget.image_layer.value, widget.labels_layer.value = viewer.layers["vol"], viewer.layers["fixed"]
    widget.dims.value = "3D volumes"
    image_path, mask_path = widget.add_to_training_set()
    assert (image_path.name, mask_path.name) == ("vol.tif", "vol.tif")
    assert np.array_equal(tifffile.imread(image_path), image) and np.array_equal(tifffile.imread(mask_path), labels)
    with tifffile.TiffFile(image_path) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
    assert "added the volume vol" in widget.status.value
    assert widget.add_to_training_set() is None and "already in the training set" in notifications[-1][1]
    widget.dims.value = "2D slices"  # slices: the current one, as in 2D
    viewer.dims.set_point(0, 12.0)  # world coordinates: slice 6 at a z scale of 2
    image_path, mask_path = widget.add_to_training_set()
    assert image_path.name == "vol_z6.tif" and np.array_equal(tifffile.imread(image_path), image[6])


def test_train_a_3d_model_from_layers_then_segment_the_volume_with_it(make_napari_viewer, tmp_path, wait_job):
    from napari_unet_seg import predict
    from napari_unet_seg.model_file import load_model

    viewer = make_napari_viewer()
    image, labels = _volume()
    layer = viewer.add_image(image, name="vol", scale=(1.0, 0.5, 0.5), translate=(2.0, 0.0, -3.0))
    viewer.add_labels(labels, name="truth", scale=(1.0, 0.5, 0.5), translate=(2.0, 0.0, -3.0))
    segment = _dock(viewer, "Segment")
    train = _dock(viewer, "Train")
    values = {"source": "layers", "epochs": 1, "batch_size": 2, "patch_size": 16, "model_width": 0.125,
              "val_fraction": 0.0, "device": "cpu", "augment": "none", "out": tmp_path / "run"}
    for name, value in values.items():
        getattr(train, name).value = value
    train.image_layer.value, train.labels_layer.value = layer, viewer.layers["truth"]
    assert train.spacing.value == "1, 0.5, 0.5"  # auto: near isotropic (anisotropy 2), 16 slices: 3D
    job = train.start()
    assert "anisotropy 2 < 3: 3D volumes" in train.status.value, train.status.value
    assert wait_job(job, timeout=120_000) == "done", train.status.value
    best = tmp_path / "run" / "best.pt"
    model = load_model(best)
    assert model.spatial_dims == 3 and model.config["spacing"] == [1.0, 0.5, 0.5]
    assert model.config["foreground_sampling"] == 0.33  # foreground patches auto: the 3D plan's share
    assert list(train.lines["train loss"].get_xdata()) == [1]  # the live curves as in 2D
    # the new model is selected in Segment and marked 3D there
    assert segment.model.value == str(best)
    assert "(3D)" in segment.model.current_choice
    # Segment predicts the volume as a volume; the labels lie on the image
    segment.tile.value = 16
    assert wait_job(segment.run(), timeout=60_000) == "done", segment.status.value
    result = viewer.layers["vol labels"]
    assert result.data.shape == image.shape
    np.testing.assert_array_equal(result.data, predict(best, image, device="cpu", tile=16))
    np.testing.assert_allclose(result.scale, layer.scale)
    np.testing.assert_allclose(result.translate, layer.translate)
    assert segment.progress.value == segment.progress.max >= 1


def test_evaluate_scores_volumes_per_volume_and_pooled(make_napari_viewer, model_3d, tmp_path, wait_job,
                                                       notifications):
    from napari_unet_seg import evaluate

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for seed in (0, 1):
        image, labels = _volume(seed=seed)
        tifffile.imwrite(images / f"v{seed}.tif", image)
        tifffile.imwrite(masks / f"v{seed}.tif", labels)
    viewer = make_napari_viewer()
    widget = _dock(viewer, "Evaluate")
    widget.model_file.value = model_3d
    widget.images.value, widget.masks.value, widget.device.value = images, masks, "cpu"
    assert wait_job(widget.evaluate(), timeout=60_000) == "done", widget.status.value
    expected = evaluate(model_3d, images, masks, device="cpu")
    assert expected["volumes"] == 2
    rows = widget.table.value["data"]
    assert [r[0] for r in rows] == ["v0.tif", "v1.tif", "mean", "pooled (all voxels)"]
    for row, truth in zip(rows, expected["per_image"]):
        assert float(row[1]) == pytest.approx(truth["dice"], abs=1e-4)
    assert float(rows[-1][1]) == pytest.approx(expected["pooled_dice"], abs=1e-4)
    assert "over 2 volume(s)" in widget.status.value

    # Labels layers of volumes against their ground truth; a depth mismatch is one line naming the layers
    _, truth = _volume()
    result = truth.copy()
    result[:, :, :16] = 0  # a third of the object lost
    viewer.add_labels(result, name="result")
    viewer.add_labels(truth, name="truth")
    viewer.add_labels(truth[:-1], name="thin")
    widget.labels_layer.value, widget.truth_layer.value = viewer.layers["result"], viewer.layers["truth"]
    scores = widget.compare()
    inter, total = (result & truth).sum(), result.sum() + truth.sum()
    assert scores["dice"] == pytest.approx(2 * inter / total)
    assert "in the volume 16x32x32" in widget.status.value
    widget.truth_layer.value = viewer.layers["thin"]
    assert widget.compare() is None
    assert "layer 'result' (16, 32, 32) does not match ground truth 'thin' (15, 32, 32)" in notifications[-1][1]


def test_the_shipped_model_follows_the_dimensions_of_the_image(make_napari_viewer, model_3d, monkeypatch):
    from napari_unet_seg import pretrained
    from napari_unet_seg.widgets import _models

    # the only shipped 3D model is this one, listed last by name (the package's own 3D model left out)
    shipped = {**{k: v for k, v in pretrained.shipped_models().items() if k != "mitochondria-em3d"},
               "zz-cube": model_3d}
    monkeypatch.setattr(pretrained, "shipped_models", lambda: shipped)
    monkeypatch.setattr(_models, "shipped_models", lambda: shipped)
    monkeypatch.setattr(pretrained, "pretrained_path", lambda name: shipped.get(name))
    viewer = make_napari_viewer()
    gray = viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    volume = viewer.add_image(np.zeros((16, 32, 32), np.uint8), name="volume")
    segment = _dock(viewer, "Segment")
    segment.image.value = volume
    assert segment.model.value == "zz-cube"
    assert segment.model.current_choice == "zz-cube (3D)"
    segment.image.value = gray  # never a 3D model for a 2D image
    assert segment.model.value == "em-membranes"


def test_cancel_a_3d_run_then_fine_tune_its_model_on_the_volume(make_napari_viewer, tmp_path, wait_job, qtbot):
    from napari_unet_seg.model_file import load_model

    viewer = make_napari_viewer()
    image, labels = _volume()
    viewer.add_image(image, name="vol")
    viewer.add_labels(labels, name="truth")
    train = _dock(viewer, "Train")
    values = {"source": "layers", "epochs": 500, "batch_size": 2, "patch_size": 16, "model_width": 0.125,
              "val_fraction": 0.0, "device": "cpu", "augment": "none", "out": tmp_path / "run",
              "dims": "3D volumes", "foreground": "all"}
    for name, value in values.items():
        getattr(train, name).value = value
    train.image_layer.value, train.labels_layer.value = viewer.layers["vol"], viewer.layers["truth"]
    job = train.start()
    qtbot.waitUntil(lambda: len(train.history) >= 1, timeout=120_000)
    train.cancel_button.clicked()
    assert wait_job(job, timeout=60_000) == "cancelled"
    assert 1 <= len(train.history) < 500 and "kept best.pt, last.pt" in train.status.value
    best = tmp_path / "run" / "best.pt"
    assert load_model(best).spatial_dims == 3 and load_model(best).config["foreground_sampling"] == 1.0
    # continue from it: its dimensions are kept, the run goes to a free folder
    train.start_from.value = str(best)
    assert train.dims.value == "3D volumes" and not train.dims.enabled
    train.epochs.value = 1
    assert wait_job(train.fine_tune(), timeout=120_000) == "done", train.status.value
    assert load_model(tmp_path / "run-2" / "best.pt").spatial_dims == 3
