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
    assert widget.compare()["kind"] == "instances"  # ids 1 and 2 read as two objects unless told otherwise
    widget.compare_as.value = "class ids"
    scores = widget.compare()
    assert scores["kind"] == "multiclass"
    assert scores["per_class"][1]["dice"] == pytest.approx(2 * 50 / (60 + 50))
    assert scores["per_class"][2]["iou"] == pytest.approx(40 / 50)
    rows = widget.compare_table.value["data"]
    assert [row[0] for row in rows] == ["mean of classes", "1", "2"]


def test_evaluate_refusals(make_napari_viewer, notifications, monkeypatch):
    monkeypatch.setattr("napari_unet_seg.widgets._models.shipped_models", dict)  # no model listed yet
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 4), np.uint8), name="mask")  # a mask file opens as an Image layer
    widget = _evaluate_widget(viewer)
    assert widget.compare() is None and "right-click it in the layer list > Convert to Labels" in notifications[-1][1]
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="a")
    viewer.add_labels(np.zeros((5, 5), np.uint8), name="b")
    widget.labels_layer.value, widget.truth_layer.value = viewer.layers["a"], viewer.layers["b"]
    assert widget.compare() is None
    assert notifications[-1][0] == "error"
    assert "layer 'a' (4, 4) does not match ground truth 'b' (5, 5)" in notifications[-1][1]
    assert widget.export_csv() is None
    assert "evaluate a model" in notifications[-1][1]
    assert widget.evaluate() is None
    assert "choose a model" in notifications[-1][1]


def test_compare_runs_lists_a_folder_and_hands_a_run_to_the_model_lists(make_napari_viewer, tiny_model,
                                                                        synthetic_dir, tmp_path, notifications):
    from napari_unet_seg.sweep import list_runs
    from napari_unet_seg.training import train

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a-tiny").symlink_to(tiny_model.parent, target_is_directory=True)
    images, masks = synthetic_dir
    train(images=images, masks=masks, out=runs / "b-segnet", model="segnet", loss="dice", epochs=1, batch_size=4,
          patch_size=32, width=0.125, augment="none", device="cpu")
    (runs / "not-a-run").mkdir()
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")
    widget = _evaluate_widget(viewer)

    widget.runs_folder.value = runs  # choosing the folder lists it
    table = widget.runs_table.value
    assert list(table["columns"]) == ["run", "model", "loss", "val Dice", "val IoU", "test Dice", "test IoU",
                                      "epochs", "time"]
    expected = list_runs(runs)
    assert [row[:3] for row in table["data"]] == [["a-tiny", "unet", "dicece"], ["b-segnet", "segnet", "dice"]]
    for row, run in zip(table["data"], expected):
        assert float(row[3]) == pytest.approx(run["best_val_dice"], abs=1e-4)
        assert float(row[4]) == pytest.approx(run["best_val_iou"], abs=1e-4)
        assert row[5] == row[6] == "-"  # no test scores in these runs
        assert int(row[7]) == run["epochs_run"] and row[8].endswith(" s")

    widget.run.value = str(runs / "b-segnet")
    assert widget.use_run() == runs / "b-segnet" / "best.pt"
    assert segment.model.value == str(runs / "b-segnet" / "best.pt") == widget.model.value
    assert notifications[-1][0] == "info" and "b-segnet/best.pt" in notifications[-1][1]

    (tmp_path / "empty").mkdir()
    widget.runs_folder.value = tmp_path / "empty"
    assert notifications[-1][0] == "error" and "holds no run" in notifications[-1][1]
    assert len(widget.runs_table.value["data"]) == 2  # the last listing stays
    widget.runs_folder.value = tmp_path / "missing"
    assert notifications[-1][0] == "error" and "does not exist" in notifications[-1][1]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "comparison.csv").write_text("model,loss\nunet,dice\n")  # no run column
    widget.runs_folder.value = tmp_path / "broken"
    assert notifications[-1][0] == "error" and "cannot be read" in notifications[-1][1]


def _rgb_folder(root, count: int = 2):
    from PIL import Image

    from napari_unet_seg.sample_data import synthetic_pair

    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for index in range(count):
        image, mask = synthetic_pair((48, 48), seed=index, rgb=True)
        Image.fromarray(image).save(images / f"c{index}.png")
        Image.fromarray(((mask > 0) * 255).astype(np.uint8)).save(masks / f"c{index}.png")
    return images, masks


def test_evaluate_refuses_a_gray_model_on_colour_images_like_segment(make_napari_viewer, tiny_model, tmp_path,
                                                                     notifications, wait_job):
    viewer = make_napari_viewer()
    widget = _evaluate_widget(viewer)
    images, masks = _rgb_folder(tmp_path)
    widget.model_file.value = tiny_model  # a gray model
    widget.images.value, widget.masks.value = images, masks
    widget.device.value = "cpu"
    assert wait_job(widget.evaluate()) == "failed"
    level, text = notifications[-1]
    assert level == "error" and "c0.png: is a colour (RGB) image" in text and "grayscale" in text
    assert widget.status.value == text and widget.result is None
    assert not widget.table.value["data"]
    widget.masks.value = images
    assert widget.evaluate() is None and "both" in notifications[-1][1]


def test_compare_a_0_255_mask_as_binary(make_napari_viewer):
    """A ground truth opened from a 0/255 PNG scores like the binary masks (engine: ``compare_labels``)."""
    truth = np.zeros((20, 20), np.uint8)
    truth[:10] = 255  # 200 foreground pixels, as File > Open gives a 0/255 mask
    result = np.zeros((20, 20), np.uint8)
    result[2:10] = 1  # 160 of them found
    viewer = make_napari_viewer()
    viewer.add_labels(result, name="result")
    viewer.add_labels(truth, name="truth")
    widget = _evaluate_widget(viewer)
    widget.labels_layer.value, widget.truth_layer.value = viewer.layers["result"], viewer.layers["truth"]
    scores = widget.compare()
    assert scores["kind"] == "binary"
    assert scores["dice"] == pytest.approx(2 * 160 / (160 + 200)) and scores["iou"] == pytest.approx(160 / 200)
    rows = widget.compare_table.value["data"]
    assert rows[0][0] == "foreground" and len(rows) == 1
    assert "(binary)" in widget.status.value


def test_viewer_stays_responsive_while_evaluating(make_napari_viewer, tiny_model, tmp_path, event_loop_gaps,
                                                  check_gaps):
    """The loop keeps ticking while a folder is scored. A warm-up evaluation comes first: the first
    prediction in a process initialises lazily imported modules while holding the GIL (about 100 ms
    once), which is not what this test measures."""
    from napari_unet_seg.sample_data import write_synthetic_folder

    evaluate(tiny_model, *write_synthetic_folder(tmp_path / "warm-up", 2, (192, 192)), device="cpu")
    # enough images for 30+ ticks (about 60 here; predict copies the network once per folder)
    images, masks = write_synthetic_folder(tmp_path / "data", 96, (192, 192))
    viewer = make_napari_viewer()
    widget = _evaluate_widget(viewer)
    widget.model_file.value = tiny_model
    widget.images.value, widget.masks.value = images, masks
    widget.device.value = "cpu"
    gaps = event_loop_gaps(widget.evaluate)
    assert len(gaps) >= 30
    check_gaps(gaps, "evaluating")
    assert widget.progress.value == 96
