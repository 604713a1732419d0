"""Segmentation metrics from a confusion matrix: Dice, IoU, pixel accuracy, precision, recall."""

from __future__ import annotations

import numpy as np

__all__ = ["METRIC_NAMES", "confusion_matrix", "scores_from_confusion", "segmentation_metrics", "mean_metrics"]

METRIC_NAMES = ("dice", "iou", "accuracy", "precision", "recall")


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = truth, columns = prediction."""
    prediction = np.asarray(prediction).astype(np.int64, copy=False).ravel()
    truth = np.asarray(truth).astype(np.int64, copy=False).ravel()
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction and truth differ in size: {prediction.size} vs {truth.size}")
    if prediction.size and (min(prediction.min(), truth.min()) < 0
                            or max(prediction.max(), truth.max()) >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(truth * num_classes + prediction, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(numerator: float, denominator: float) -> float:
    # Nothing to find and nothing found is a perfect score, as in most challenge evaluations.
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """Scores from a confusion matrix.

    For two classes the scores are those of the foreground (class 1). For more, Dice, IoU, precision
    and recall are averaged over the foreground classes and also given per class under ``per_class``.
    ``accuracy`` is the fraction of pixels with the right label.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    n = confusion.shape[0]
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    per_class = {}
    for c in range(1, n):
        per_class[c] = {
            "dice": _ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c]),
            "iou": _ratio(tp[c], tp[c] + fp[c] + fn[c]),
            "precision": _ratio(tp[c], tp[c] + fp[c]),
            "recall": _ratio(tp[c], tp[c] + fn[c]),
        }
    scores = {k: float(np.mean([per_class[c][k] for c in per_class])) for k in ("dice", "iou", "precision", "recall")}
    scores["accuracy"] = _ratio(tp.sum(), confusion.sum())
    if n > 2:
        scores["per_class"] = per_class
    return scores


def segmentation_metrics(prediction: np.ndarray, truth: np.ndarray, num_classes: int = 2) -> dict:
    """Dice, IoU, accuracy, precision and recall of one labelled image against its ground truth.

    For ``num_classes == 2`` any label > 0 counts as foreground in both arrays.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground-truth shape {truth.shape}")
    if num_classes == 2:
        prediction, truth = prediction > 0, truth > 0
    return scores_from_confusion(confusion_matrix(prediction, truth, num_classes))


def mean_metrics(per_image: list[dict]) -> dict:
    """The mean of each metric over images (per class too, when present)."""
    if not per_image:
        return {k: float("nan") for k in METRIC_NAMES}
    mean = {k: float(np.mean([m[k] for m in per_image])) for k in METRIC_NAMES}
    if "per_class" in per_image[0]:
        classes = per_image[0]["per_class"].keys()
        mean["per_class"] = {c: {k: float(np.mean([m["per_class"][c][k] for m in per_image]))
                                 for k in per_image[0]["per_class"][c]} for c in classes}
    return mean
