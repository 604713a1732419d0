import numpy as np
import pytest

from napari_unet_seg.metrics import (confusion_matrix, dataset_metrics, mean_metrics, object_counts, object_scores,
                                     segmentation_metrics)


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


def test_a_class_absent_from_truth_and_prediction_is_left_out_of_the_means():
    truth = np.array([0, 1, 1, 1, 0, 0])
    pred = np.array([0, 1, 0, 1, 0, 0])  # class 1: dice 0.8; classes 2 and 3 are in neither
    m = segmentation_metrics(pred, truth, num_classes=4)
    assert m["absent_classes"] == [2, 3] and m["per_class"][2]["dice"] == 1.0
    assert m["dice"] == pytest.approx(0.8)  # not (0.8 + 1 + 1) / 3
    fp = segmentation_metrics(np.array([0, 1, 0, 3]), np.array([0, 1, 0, 0]), num_classes=4)
    assert fp["absent_classes"] == [2] and fp["dice"] == pytest.approx(0.5)  # a class only predicted counts: 0
    mean = mean_metrics([m, segmentation_metrics(np.array([2, 2, 0]), np.array([2, 0, 0]), num_classes=4)])
    assert mean["per_class"][1]["dice"] == pytest.approx(0.8)  # over the one image that holds class 1
    assert mean["per_class"][2]["dice"] == pytest.approx(2 / 3) and mean["absent_classes"] == [3]
    nothing = segmentation_metrics(np.zeros(4, int), np.zeros(4, int), num_classes=3)
    assert nothing["dice"] == 1.0 and nothing["absent_classes"] == [1, 2]  # as binary: nothing to find


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


def test_objects_match_one_to_one_above_half_iou():
    truth = np.array([[1, 1, 0, 2, 2],
                      [1, 1, 0, 2, 2],
                      [0, 0, 0, 0, 0],
                      [3, 3, 0, 0, 0]])
    pred = np.array([[5, 5, 0, 7, 0],
                     [5, 0, 0, 7, 0],
                     [0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 9]])
    # object 1 (4 px) vs 5 (3 px): overlap 3, union 4, IoU 0.75 -> match; object 2 (4 px) vs 7 (2 px):
    # overlap 2, union 4, IoU 0.5 -> no match (not above 0.5); 3 is missed; 9 is a false object.
    counts = object_counts(pred, truth)
    assert counts == {"objects_true": 3, "objects_predicted": 3, "objects_matched": 1}
    scores = object_scores(counts)
    assert scores["object_precision"] == pytest.approx(1 / 3)
    assert scores["object_recall"] == pytest.approx(1 / 3)
    assert scores["object_f1"] == pytest.approx(2 * 1 / (3 + 3))


def test_objects_none_found_none_there_and_threshold_checked():
    zeros = np.zeros((3, 3), int)
    assert object_scores(object_counts(zeros, zeros))["object_f1"] == 1.0
    one = zeros.copy()
    one[1, 1] = 4
    assert object_scores(object_counts(zeros, one)) == {"object_precision": 1.0, "object_recall": 0.0,
                                                         "object_f1": 0.0}
    with pytest.raises(ValueError, match="one to one"):
        object_counts(one, one, iou=0.3)


def test_dataset_metrics_pooled_thresholded_jaccard_and_failures_by_hand():
    # image a: 4 of 4 found (Dice 1, IoU 1); b: 1 pixel missed (Dice 0, IoU 0);
    # c: truth 5 px, prediction 3 of them (tp 3, fn 2: Dice 6/8, IoU 3/5 = 0.6 < 0.65).
    truths = [np.array([1, 1, 1, 1, 0]), np.array([1, 0, 0, 0, 0]), np.array([1, 1, 1, 1, 1])]
    preds = [np.array([1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 0]), np.array([1, 1, 1, 0, 0])]
    rows = [segmentation_metrics(p, t) for p, t in zip(preds, truths)]
    confusion = sum(confusion_matrix(p, t, 2) for p, t in zip(preds, truths))
    summary = dataset_metrics(rows, confusion)
    assert summary["dice"] == pytest.approx((1 + 0 + 6 / 8) / 3)
    # pooled: tp 4 + 0 + 3 = 7, fn 0 + 1 + 2 = 3, fp 0, tn 1 + 4 + 0 = 5
    assert summary["pooled_dice"] == pytest.approx(14 / 17)
    assert summary["pooled_iou"] == pytest.approx(7 / 10)
    assert summary["pooled_accuracy"] == pytest.approx(12 / 15)
    assert summary["thresholded_jaccard"] == pytest.approx((1 + 0 + 0) / 3)
    assert summary["failed"] == 1 and summary["failed_fraction"] == pytest.approx(1 / 3)
    assert "object_f1" not in summary


def test_dataset_metrics_pool_object_counts():
    rows = [{"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0,
             "objects_true": 2, "objects_predicted": 3, "objects_matched": 2},
            {"dice": 0.4, "iou": 0.25, "accuracy": 0.5, "precision": 1.0, "recall": 0.25,
             "objects_true": 4, "objects_predicted": 1, "objects_matched": 1}]
    summary = dataset_metrics(rows, np.array([[5, 0], [3, 9]]))
    assert summary["objects_matched"] == 3 and summary["objects_true"] == 6
    assert summary["object_precision"] == pytest.approx(3 / 4)
    assert summary["object_recall"] == pytest.approx(3 / 6)
    assert summary["object_f1"] == pytest.approx(6 / 10)


def test_boolean_volumes_count_as_the_integer_labels_do():
    rng = np.random.default_rng(0)
    pred, truth = rng.random((2, 5, 6, 7)) > 0.6
    expected = confusion_matrix(pred.astype(np.uint8), truth.astype(np.uint8), 2)
    assert confusion_matrix(pred, truth, 2).tolist() == expected.tolist()
    assert int(expected.sum()) == 5 * 6 * 7 and expected[1, 1] == np.count_nonzero(pred & truth)
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(pred, truth[:4], 2)


def test_objects_in_3d_match_by_their_voxels_not_their_slices():
    truth = np.zeros((4, 4, 6), int)
    truth[:, 1:3, 0:2] = 1  # a column through 4 slices: 16 voxels
    truth[0:2, 1:3, 3:5] = 2  # 8 voxels in slices 0 and 1
    pred = np.zeros_like(truth)
    pred[0:2, 1:3, 0:2] = 4  # half of column 1: every slice it is in is right, but 3D IoU 8/16 = 0.5
    pred[0:2, 1:3, 3:5] = 6
    pred[0, 1, 5] = 6  # one voxel beside object 2: IoU 8/9
    counts = object_counts(pred, truth)
    assert counts == {"objects_true": 2, "objects_predicted": 2, "objects_matched": 1}
    assert object_scores(counts)["object_f1"] == pytest.approx(1 / 2)
    # slice 0 alone (2D): both objects match
    assert object_counts(pred[0], truth[0])["objects_matched"] == 2
