import numpy as np
import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.evaluation import compare_labels, evaluate
from napari_unet_seg.image_io import read_image
from napari_unet_seg.inference import predict
from napari_unet_seg.metrics import segmentation_metrics
from napari_unet_seg.pairing import pair_files


def test_evaluate_folder_matches_per_image_metrics(tiny_model, synthetic_dir):
    images, masks = synthetic_dir
    scores = evaluate(tiny_model, images, masks, device="cpu")
    assert scores["count"] == 8 and len(scores["per_image"]) == 8
    assert set(scores) >= {"dice", "iou", "accuracy", "precision", "recall", "per_image"}
    pair = pair_files(images, masks)[3]
    expected = segmentation_metrics(predict(tiny_model, read_image(pair.image), device="cpu"),
                                    read_image(pair.mask) > 0)
    row = scores["per_image"][3]
    assert row["name"] == pair.image.name and row["dice"] == pytest.approx(expected["dice"])
    assert scores["dice"] == pytest.approx(np.mean([r["dice"] for r in scores["per_image"]]))


def test_compare_labels_binary_and_multiclass():
    truth = np.array([[0, 1], [1, 1]])
    assert compare_labels(truth, truth)["dice"] == 1.0
    assert compare_labels(np.zeros_like(truth), truth)["dice"] == 0.0
    multi = compare_labels(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]]))
    assert set(multi["per_class"]) == {1, 2} and multi["per_class"][2]["iou"] == pytest.approx(0.5)
    with pytest.raises(UserError, match="differ in shape"):
        compare_labels(np.zeros((2, 2)), np.zeros((3, 3)))
