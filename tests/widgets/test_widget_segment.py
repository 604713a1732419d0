"""The Segment widget in a real viewer: layers it adds and updates, progress, Cancel, errors, latency."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet_seg import predict
from napari_unet_seg.sample_data import synthetic_pair

pytestmark = pytest.mark.gui


def _segment_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")
    return widget


def test_segment_adds_then_updates_labels(make_napari_viewer, tiny_model, wait_job):
    viewer = make_napari_viewer()
    image, _ = synthetic_pair((64, 64), seed=3)
    layer = viewer.add_image(image, name="cells", scale=(0.5, 2.0), translate=(3.0, -1.0))
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model  # the file picker adds the model to the list and selects it
    assert widget.model.value == str(tiny_model)
    assert widget.image.value.name == "cells"

    job = widget.run()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    assert wait_job(job) == "done"
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    labels = viewer.layers["cells labels"]
    expected = predict(tiny_model, image, device="cpu")
    assert labels.data.shape == (64, 64) and labels.data.dtype == np.uint8
    assert set(np.unique(labels.data)) <= {0, 1}
    np.testing.assert_array_equal(labels.data, expected)
    np.testing.assert_allclose(labels.scale, layer.scale)
    np.testing.assert_allclose(labels.translate, layer.translate)
    assert widget.progress.value == widget.progress.max >= 1

    # a second run (here with a threshold that keeps nothing) updates the same layer
    widget.threshold.value = 0.99
    widget.min_size.value = 10**6
    assert wait_job(widget.run()) == "done"
    assert [lay.name for lay in viewer.layers].count("cells labels") == 1
    assert len(viewer.layers) == 2
    assert viewer.layers["cells labels"] is labels
    assert not labels.data.any()


def test_corrected_labels_and_the_users_own_layer_are_never_replaced(make_napari_viewer, tiny_model, wait_job,
                                                                     notifications):
    viewer = make_napari_viewer()
    image, _ = synthetic_pair((64, 64), seed=3)
    viewer.add_image(image, name="cells")
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model
    assert wait_job(widget.run()) == "done"
    labels = viewer.layers["cells labels"]
    labels.brush_size, labels.selected_label = 9, 7
    labels.paint((20, 20), 7)  # the user's correction, as the brush makes it
    corrected = labels.data.copy()
    assert (corrected == 7).sum() > 0
    widget.threshold.value = 0.99
    assert wait_job(widget.run()) == "done"
    assert viewer.layers["cells labels"] is labels and np.array_equal(labels.data, corrected)
    new = viewer.layers[-1]
    assert new.name == "cells labels [1]" and not (new.data == 7).any()
    assert ("warning", "kept the layer 'cells labels' (edited since it was segmented); the new labels are the "
            "layer 'cells labels [1]'") in notifications
    assert wait_job(widget.run()) == "done"  # the new, unedited layer is the one updated now
    assert len(viewer.layers) == 3 and np.array_equal(labels.data, corrected)

    viewer.add_labels(np.full((64, 64), 3, np.uint8), name="own labels")
    viewer.add_image(image, name="own")
    widget.image.value = viewer.layers["own"]
    assert wait_job(widget.run()) == "done"
    assert (viewer.layers["own labels"].data == 3).all()
    assert ("warning", "kept the layer 'own labels' (not made by Segment); the new labels are the layer "
            "'own labels [1]'") in notifications


def test_segment_stack_rgb_multiscale_and_probabilities(make_napari_viewer, tiny_model, wait_job):
    viewer = make_napari_viewer()
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model
    widget.probabilities.value = True

    stack = np.stack([synthetic_pair((48, 40), seed=s)[0] for s in range(3)])
    viewer.add_image(stack, name="stack", scale=(2.0, 1.0, 1.0))
    widget.image.value = viewer.layers["stack"]
    assert wait_job(widget.run()) == "done"
    assert viewer.layers["stack labels"].data.shape == (3, 48, 40)
    np.testing.assert_allclose(viewer.layers["stack labels"].scale, (2.0, 1.0, 1.0))
    probabilities = viewer.layers["stack probabilities"].data
    assert probabilities.shape == (3, 48, 40) and probabilities.dtype == np.float32
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    assert widget.progress.max >= 3  # one step per slice at least

    rgb, _ = synthetic_pair((40, 56), seed=1, rgb=True)
    viewer.add_image(rgb, name="colour", rgb=True)
    widget.image.value = viewer.layers["colour"]
    assert wait_job(widget.run()) == "done"
    assert viewer.layers["colour labels"].data.shape == (40, 56)

    full = synthetic_pair((64, 64), seed=2)[0]
    viewer.add_image([full, full[::2, ::2]], name="pyramid", multiscale=True)
    widget.image.value = viewer.layers["pyramid"]
    assert wait_job(widget.run()) == "done"
    np.testing.assert_array_equal(viewer.layers["pyramid labels"].data, predict(tiny_model, full, device="cpu"))


def test_segment_instances_and_uncertainty_layer(make_napari_viewer, tiny_model, wait_job):
    viewer = make_napari_viewer()
    image, _ = synthetic_pair((64, 80), seed=5)
    viewer.add_image(image, name="cells", scale=(0.5, 2.0), translate=(3.0, -1.0))
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model
    widget.instances.value = "watershed"
    widget.min_distance.value = 3
    widget.uncertainty.value = True
    assert wait_job(widget.run()) == "done"
    expected, spread = predict(tiny_model, image, device="cpu", instances="watershed", min_distance=3,
                               uncertainty=True)
    labels = viewer.layers["cells labels"]
    assert labels.data.dtype == np.int32 and labels.data.max() >= 2
    np.testing.assert_array_equal(labels.data, expected)
    layer = viewer.layers["cells uncertainty"]
    assert layer.data.dtype == np.float32 and layer.colormap.name == "inferno"
    np.testing.assert_array_equal(layer.data, spread)
    np.testing.assert_allclose(layer.scale, (0.5, 2.0))
    np.testing.assert_allclose(layer.translate, (3.0, -1.0))

    widget.instances.value = "components"  # a second run updates both layers
    assert wait_job(widget.run()) == "done"
    assert [lay.name for lay in viewer.layers] == ["cells", "cells labels", "cells uncertainty"]
    assert viewer.layers["cells labels"].data.max() <= labels.data.max()


def test_segment_cancel_stops_the_job(make_napari_viewer, tiny_model, wait_job, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (40, 64, 64), dtype=np.uint8), name="big")
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model
    widget.tile.value = 32
    widget.tta.value = True
    job = widget.run()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=20_000)
    widget.cancel_button.clicked()
    assert wait_job(job) == "cancelled"
    assert widget.progress.value < widget.progress.max
    assert widget.status.value.startswith("cancelled") and "100" not in widget.status.value
    assert "big labels" not in [layer.name for layer in viewer.layers]
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_segment_errors_are_one_line_notifications(make_napari_viewer, tmp_path, notifications, wait_job,
                                                   monkeypatch):
    monkeypatch.setattr("napari_unet_seg.widgets._models.shipped_models", dict)  # no model listed yet
    viewer = make_napari_viewer()
    widget = _segment_widget(viewer)
    assert widget.run() is None  # no image layer
    assert notifications[-1][0] == "error" and "open an image" in notifications[-1][1]

    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    widget.image.reset_choices()
    assert widget.run() is None  # no model
    assert "choose a model" in notifications[-1][1]

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    widget.model_file.value = broken
    assert wait_job(widget.run()) == "failed"
    level, text = notifications[-1]
    assert level == "error" and "broken.pt" in text and "\n" not in text
    assert "img labels" not in [layer.name for layer in viewer.layers]
    assert widget.run_button.enabled


def test_segment_sync_mode_runs_in_the_main_thread(make_napari_viewer, tiny_model, monkeypatch):
    monkeypatch.setenv("NUS_SYNC", "1")
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_pair((32, 32))[0], name="img")
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model
    job = widget.run()
    assert job.worker is None and job.state == "done"  # finished before run() returned
    assert viewer.layers["img labels"].data.shape == (32, 32)


def test_viewer_stays_responsive_while_segmenting(make_napari_viewer, tiny_model, event_loop_gaps, check_gaps):
    viewer = make_napari_viewer()
    # long enough for 100+ ticks, so that the 99th percentile is not simply the largest gap (the first
    # prediction in a process blocks the event loop for about 100 ms once; the max limit covers it)
    viewer.add_image(np.random.default_rng(1).integers(0, 255, (96, 256, 256), dtype=np.uint8), name="big")
    widget = _segment_widget(viewer)
    widget.model_file.value = tiny_model
    widget.tile.value = 64
    gaps = event_loop_gaps(widget.run)
    assert len(gaps) >= 100
    check_gaps(gaps, "segmenting")


def test_shipped_model_is_listed_by_name_and_chosen_first(make_napari_viewer):
    widget = _segment_widget(make_napari_viewer())
    combo = widget.model.native
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels[:2] == ["Dermoscopy lesions (U-Net)", "EM membranes (U-Net)"]  # shipped models first, by name
    assert widget.model.value == "dermoscopy-lesions"  # no image open: the first one


def test_the_shipped_model_follows_the_kind_of_image(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    gray = viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="colour", rgb=True)
    from napari_unet_seg.widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    widget.image.value = rgb
    assert widget.model.value == "dermoscopy-lesions"
    widget.image.value = gray
    assert widget.model.value == "em-membranes"
    widget.models.add(tiny_model)  # a model file the user chose is kept whatever the image
    widget.image.value = rgb
    assert widget.model.value == str(tiny_model)


def test_the_models_own_post_processing_fills_the_controls_and_is_applied(make_napari_viewer, tiny_model,
                                                                          tmp_path, wait_job):
    from napari_unet_seg.model_file import load_model, save_model

    model = load_model(tiny_model)
    model.postprocess = {"threshold": 0.35, "tta": True, "keep_largest": True, "fill_holes": True,
                         "evidence": {"images": 2, "plain_dice": 0.8, "chosen_dice": 0.82, "best_dice_with_tta": 0.82}}
    tuned = save_model(tmp_path / "tuned.pt", model)
    viewer = make_napari_viewer()
    image, _ = synthetic_pair((64, 64), seed=5)
    viewer.add_image(image, name="cells")
    widget = _segment_widget(viewer)
    widget.model_file.value = tuned
    assert (widget.threshold.value, widget.tta.value, widget.keep_largest.value, widget.fill_holes.value) == (
        0.35, True, True, True)
    assert wait_job(widget.run()) == "done"
    labels = viewer.layers["cells labels"].data
    np.testing.assert_array_equal(labels, predict(tuned, image, device="cpu"))
    from skimage.measure import label

    assert label(labels).max() <= 1  # one object kept
    widget.fill_holes.value = widget.keep_largest.value = False  # the user's ticks win over the model's
    assert widget.options()["keep_largest"] is False and widget.options()["fill_holes"] is False
    model.postprocess = {}
    widget.model_file.value = save_model(tmp_path / "plain.pt", model)  # no choice of its own: the defaults
    assert (widget.threshold.value, widget.tta.value, widget.keep_largest.value) == (0.5, False, False)
