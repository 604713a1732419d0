"""The Evaluate widget in a real viewer: folder scores against the engine, CSV export, layer comparison."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_unet_seg import evaluate

pytestmark = pytest.mark.gui


def _evaluate_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Evaluate")
    return widget


def test_evaluate_folder_matches_engine_and_exports_csv(make_napari_viewer, tiny_model, synthetic_dir, tmp_path,
                                                         wait_job):
    viewer = make_napari_viewer()
    widget = _evaluate_widget(viewer)
    images, masks = synthetic_dir
    widget.model_file.value = tiny_model
    widget.images.value, widget.masks.value = images, masks
    widget.device.value = "cpu"
    assert not widget.export_button.enabled
    job = widget.evaluate()
    assert not widget.evaluate_button.enabled
    assert wait_job(job) == "done"
    assert widget.evaluate_button.enabled and widget.export_button.enabled

    expected = evaluate(tiny_model, images, masks, device="cpu")
    table = widget.table.value
    assert list(table["columns"]) == ["image", "Dice", "IoU", "accuracy"]
    rows = table["data"]
    count = len(list(images.iterdir()))
    assert len(rows) == expected["count"] + 1 == count + 1
    for row, truth in zip(rows, expected["per_image"]):
        assert row[0] == truth["name"]
        assert [float(v) for v in row[1:]] == pytest.approx([truth["dice"], truth["iou"], truth["accuracy"]],
                                                              abs=1e-4)
    assert rows[-1][0] == "mean"
    assert [float(v) for v in rows[-1][1:]] == pytest.approx([expected["dice"], expected["iou"],
                                                              expected["accuracy"]], abs=1e-4)
    assert widget.progress.value == widget.progress.max == count

    written = widget.export_csv(path=tmp_path / "scores")
    assert written == tmp_path / "scores.csv"
    with written.open() as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["image", "Dice", "IoU", "accuracy"]
    assert len(lines) == count + 2 and lines[-1][0] == "mean"
    assert float(lines[-1][1]) == pytest.approx(expected["dice"], abs=1e-4)


def test_compare_labels_layers_binary_and_multiclass(make_napari_viewer):
    viewer = make_napari_viewer()
    truth = np.zeros((10, 10), np.uint8)
    truth[:5] = 1  # 50 foreground pixels
    result = np.zeros((10, 10), np.uint8)
    result[:4] = 1  # 40 of them found, no false positive
    viewer.add_labels(result, name="result")
    viewer.add_labels(truth, name="truth")
    widget = _evaluate_widget(viewer)
    widget.labels_layer.value = viewer.layers["result"]
    widget.truth_layer.value = viewer.layers["truth"]
    scores = widget.compare()
    assert scores["dice"] == pytest.approx(2 * 40 / (40 + 50))
    assert scores["iou"] == pytest.approx(40 / 50)
    rows = widget.compare_table.value["data"]
    assert rows[0][0] == "foreground" and float(rows[0][1]) == pytest.approx(0.8889, abs=1e-4)

    multi_truth = np.zeros((10, 10), np.uint8)
    multi_truth[:5], multi_truth[5:] = 1, 2
    multi = multi_truth.copy()
    multi[9] = 1  # ten pixels of class 2 called class 1
    viewer.add_labels(multi, name="multi")
    viewer.add_labels(multi_truth, name="multi truth")
    widget.labels_layer.value = viewer.layers["multi"]
    widget.truth_layer.value = viewer.layers["multi truth"]
    scores = widget.compare()
    assert scores["per_class"][1]["dice"] == pytest.approx(2 * 50 / (60 + 50))
    assert scores["per_class"][2]["iou"] == pytest.approx(40 / 50)
    rows = widget.compare_table.value["data"]
    assert [row[0] for row in rows] == ["mean of classes", "1", "2"]


def test_evaluate_refusals(make_napari_viewer, notifications, monkeypatch):
    monkeypatch.setattr("napari_unet_seg.widgets._models.shipped_models", dict)  # no model listed yet
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="a")
    viewer.add_labels(np.zeros((5, 5), np.uint8), name="b")
    widget = _evaluate_widget(viewer)
    widget.labels_layer.value, widget.truth_layer.value = viewer.layers["a"], viewer.layers["b"]
    assert widget.compare() is None
    assert notifications[-1][0] == "error" and "differ in shape" in notifications[-1][1]
    assert widget.export_csv() is None
    assert "evaluate a model" in notifications[-1][1]
    assert widget.evaluate() is None
    assert "choose a model" in notifications[-1][1]
