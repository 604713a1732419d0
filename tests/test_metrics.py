import numpy as np
import pytest

from napari_unet_seg.metrics import confusion_matrix, mean_metrics, segmentation_metrics


def test_binary_metrics_worked_by_hand():
    truth = np.array([[1, 1, 0, 0],
                      [1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 0],
                     [1, 1, 1, 0]])
    # tp = 3, fp = 1, fn = 1, tn = 3
    m = segmentation_metrics(pred, truth)
    assert m["dice"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["iou"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)


def test_any_positive_label_is_foreground_for_binary():
    assert segmentation_metrics(np.array([0, 255]), np.array([0, 1]))["dice"] == 1.0


def test_empty_prediction_and_truth_is_perfect_and_miss_is_zero():
    zeros = np.zeros((3, 3), int)
    assert segmentation_metrics(zeros, zeros)["dice"] == 1.0
    ones = np.ones((3, 3), int)
    assert segmentation_metrics(zeros, ones)["dice"] == 0.0
    assert segmentation_metrics(zeros, ones)["iou"] == 0.0


def test_multiclass_per_class_by_hand():
    truth = np.array([0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 2, 2, 2, 0])
    m = segmentation_metrics(pred, truth, num_classes=3)
    # class 1: tp 1, fp 0, fn 1 -> dice 2/3, iou 1/2; class 2: tp 2, fp 1, fn 1 -> dice 4/6, iou 2/4
    assert m["per_class"][1]["dice"] == pytest.approx(2 / 3)
    assert m["per_class"][2]["iou"] == pytest.approx(0.5)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_confusion_and_errors():
    c = confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    assert c.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 2)
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((2, 2)), np.zeros((3, 3)))


def test_mean_metrics():
    rows = [{"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0},
            {"dice": 0.5, "iou": 0.0, "accuracy": 0.5, "precision": 0.0, "recall": 0.5}]
    assert mean_metrics(rows)["dice"] == 0.75
    assert np.isnan(mean_metrics([])["dice"])
