"""Segmentation metrics: Dice, IoU, pixel accuracy, precision and recall from a confusion matrix; object
precision/recall/F1 of instance labels matched at IoU > 0.5; the figures of a whole data set (means over
images, pooled scores, ISIC's thresholded Jaccard, the fraction of failed images)."""

from __future__ import annotations

import numpy as np

__all__ = ["METRIC_NAMES", "CLASS_METRICS", "OBJECT_IOU", "JACCARD_THRESHOLD", "FAILED_DICE", "confusion_matrix",
           "scores_from_confusion", "segmentation_metrics", "mean_metrics", "object_counts", "object_scores",
           "dataset_metrics"]

METRIC_NAMES = ("dice", "iou", "accuracy", "precision", "recall")
#: The metrics given per class (accuracy is one figure over all classes).
CLASS_METRICS = ("dice", "iou", "precision", "recall")

#: A predicted object matches a true object when their IoU is above this (one-to-one: two objects
#: cannot both overlap a third by more than half of their union).
OBJECT_IOU = 0.5

#: ISIC 2018's thresholded Jaccard: an image's IoU counts as 0 below this.
JACCARD_THRESHOLD = 0.65

#: An image with Dice below this counts as failed.
FAILED_DICE = 0.5


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = truth, columns = prediction, of images or volumes alike.

    Two boolean arrays (foreground masks) are counted without an integer copy of either, so the memory a
    large volume needs stays that of one more boolean array.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if num_classes == 2 and prediction.dtype == truth.dtype == bool and prediction.shape == truth.shape:
        return _binary_confusion(prediction, truth)
    prediction = prediction.astype(np.int64, copy=False).ravel()
    truth = np.asarray(truth).astype(np.int64, copy=False).ravel()
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction and truth differ in size: {prediction.size} vs {truth.size}")
    if prediction.size and (min(prediction.min(), truth.min()) < 0
                            or max(prediction.max(), truth.max()) >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(truth * num_classes + prediction, minlength=num_classes**2).reshape(num_classes, num_classes)


def _binary_confusion(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    tp = np.count_nonzero(np.logical_and(prediction, truth))
    fp, fn = np.count_nonzero(prediction) - tp, np.count_nonzero(truth) - tp
    return np.array([[truth.size - tp - fp - fn, fp], [fn, tp]], dtype=np.int64)


def _ratio(numerator: float, denominator: float) -> float:
    # Nothing to find and nothing found is a perfect score, as in most challenge evaluations.
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """Scores from a confusion matrix.

    For two classes the scores are those of the foreground (class 1). For more, Dice, IoU, precision
    and recall are averaged over the foreground classes and also given per class under ``per_class``; a
    class found in neither the truth nor the prediction scores 1 there but is listed in ``absent_classes``
    and left out of the average (as nnU-Net does), which would otherwise rise with every class an image
    lacks. ``accuracy`` is the fraction of pixels with the right label.
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
    absent = [c for c in per_class if tp[c] + fp[c] + fn[c] == 0]
    counted = [c for c in per_class if c not in absent] or list(per_class)  # none anywhere: all score 1
    scores = {k: float(np.mean([per_class[c][k] for c in counted])) for k in CLASS_METRICS}
    scores["accuracy"] = _ratio(tp.sum(), confusion.sum())
    if n > 2:
        scores["per_class"], scores["absent_classes"] = per_class, absent
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
    """The mean of each metric over images; per class too, when given, over the images that hold the class
    in their truth or prediction (``absent_classes``: those no image holds)."""
    if not per_image:
        return {k: float("nan") for k in METRIC_NAMES}
    mean = {k: float(np.mean([m[k] for m in per_image])) for k in METRIC_NAMES}
    if "per_class" in per_image[0]:
        mean["per_class"], mean["absent_classes"] = {}, []
        for c in per_image[0]["per_class"]:
            rows = [m["per_class"][c] for m in per_image if c not in m.get("absent_classes", ())]
            mean["per_class"][c] = {k: float(np.mean([r[k] for r in rows])) if rows else 1.0 for k in CLASS_METRICS}
            if not rows:
                mean["absent_classes"].append(c)
    return mean


def object_counts(prediction: np.ndarray, truth: np.ndarray, iou: float = OBJECT_IOU) -> dict:
    """Objects in ``truth`` and ``prediction`` (instance ids, 0 background) and how many match at IoU > ``iou``.

    ``iou`` must be at least 0.5, so that each object has at most one match.
    """
    if iou < 0.5:
        raise ValueError(f"object IoU threshold {iou} below 0.5 would not match one to one")
    prediction = np.asarray(prediction).astype(np.int64, copy=False).ravel()
    truth = np.asarray(truth).astype(np.int64, copy=False).ravel()
    true_ids, true_area = np.unique(truth[truth > 0], return_counts=True)
    pred_ids, pred_area = np.unique(prediction[prediction > 0], return_counts=True)
    both = (truth > 0) & (prediction > 0)
    base = int(prediction.max(initial=0)) + 1
    pairs, overlap = np.unique(truth[both] * base + prediction[both], return_counts=True)
    union = (true_area[np.searchsorted(true_ids, pairs // base)]
             + pred_area[np.searchsorted(pred_ids, pairs % base)] - overlap)
    return {"objects_true": int(true_ids.size), "objects_predicted": int(pred_ids.size),
            "objects_matched": int(np.count_nonzero(overlap / union > iou))}


def object_scores(counts: dict) -> dict:
    """``object_precision``, ``object_recall`` and ``object_f1`` from :func:`object_counts` (or their sums)."""
    matched, true, predicted = counts["objects_matched"], counts["objects_true"], counts["objects_predicted"]
    return {"object_precision": _ratio(matched, predicted), "object_recall": _ratio(matched, true),
            "object_f1": _ratio(2 * matched, true + predicted)}


def dataset_metrics(per_image: list[dict], confusion: np.ndarray) -> dict:
    """The figures of a data set from its per-image scores and its summed confusion matrix.

    The means over images of :data:`METRIC_NAMES` (and ``per_class``); ``pooled_dice``, ``pooled_iou``
    and ``pooled_accuracy`` of all pixels together (micro); ``thresholded_jaccard`` (ISIC 2018: the mean
    of the images' IoU, each counted as 0 below :data:`JACCARD_THRESHOLD`); ``failed`` and
    ``failed_fraction`` (images with Dice below :data:`FAILED_DICE`); and, when the rows hold object
    counts, the pooled counts with ``object_precision``, ``object_recall`` and ``object_f1``.
    """
    summary = mean_metrics(per_image)
    pooled = scores_from_confusion(confusion)
    summary.update({f"pooled_{k}": pooled[k] for k in ("dice", "iou", "accuracy")})
    iou = np.array([m["iou"] for m in per_image], dtype=np.float64)
    dice = np.array([m["dice"] for m in per_image], dtype=np.float64)
    summary["thresholded_jaccard"] = float(np.where(iou >= JACCARD_THRESHOLD, iou, 0.0).mean()) if iou.size \
        else float("nan")
    summary["failed"] = int(np.count_nonzero(dice < FAILED_DICE))
    summary["failed_fraction"] = summary["failed"] / dice.size if dice.size else float("nan")
    if per_image and "objects_true" in per_image[0]:
        counts = {k: int(sum(m[k] for m in per_image)) for k in ("objects_true", "objects_predicted",
                                                                 "objects_matched")}
        summary.update(counts, **object_scores(counts))
    return summary
