"""The widgets' pure functions (widget values -> engine arguments, results -> tables), without Qt."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_unet_seg.config import TrainConfig
from napari_unet_seg.errors import UserError
from napari_unet_seg.widgets import _params as params


def test_params_module_imports_no_qt():
    code = ("import sys, napari_unet_seg.widgets._params, napari_unet_seg.training, napari_unet_seg.inference, "
            "napari_unet_seg.evaluation, napari_unet_seg.model_file, napari_unet_seg.sample_data\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'napari', 'magicgui', 'PyQt5', "
            "'PySide2', 'PyQt6', 'PySide6')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("  ", None), ("a/b", "a/b"),
                                                 (Path("x") / "y", str(Path("x") / "y"))])
def test_optional_path(value, expected):
    assert params.optional_path(value) == expected


def test_layer_array_and_names():
    pyramid = [np.zeros((8, 8)), np.zeros((4, 4))]
    assert params.layer_array(pyramid, True) is pyramid[0]
    assert params.layer_array(pyramid[1], False) is pyramid[1]
    assert params.labels_name("cells") == "cells labels"
    assert params.probabilities_name("cells") == "cells probabilities"
    assert params.uncertainty_name("cells") == "cells uncertainty"


def test_segment_options_map_widget_values_to_predict_keywords():
    options = params.segment_options(device="cpu", tile=0, overlap=0.5, threshold=0.3, tta=1, min_size=12,
                                     keep_largest=1, probabilities=True, rgb=True, instances="watershed",
                                     min_distance=4, uncertainty=1)
    assert options == {"device": "cpu", "tile": None, "overlap": 0.5, "threshold": 0.3, "tta": True,
                       "min_size": 12, "keep_largest": True, "fill_holes": False, "return_probabilities": True,
                       "rgb": True, "instances": "watershed", "min_distance": 4, "uncertainty": True}
    assert params.segment_options(tile=128)["tile"] == 128
    import inspect

    from napari_unet_seg.inference import predict_steps

    assert set(options) <= set(inspect.signature(predict_steps).parameters)


def test_train_config_from_widget_values(tmp_path):
    config = params.train_config(out=tmp_path / "run", images=tmp_path / "i", masks=tmp_path / "m", model="segnet",
                                 width=0.5, classes=3, loss="ce", optimizer="sgd", lr=0.01, epochs=7, batch_size=4,
                                 patch_size=128, val_fraction=0.2, augment="strong", device="cpu", overwrite=True)
    assert isinstance(config, TrainConfig)
    assert (config.out, config.images, config.masks) == (str(tmp_path / "run"), str(tmp_path / "i"),
                                                         str(tmp_path / "m"))
    assert (config.model, config.width, config.classes, config.loss, config.optimizer) == ("segnet", 0.5, 3, "ce",
                                                                                          "sgd")
    assert (config.lr, config.epochs, config.batch_size, config.patch_size) == (0.01, 7, 4, 128)
    assert (config.val_fraction, config.augment, config.device, config.overwrite) == (0.2, "strong", "cpu", True)
    assert config.command == params.WIDGET_COMMAND
    from_layers = params.train_config(out="run", images="ignored", masks=None, from_layers=True)
    assert from_layers.images is None and from_layers.masks is None


@pytest.mark.parametrize(("values", "message"), [
    ({"out": None, "images": "i", "masks": "m"}, "output folder"),
    ({"out": "run", "images": "i", "masks": None}, "masks folder"),
    ({"out": "run", "images": None, "masks": None}, "images folder"),
    ({"out": "run", "from_layers": True, "loss": "nope"}, "--loss 'nope' is unknown"),
    ({"out": "run", "from_layers": True, "val_fraction": 1.0}, "--val-fraction"),
    ({"out": "run", "from_layers": True, "patch_size": 4}, "--patch-size"),
])
def test_train_config_refuses_with_a_message_that_names_the_value(values, message):
    with pytest.raises(UserError, match=message.replace("'", ".").replace("-", "\\-")):
        params.train_config(**values)


def test_layer_pairs_2d_rgb_and_stacks():
    image, labels = np.zeros((6, 8)), np.zeros((6, 8), np.uint8)
    labels[1, 1] = 1
    (pair,) = params.layer_pairs(image, labels)
    assert pair[0].shape == (6, 8) and pair[1] is not None
    rgb = np.zeros((6, 8, 3))
    assert len(params.layer_pairs(rgb, labels, rgb=True)) == 1
    stack, stack_labels = np.zeros((4, 6, 8)), np.zeros((4, 6, 8), np.uint8)
    stack_labels[[0, 2], 0, 0] = 1
    pairs = params.layer_pairs(stack, stack_labels)
    assert len(pairs) == 2 and pairs[0][0].shape == (6, 8)  # unpainted slices 1 and 3 are left out


@pytest.mark.parametrize(("image", "labels", "message"), [
    (np.zeros((6, 8)), np.zeros((6, 9), np.uint8), "does not match"),
    (np.zeros((6, 8)), np.zeros((6, 8), np.uint8), "holds no labels"),
    (np.zeros((2, 2, 6, 8)), np.ones((2, 2, 6, 8), np.uint8), "2D images or stacks"),
])
def test_layer_pairs_refusals(image, labels, message):
    with pytest.raises(UserError, match=message):
        params.layer_pairs(image, labels, image_name="img", labels_name="lab")


def test_model_choices_list_shipped_models_then_files_once():
    shipped = {"em-membranes": Path("/pkg/pretrained/em-membranes.pt")}
    choices = params.model_choices(shipped, ["/runs/a/best.pt", "/runs/a/best.pt", "/runs/b/last.pt"])
    assert choices == [("EM membranes (U-Net)", "em-membranes"), ("a/best.pt", "/runs/a/best.pt"),
                       ("b/last.pt", "/runs/b/last.pt")]
    assert params.model_choices({}, []) == []


def test_curve_series_and_best_rows():
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.5, "val_iou": 0.33},
               {"epoch": 2, "train_loss": 0.7, "val_loss": 0.6, "val_dice": 0.6, "val_iou": 0.43}]
    series = params.curve_series(history)
    assert series["train loss"] == ([1, 2], [0.9, 0.7])
    assert series["val IoU"] == ([1, 2], [0.33, 0.43])
    assert params.curve_series([]) == {k: ([], []) for k in ("train loss", "val loss", "val Dice", "val IoU")}
    rows = params.best_rows(2, history[1])
    assert rows[0] == ["epoch", "2"] and ["val Dice", "0.6000"] in rows and ["train loss", "0.7000"] in rows


def test_evaluation_and_comparison_tables_and_csv(tmp_path):
    result = {"dice": 0.5, "iou": 0.4, "accuracy": 0.9, "count": 2,
              "per_image": [{"name": "a.png", "dice": 0.6, "iou": 0.5, "accuracy": 0.95},
                            {"name": "b.png", "dice": 0.4, "iou": 0.3, "accuracy": 0.85}]}
    headers, rows = params.evaluation_table(result)
    assert headers == ["image", "Dice", "IoU", "accuracy"]
    assert rows == [["a.png", 0.6, 0.5, 0.95], ["b.png", 0.4, 0.3, 0.85], ["mean", 0.5, 0.4, 0.9]]
    path = params.write_csv(tmp_path / "out" / "scores.v2", headers, rows)
    assert path == tmp_path / "out" / "scores.v2.csv"
    with path.open() as handle:
        assert list(csv.reader(handle))[-1] == ["mean", "0.5", "0.4", "0.9"]
    with pytest.raises(UserError, match=r"scores.v2.csv exists; name it with .csv to replace it"):
        params.write_csv(tmp_path / "out" / "scores.v2", headers, rows[:1])  # the user named another file
    assert params.write_csv(path, headers, rows[:1]) == path  # named: replaced
    assert len(path.read_text().splitlines()) == 2

    _, rows = params.comparison_table({"dice": 0.8, "iou": 0.7, "accuracy": 0.9})
    assert rows == [["foreground", 0.8, 0.7]]
    _, rows = params.comparison_table({"dice": 0.5, "iou": 0.4, "accuracy": 0.9,
                                       "per_class": {1: {"dice": 0.6, "iou": 0.5}, 2: {"dice": 0.4, "iou": 0.3}}})
    assert rows == [["mean of classes", 0.5, 0.4], ["1", 0.6, 0.5], ["2", 0.4, 0.3]]
    _, rows = params.comparison_table({"dice": 0.6, "iou": 0.5, "accuracy": 0.9, "absent_classes": [2],
                                       "per_class": {1: {"dice": 0.6, "iou": 0.5}, 2: {"dice": 1.0, "iou": 1.0}}})
    assert rows == [["mean of classes", 0.6, 0.5], ["1", 0.6, 0.5], ["2", "absent", "absent"]]


def test_write_csv_refuses_an_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write"):
        params.write_csv(blocker / "scores.csv", ["a"], [[1]])


def test_comparison_table_shows_object_scores_of_instances():
    from napari_unet_seg.widgets._params import comparison_table

    headers, rows = comparison_table({"kind": "instances", "dice": 0.8, "iou": 0.66666, "object_precision": 0.75,
                                      "object_recall": 0.5, "object_f1": 0.6})
    assert headers == ["class", "Dice", "IoU"]
    assert rows == [["foreground", 0.8, 0.6667], ["object precision (IoU 0.5)", 0.75, "-"],
                    ["object recall (IoU 0.5)", 0.5, "-"], ["object F1 (IoU 0.5)", 0.6, "-"]]


def test_train_config_refuses_the_images_folder_as_masks_folder(tmp_path):
    from napari_unet_seg.errors import UserError
    from napari_unet_seg.widgets._params import train_config

    with pytest.raises(UserError, match="images folder and masks folder are both"):
        train_config(out=tmp_path / "run", images=tmp_path, masks=str(tmp_path) + "/")


def test_dimensions_and_spacing_reach_the_config(tmp_path):
    assert [params.dims_value(c) for c in params.DIMENSIONS] == ["auto", 2, 3]
    assert [params.dims_choice(v) for v in ("auto", 2, 3)] == list(params.DIMENSIONS)
    config = params.train_config(out=tmp_path / "run", from_layers=True, spatial_dims=3, spacing="2, 0.5,0.5")
    assert (config.spatial_dims, config.spacing) == (3, [2.0, 0.5, 0.5])
    default = params.train_config(out=tmp_path / "run", from_layers=True)
    assert (default.spatial_dims, default.spacing) == ("auto", None)
    with pytest.raises(UserError, match="--spacing"):
        params.train_config(out=tmp_path / "run", from_layers=True, spacing="2, x, 1")


def test_scale_text_is_the_spacing_of_volumes_only():
    assert params.scale_text((5.0, 0.25, 0.25), 3) == "5, 0.25, 0.25"
    assert params.scale_text((1.0, 1.0), 2) == ""


def test_resolve_dims_keeps_a_choice_and_sends_2d_images_to_2d():
    assert params.resolve_dims(3, (8, 16, 16), None) == (3, "chosen")
    assert params.resolve_dims(2, (8, 16, 16), [1, 1, 1]) == (2, "chosen")
    assert params.resolve_dims("auto", (16, 16), None)[0] == 2
    # auto on a stack: the planner's rule (depth, then anisotropy of the spacing)
    assert params.resolve_dims("auto", (16, 32, 32), [1, 1, 1])[0] == 3
    assert params.resolve_dims("auto", (30, 64, 64), [50, 4, 4])[0] == 2
    assert params.resolve_dims("auto", (4, 64, 64), [1, 1, 1])[0] == 2


def test_layer_pairs_of_a_volume_in_3d():
    volume, labels = np.zeros((4, 6, 8)), np.zeros((4, 6, 8), np.uint8)
    labels[1, 2, 3] = 1
    ((image, mask),) = params.layer_pairs(volume, labels, spatial_dims=3)
    assert image.shape == mask.shape == (4, 6, 8)  # whole: unpainted slices are background
    rgb = np.zeros((4, 6, 8, 3))
    assert params.layer_pairs(rgb, labels, rgb=True, spatial_dims=3)[0][0].shape == (4, 6, 8, 3)
    with pytest.raises(UserError, match="layer 'flat' .* is 2D: choose dimensions '2D slices'"):
        params.layer_pairs(np.zeros((6, 8)), labels[1], image_name="flat", spatial_dims=3)
    with pytest.raises(UserError, match=r"layer 'lab' \(5, 6, 8\) does not match layer 'img' \(4, 6, 8\)"):
        params.layer_pairs(volume, np.ones((5, 6, 8), np.uint8), image_name="img", labels_name="lab",
                           spatial_dims=3)


def test_model_choices_mark_3d_models():
    shipped = {"em-membranes": Path("/pkg/em-membranes.pt"), "cube": Path("/pkg/cube.pt")}
    dims = {"em-membranes": 2, "cube": 3, "/runs/v/best.pt": 3, "/runs/f/best.pt": 2}
    choices = params.model_choices(shipped, ["/runs/v/best.pt", "/runs/f/best.pt", "/runs/x.pt"], dims.get)
    assert [label for label, _ in choices] == ["EM membranes (U-Net)", "cube (3D)", "v/best.pt (3D)", "f/best.pt",
                                              "runs/x.pt"]


def test_evaluation_table_of_volumes_adds_the_pooled_row():
    row = {"dice": 0.5, "iou": 0.4, "accuracy": 0.9}
    result = {**row, "count": 1, "volumes": 1, "per_image": [{"name": "v.tif", **row}],
              "pooled_dice": 0.7, "pooled_iou": 0.6, "pooled_accuracy": 0.95}
    _, rows = params.evaluation_table(result)
    assert rows == [["v.tif", 0.5, 0.4, 0.9], ["mean", 0.5, 0.4, 0.9], [params.POOLED, 0.7, 0.6, 0.95]]
    _, rows = params.evaluation_table({**result, "volumes": 0})  # 2D images: as before
    assert [r[0] for r in rows] == ["v.tif", "mean"]


def test_settings_left_auto_are_planned_and_the_others_given():
    assert params.given_settings(epochs=0, batch_size=0, patch_size=0) == set()
    assert params.given_settings(epochs=5, batch_size=0, patch_size=64, spatial_dims=3, spacing="2, 1, 1") == {
        "epochs", "patch_size", "spatial_dims", "spacing"}
    assert params.given_settings(epochs=0, batch_size=0, patch_size=0,
                                 foreground_sampling=params.foreground_value("none (uniform)")) == {"foreground_sampling"}
    assert params.foreground_value("auto") is None
    assert params.train_config(out="run", images="i", masks="m",
                               foreground_sampling=params.foreground_value("half")).foreground_sampling == 0.5
    config = params.train_config(out="run", images="i", masks="m", epochs=0, batch_size=0, patch_size=0)
    defaults = TrainConfig()
    assert (config.epochs, config.batch_size, config.patch_size) == (defaults.epochs, defaults.batch_size,
                                                                     defaults.patch_size)


def test_the_plan_in_the_widgets_words():
    plan = {"settings": {"resize": 256, "patch_size": 256, "batch_size": 8, "epochs": 63, "normalization": "percentile"},
            "reasons": {"epochs": "about 60 min at ~57.0 s an epoch on cpu (...); budget 60 min, kept in 20..300"},
            "kept": {"batch_size": 4}}
    assert params.plan_summary(plan) == ("settings from the data: image size resized to 256², patch size 256, epochs "
                                         "63, normalization percentile (about 60 min)")
    volume = {"settings": {"spatial_dims": 3, "spacing": [0.005] * 3, "resize": None, "epochs": 10},
              "reasons": {"epochs": "about 5 min at ~30.0 s an epoch"}, "kept": {"epochs": 10}}
    assert params.plan_summary(volume) == ("settings from the data: dimensions 3D volumes, voxel spacing 0.005, "
                                           "0.005, 0.005, image size full resolution")
    assert params.plan_summary({"settings": {"epochs": 3}, "kept": {"epochs": 3}}) == "settings: all as set"
    rare = {"settings": {"patch_size": 256, "foreground_sampling": 0.33}, "reasons": {}}
    assert params.plan_summary(rare) == "settings from the data: patch size 256, foreground patches 33%"
