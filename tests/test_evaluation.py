import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.evaluation import compare_labels, comparison_kind, evaluate
from napari_unet_seg.image_io import read_image
from napari_unet_seg.inference import predict
from napari_unet_seg.metrics import segmentation_metrics
from napari_unet_seg.pairing import pair_files

# 4x4 truth with 6 foreground pixels; the prediction finds 4 of them and adds 1: tp 4, fp 1, fn 2, tn 9
TRUTH = np.array([[1, 1, 1, 0],
                  [1, 1, 1, 0],
                  [0, 0, 0, 0],
                  [0, 0, 0, 0]], bool)
FOUND = np.array([[1, 1, 0, 0],
                  [1, 1, 0, 1],
                  [0, 0, 0, 0],
                  [0, 0, 0, 0]], bool)


@pytest.mark.parametrize("foreground", [True, 1, 255, 65535])
def test_binary_masks_of_any_foreground_value_compare_as_binary(foreground):
    dtype = bool if foreground is True else (np.uint8 if foreground < 256 else np.uint16)
    truth = (TRUTH * foreground).astype(dtype)
    scores = compare_labels(FOUND.astype(np.uint8), truth)
    assert scores["kind"] == "binary" and "per_class" not in scores and "object_f1" not in scores
    assert scores["dice"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert scores["iou"] == pytest.approx(4 / 7)
    assert scores["accuracy"] == pytest.approx(13 / 16)
    assert scores["precision"] == pytest.approx(4 / 5) and scores["recall"] == pytest.approx(4 / 6)
    # both sides 0/255 (a mask file opened in napari against another)
    assert compare_labels(FOUND * np.uint8(255), truth)["dice"] == pytest.approx(8 / 11)


def test_instance_labels_compare_as_foreground_plus_objects():
    truth = np.array([[1, 1, 0, 2, 2, 0],
                      [1, 1, 0, 2, 2, 0],
                      [0, 0, 0, 0, 0, 0],
                      [3, 3, 0, 0, 0, 0]])
    # a binary result: its connected components are its objects (two here)
    found = np.array([[1, 1, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0],
                      [1, 1, 1, 0, 0, 0]])
    scores = compare_labels(found, truth)
    assert scores["kind"] == "instances" and "per_class" not in scores
    # pixels: tp 6, fp 1, fn 4
    assert scores["dice"] == pytest.approx(12 / 17) and scores["iou"] == pytest.approx(6 / 11)
    # objects: 1 matched exactly (IoU 1), 3 vs the bottom component IoU 2/3 -> matched, 2 missed
    assert (scores["objects_true"], scores["objects_predicted"], scores["objects_matched"]) == (3, 2, 2)
    assert scores["object_precision"] == 1.0 and scores["object_recall"] == pytest.approx(2 / 3)
    assert scores["object_f1"] == pytest.approx(4 / 5)


def test_touching_objects_merged_are_found_pixels_but_lost_objects():
    truth = np.array([[1, 1, 2, 2],
                      [1, 1, 2, 2]])
    scores = compare_labels(truth > 0, truth)
    assert scores["dice"] == 1.0
    # one merged object of 8 px against two of 4: IoU 0.5 each, not above 0.5
    assert scores["objects_matched"] == 0 and scores["object_f1"] == 0.0
    # instance ids in the result are used as they are
    assert compare_labels(truth * 10, truth)["object_f1"] == 1.0


def test_multiclass_only_when_asked():
    pred, truth = np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]])
    assert compare_labels(pred, truth)["kind"] == "instances"
    multi = compare_labels(pred, truth, num_classes=3)
    assert multi["kind"] == "multiclass" and set(multi["per_class"]) == {1, 2}
    # class 2: tp 1, fp 1, fn 0 -> IoU 1/2; class 1: tp 1, fn 1 -> Dice 2/3
    assert multi["per_class"][2]["iou"] == pytest.approx(0.5)
    assert multi["per_class"][1]["dice"] == pytest.approx(2 / 3)
    assert compare_labels(pred, truth, num_classes=2)["kind"] == "instances"
    with pytest.raises(UserError, match="outside the class ids 0..2"):
        compare_labels(pred * 100, truth, num_classes=3)
    with pytest.raises(UserError, match="differ in shape"):
        compare_labels(np.zeros((2, 2)), np.zeros((3, 3)))


