"""Evaluate > Compare in a real viewer: a 0/255 mask layer scores as binary, instance labels add objects."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _evaluate_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Evaluate")
    return widget


def _compare(widget, viewer, labels, truth):
    widget.labels_layer.reset_choices()
    widget.truth_layer.reset_choices()
    widget.labels_layer.value, widget.truth_layer.value = viewer.layers[labels], viewer.layers[truth]
    return widget.compare()


def test_compare_a_0_255_mask_layer_is_the_dice_of_the_binary_masks(make_napari_viewer, tmp_path):
    truth = np.zeros((20, 20), np.uint8)
    truth[:10] = 255  # 200 foreground pixels, as a mask PNG holds them
    result = np.zeros((20, 20), np.uint8)
    result[5:15] = 1  # 100 of them found, 100 background pixels called foreground
    iio.imwrite(tmp_path / "truth.png", truth)
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "truth.png", layer_type="labels", name="truth")  # what File > Open gives
    viewer.add_labels(result, name="result")
    widget = _evaluate_widget(viewer)
    scores = _compare(widget, viewer, "result", "truth")
    assert scores["kind"] == "binary" and "per_class" not in scores
    assert scores["dice"] == pytest.approx(2 * 100 / (200 + 200))
    assert scores["iou"] == pytest.approx(100 / 300)
    rows = widget.compare_table.value["data"]
    assert len(rows) == 1 and rows[0][0] == "foreground" and float(rows[0][1]) == pytest.approx(0.5)


def test_compare_instance_labels_scores_foreground_and_objects(make_napari_viewer):
    truth = np.zeros((20, 20), np.uint16)
    truth[2:6, 2:6], truth[2:6, 12:16], truth[14:18, 2:6] = 1, 2, 3  # three objects of 16 pixels
    result = np.zeros((20, 20), np.uint8)
    result[2:6, 2:6] = 1  # the first found exactly
    result[2:6, 12:14] = 1  # half of the second: IoU 0.5, not a match
    viewer = make_napari_viewer()
    viewer.add_labels(truth, name="truth")
    viewer.add_labels(result, name="result")
    widget = _evaluate_widget(viewer)
    scores = _compare(widget, viewer, "result", "truth")
    assert scores["kind"] == "instances"
    assert scores["dice"] == pytest.approx(2 * 24 / (24 + 48))  # tp 24, fp 0, fn 24
    assert (scores["objects_matched"], scores["objects_true"], scores["objects_predicted"]) == (1, 3, 2)
    assert scores["object_f1"] == pytest.approx(2 * 1 / (3 + 2))