def test_comparison_kind_rules():
    assert comparison_kind(np.array([0, 255, 255])) == "binary"
    assert comparison_kind(np.zeros(4)) == "binary"
    assert comparison_kind(np.array([0, 3, 7])) == "instances"
    assert comparison_kind(np.array([0, 1]), num_classes=4) == "multiclass"
    assert comparison_kind(np.array([0.0, 2.0, 5.0])) == "instances"
    assert comparison_kind(np.array([0.0, 0.5, 1.0])) == "binary"  # a soft mask: foreground is > 0


def test_evaluate_folder_matches_per_image_metrics(tiny_model, synthetic_dir):
    images, masks = synthetic_dir
    scores = evaluate(tiny_model, images, masks, device="cpu")
    assert scores["count"] == 8 and len(scores["per_image"]) == 8 and scores["kind"] == "binary"
    assert set(scores) >= {"dice", "iou", "accuracy", "precision", "recall", "per_image", "pooled_dice",
                           "pooled_iou", "thresholded_jaccard", "failed_fraction"}
    assert "object_f1" not in scores
    pairs = pair_files(images, masks)
    predictions = [predict(tiny_model, read_image(p.image), device="cpu") > 0 for p in pairs]
    truths = [read_image(p.mask) > 0 for p in pairs]
    expected = segmentation_metrics(predictions[3], truths[3])
    row = scores["per_image"][3]
    assert row["name"] == pairs[3].image.name and row["dice"] == pytest.approx(expected["dice"])
    dice = np.array([r["dice"] for r in scores["per_image"]])
    iou = np.array([r["iou"] for r in scores["per_image"]])
    assert scores["dice"] == pytest.approx(dice.mean())
    assert scores["failed_fraction"] == pytest.approx(np.mean(dice < 0.5))
    assert scores["thresholded_jaccard"] == pytest.approx(np.mean(np.where(iou >= 0.65, iou, 0)))
    tp = sum(int((p & t).sum()) for p, t in zip(predictions, truths))
    total = sum(int(p.sum() + t.sum()) for p, t in zip(predictions, truths))
    assert scores["pooled_dice"] == pytest.approx(2 * tp / total)


def test_evaluate_instance_masks_adds_object_scores(tiny_model, synthetic_dir, tmp_path):
    from skimage.measure import label

    images, masks = synthetic_dir
    binary = evaluate(tiny_model, images, masks, device="cpu")
    ids = tmp_path / "ids"
    ids.mkdir()
    for path in sorted(masks.iterdir()):
        iio.imwrite(ids / path.name, label(read_image(path) > 0).astype(np.uint16))
    scores = evaluate(tiny_model, images, ids, device="cpu")
    assert scores["kind"] == "instances"
    assert scores["dice"] == pytest.approx(binary["dice"])
    assert scores["pooled_iou"] == pytest.approx(binary["pooled_iou"])
    rows = scores["per_image"]
    matched, true, found = (sum(r[k] for r in rows) for k in ("objects_matched", "objects_true", "objects_predicted"))
    assert true == sum(int(label(read_image(p) > 0).max()) for p in sorted(masks.iterdir()))
    assert scores["object_f1"] == pytest.approx(2 * matched / (true + found))
    assert 0 <= scores["object_f1"] <= 1 and all("object_f1" in r for r in rows)


def test_evaluate_refuses_colour_images_for_a_gray_model(tiny_model, synthetic_dir, tmp_path):
    images, masks = synthetic_dir
    colour = tmp_path / "colour"
    colour.mkdir()
    for path in sorted(images.iterdir()):
        gray = read_image(path)
        iio.imwrite(colour / path.name, np.stack([gray, gray // 2, gray], axis=-1))
    with pytest.raises(UserError, match="img000.png: is a colour"):
        evaluate(tiny_model, colour, masks, device="cpu")
    same = tmp_path / "gray_as_rgb"  # three equal channels are gray: accepted
    same.mkdir()
    for path in sorted(images.iterdir())[:2]:
        iio.imwrite(same / path.name, np.repeat(read_image(path)[..., None], 3, axis=-1))
    assert evaluate(tiny_model, same, masks, device="cpu", skip_unpaired=True)["count"] == 2


def test_evaluate_refuses_gray_images_for_a_colour_model(segnet_model, synthetic_dir, tmp_path):
    from napari_unet_seg.model_file import load_model, save_model
    from napari_unet_seg.models import build_network, network_kwargs

    gray_model = load_model(segnet_model)
    colour = type(gray_model)(build_network("segnet", 3, 1, **network_kwargs("segnet", width=0.125)),
                              gray_model.architecture, 3, 2, gray_model.normalization)
    path = save_model(tmp_path / "colour.pt", colour)
    images, masks = synthetic_dir
    with pytest.raises(UserError, match="img000.png: .*grayscale but the model expects colour"):
        evaluate(path, images, masks, device="cpu")


def test_evaluate_command_prints_every_figure(tiny_model, synthetic_dir, capsys):
    from napari_unet_seg.commands import _print_scores

    images, masks = synthetic_dir
    scores = evaluate(tiny_model, images, masks, device="cpu")
    _print_scores(scores)
    out = capsys.readouterr().out
    assert f"Dice {scores['dice']:.4f}" in out and f"Dice {scores['pooled_dice']:.4f}" in out
    assert f"thresholded Jaccard (IoU below 0.65 counts 0): {scores['thresholded_jaccard']:.4f}" in out
    assert f"failed (Dice below 0.5): {scores['failed']} of 8" in out and "object" not in out
    scores.update(object_f1=0.75, object_precision=0.6, object_recall=1.0, objects_matched=3, objects_true=3,
                  objects_predicted=5)
    for row in scores["per_image"]:
        row["object_f1"] = 0.5
    _print_scores(scores)
    out = capsys.readouterr().out
    assert "objects at IoU 0.5: F1 0.7500  precision 0.6000  recall 1.0000  (3 matched of 3 true, 5 predicted)" in out
    assert out.count("object F1 0.5000") == 8


def test_evaluate_volumes_of_instance_ids(tiny_model, synthetic_dir, tmp_path):
    import tifffile
    from skimage.measure import label

    images, masks = synthetic_dir
    pairs = pair_files(images, masks)[:4]
    volume = np.stack([read_image(p.image) for p in pairs])
    truth = label(np.stack([read_image(p.mask) > 0 for p in pairs])).astype(np.uint16)  # objects in 3D
    for folder, array in (("images", volume), ("masks", truth)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "stack.tif", array, photometric="minisblack")
    scores = evaluate(tiny_model, tmp_path / "images", tmp_path / "masks", device="cpu")
    assert scores["count"] == 1 and scores["kind"] == "instances"
    found = predict(tiny_model, volume, device="cpu") > 0
    assert scores["dice"] == pytest.approx(segmentation_metrics(found, truth > 0)["dice"])
    assert scores["objects_true"] == int(truth.max())
    assert scores["objects_predicted"] == int(label(found).max())


def _threshold_model(spatial_dims: int = 2):
    """A model whose network labels foreground where the (unnormalized) input is above 0.5, in 2D or 3D;
    ``model.seen`` collects the number of axes of every batch it is given (predict runs a copy of it)."""
    import torch
    from torch import nn

    from napari_unet_seg.model_file import SegmentationModel

    seen: set[int] = set()

    class Threshold(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.add(x.ndim)
            return 40 * (x - 0.5)

    model = SegmentationModel(Threshold(), {"name": "unet", "kwargs": {"spatial_dims": spatial_dims}}, 1, 2,
                              {"method": "none"})
    model.seen = seen
    return model


def _write_volumes(folder, pairs: dict) -> tuple:
    import tifffile

    images, masks = folder / "images", folder / "masks"
    images.mkdir()
    masks.mkdir()
    for name, (image, mask) in pairs.items():
        tifffile.imwrite(images / name, image.astype(np.uint8), photometric="minisblack")
        tifffile.imwrite(masks / name, mask.astype(np.uint8) * 255, photometric="minisblack")
    return images, masks


def _three_volumes() -> dict:
    """Volumes whose found voxels are counted by hand (the model finds the image's 1s)."""
    truth_a = np.zeros((4, 8, 8), bool)
    truth_a[:2, :4, :4] = True  # 32 voxels
    found_a = truth_a.copy()
    found_a[2, :4, :4] = True  # 16 false positives: tp 32, fp 16 -> Dice 4/5, IoU 2/3
    truth_b = np.zeros((8, 8, 8), bool)
    truth_b[:4, :4, :4] = True  # 64 voxels
    found_b = truth_b.copy()
    found_b[3] = False  # one slab of 16 missed: tp 48, fn 16 -> Dice 6/7, IoU 3/4
    truth_c = np.zeros((4, 8, 8), bool)
    truth_c[1, :4, :4] = True  # 16 voxels, none found: Dice 0, a failure
    return {"a.tif": (found_a, truth_a), "b.tif": (found_b, truth_b), "c.tif": (np.zeros_like(truth_c), truth_c)}


def test_evaluate_scores_volumes_one_by_one_and_pooled(tmp_path):
    images, masks = _write_volumes(tmp_path, _three_volumes())
    model = _threshold_model()
    scores = evaluate(model, images, masks, device="cpu")
    assert model.seen == {4}  # a 2D model predicts the volumes slice by slice: batches (N, C, Y, X)
    assert scores["kind"] == "binary" and scores["count"] == 3 and scores["volumes"] == 3
    rows = {row["name"]: row for row in scores["per_image"]}
    assert rows["a.tif"]["shape"] == [4, 8, 8] and rows["b.tif"]["shape"] == [8, 8, 8]
    assert rows["a.tif"]["dice"] == pytest.approx(4 / 5) and rows["a.tif"]["iou"] == pytest.approx(2 / 3)
    assert rows["b.tif"]["dice"] == pytest.approx(6 / 7) and rows["b.tif"]["iou"] == pytest.approx(3 / 4)
    assert rows["c.tif"]["dice"] == 0.0 and rows["a.tif"]["accuracy"] == pytest.approx(240 / 256)
    assert scores["dice"] == pytest.approx((4 / 5 + 6 / 7 + 0) / 3)
    assert scores["iou"] == pytest.approx((2 / 3 + 3 / 4 + 0) / 3)
    # pooled over the 256 + 512 + 256 voxels: tp 80, fp 16, fn 16 + 16
    assert scores["pooled_dice"] == pytest.approx(160 / 208) and scores["pooled_iou"] == pytest.approx(80 / 128)
    assert scores["pooled_accuracy"] == pytest.approx((1024 - 48) / 1024)
    assert scores["failed"] == 1 and scores["failed_fraction"] == pytest.approx(1 / 3)


def test_evaluate_volumes_of_instances_matches_objects_in_3d(tmp_path):
    truth = np.zeros((6, 10, 10), np.uint8)
    truth[0:4, 1:4, 1:4] = 1  # 36 voxels
    truth[2:6, 5:9, 5:9] = 2  # 64 voxels, beside object 1 in slices 2 and 3 (diagonally, not touching)
    found = np.zeros_like(truth, dtype=bool)
    found[0:4, 1:4, 1:4] = True  # object 1 whole
    found[2:3, 5:9, 5:9] = True  # one slice of object 2's four: IoU 16/64
    found[5, 0, 0] = True  # a false object of one voxel
    images, masks = tmp_path / "images", tmp_path / "masks"
    _write_volumes(tmp_path, {"v.tif": (found, truth > 0)})
    import tifffile

    tifffile.imwrite(masks / "v.tif", truth, photometric="minisblack")  # the instance ids themselves
    scores = evaluate(_threshold_model(), images, masks, device="cpu")
    assert scores["kind"] == "instances" and scores["volumes"] == 1
    assert (scores["objects_true"], scores["objects_predicted"], scores["objects_matched"]) == (2, 3, 1)
    assert scores["object_precision"] == pytest.approx(1 / 3) and scores["object_recall"] == pytest.approx(1 / 2)
    assert scores["object_f1"] == pytest.approx(2 / 5)
    assert scores["dice"] == pytest.approx(2 * 52 / (53 + 100))  # tp 36 + 16, fp 1, fn 48


def test_compare_labels_of_volumes():
    truth = np.zeros((3, 4, 4), np.uint16)
    truth[:, :2, :2] = 7
    truth[:, 2:, 2:] = 9
    merged = (truth > 0).astype(np.uint8)
    merged[:, 1:3, 1:3] = 1  # the two columns joined in every slice: one object of 24 + 12 voxels
    scores = compare_labels(merged, truth)
    assert scores["kind"] == "instances" and scores["objects_predicted"] == 1 and scores["objects_matched"] == 0
    assert scores["dice"] == pytest.approx(2 * 24 / (24 + 30))
    with pytest.raises(UserError, match=r"the labels \(3x4x4 \(Z x Y x X\)\) and the ground truth "
                                        r"\(3x4x5 \(Z x Y x X\)\) differ in shape"):
        compare_labels(merged, np.zeros((3, 4, 5)))


@pytest.mark.parametrize("image_shape, mask_shape", [((4, 8, 8), (4, 8, 6)), ((4, 8, 8), (5, 8, 8)),
                                                     ((4, 8, 8), (8, 8))])
def test_evaluate_refuses_volumes_whose_mask_differs_in_any_axis(tmp_path, monkeypatch, image_shape, mask_shape):
    from napari_unet_seg import inference

    images, masks = _write_volumes(tmp_path, {"v.tif": (np.zeros(image_shape), np.zeros(mask_shape))})
    predicted = []
    monkeypatch.setattr(inference, "predict", lambda *args, **kwargs: predicted.append(args))
    mask_axes = "Z x Y x X" if len(mask_shape) == 3 else "Y x X"
    with pytest.raises(UserError, match=rf"v.tif: image is {'x'.join(map(str, image_shape))} \(Z x Y x X\) but "
                                        rf"its mask is {'x'.join(map(str, mask_shape))} \({mask_axes}\); they "
                                        r"must have the same shape in every axis"):
        evaluate(_threshold_model(), images, masks, device="cpu")
    assert not predicted  # refused before any prediction


def test_cli_evaluate_exits_2_on_a_volume_whose_mask_differs(tmp_path, segnet_model):
    from cli_helpers import cli, one_line, snapshot

    _write_volumes(tmp_path, {"v.tif": (np.zeros((4, 16, 16)), np.zeros((4, 16, 12)))})
    before = snapshot(tmp_path)
    done = cli("evaluate", "--model", segnet_model, "--images", tmp_path / "images", "--masks", tmp_path / "masks",
               "--json", tmp_path / "scores.json", "--device", "cpu")
    one_line(done, r"v.tif: image is 4x16x16 \(Z x Y x X\) but its mask is 4x16x12 \(Z x Y x X\); they must have")
    assert snapshot(tmp_path) == before  # no scores file written


def test_cli_evaluate_prints_volumes_and_their_pooled_line(tmp_path, capsys):
    from napari_unet_seg.commands import _print_scores

    images, masks = _write_volumes(tmp_path, _three_volumes())
    scores = evaluate(_threshold_model(), images, masks, device="cpu")
    _print_scores(scores)
    out = capsys.readouterr().out
    assert "a.tif" in out and "4x8x8" in out and "8x8x8" in out
    assert f"mean over 3 volumes (binary): Dice {scores['dice']:.4f}" in out
    assert f"pooled over all voxels: Dice {160 / 208:.4f}  IoU {80 / 128:.4f}" in out



@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_evaluate_volumes_with_a_2d_and_a_3d_model(tmp_path, spatial_dims):
    images, masks = _write_volumes(tmp_path, _three_volumes())
    model = _threshold_model(spatial_dims)
    scores = evaluate(model, images, masks, device="cpu")
    # a 2D model sees slices (N, C, Y, X), a 3D model windows of the volume (N, C, Z, Y, X)
    assert model.seen == {spatial_dims + 2}
    assert scores["count"] == scores["volumes"] == 3
    assert scores["pooled_dice"] == pytest.approx(160 / 208) and scores["failed"] == 1


def test_evaluate_names_an_image_of_other_pixels_than_the_models(tmp_path):
    import tifffile

    model = _threshold_model()
    model.config["spacing"] = [0.5, 0.5]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    plane = np.zeros((16, 16), np.uint8)
    plane[4:9, 4:9] = 1
    for name, size in (("fine.tif", 0.1), ("same.tif", 0.5)):
        tifffile.imwrite(tmp_path / "images" / name, plane, imagej=True, resolution=(1 / size, 1 / size),
                         metadata={"unit": "micron"})
        tifffile.imwrite(tmp_path / "masks" / name, plane * 255)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = evaluate(model, tmp_path / "images", tmp_path / "masks", device="cpu")
    told = [str(w.message) for w in caught if "trained on" in str(w.message)]
    assert told == ["fine.tif: pixels of 100 x 100 nm (Y x X), the model was trained on 500 x 500 nm: 5.0x finer in "
                    "every axis, so objects look larger to it than in training; resample the image to the model's "
                    "spacing for reliable labels"]
    assert scores["dice"] == 1.0
