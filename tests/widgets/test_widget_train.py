"""The Train widget in a real viewer: a one-epoch run from folders and from layers, Cancel, hand-over,
adding corrected pairs to the training set and fine-tuning."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from napari_unet_seg.image_io import read_image
from napari_unet_seg.model_file import load_model
from napari_unet_seg.pairing import pair_files
from napari_unet_seg.sample_data import synthetic_pair

pytestmark = pytest.mark.gui


def _train_widget(viewer, **values):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Train")
    small = {"epochs": 1, "batch_size": 2, "patch_size": 32, "model_width": 0.25, "val_fraction": 0.2,
             "device": "cpu", "augment": "none"}
    for name, value in {**small, **values}.items():
        getattr(widget, name).value = value
    return widget


def _shown(widget) -> bool:
    return not widget.native.isHidden()  # the window is not shown, so ask whether it was hidden


def test_train_one_epoch_from_folders(make_napari_viewer, synthetic_dir, tmp_path, wait_job):
    viewer = make_napari_viewer()
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")
    images, masks = synthetic_dir
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "run")
    assert _shown(widget.images) and _shown(widget.add_button) and _shown(widget.image_layer)

    job = widget.start()
    assert not widget.start_button.enabled and widget.cancel_button.enabled
    assert wait_job(job, timeout=60_000) == "done"
    assert widget.start_button.enabled and not widget.cancel_button.enabled

    best = tmp_path / "run" / "best.pt"
    assert best.is_file() and (tmp_path / "run" / "history.csv").is_file()
    assert load_model(best).config["command"].startswith("napari")
    # the plot received one point per curve and one per batch, the progress bars are full, the table
    # shows the best epoch
    for title in ("train loss", "val loss", "val Dice", "val IoU"):
        assert list(widget.lines[title].get_xdata()) == [1], title
    batches = widget.batch_progress.max
    assert list(widget.lines["train loss (batch)"].get_xdata()) == pytest.approx(
        [b / batches for b in range(1, batches + 1)])
    assert np.isfinite(widget.lines["val Dice"].get_ydata()).all()
    assert widget.epoch_progress.value == widget.epoch_progress.max == 1
    assert widget.batch_progress.value == widget.batch_progress.max
    table = dict(widget.table.value["data"])
    assert table["epoch"] == "1"
    assert float(table["val Dice"]) == pytest.approx(widget.history[0]["val_dice"], abs=1e-4)
    # the new model is selected in the Segment widget of the same viewer, and listed (marked newest) in a
    # Segment and an Evaluate widget opened afterwards; "start from" stays "new model"
    assert segment.model.value == str(best)
    assert widget.start_from.value == "(new model)" and str(best) in widget.start_from.choices
    viewer.window.remove_dock_widget(segment_dock)
    for name in ("Segment", "Evaluate"):
        _, later = viewer.window.add_plugin_dock_widget("napari-unet-seg", name)
        assert later is not segment and str(best) in later.model.choices, name
        combo = later.model.native
        assert any(combo.itemText(i).endswith("[newest]") and "run/best.pt" in combo.itemText(i)
                   for i in range(combo.count())), name
    assert "done" in widget.status.value and "run/best.pt" in widget.status.value


def test_settings_left_auto_are_chosen_from_the_data(make_napari_viewer, synthetic_dir, tmp_path, wait_job,
                                                     notifications):
    """Settings left at "auto" (here the patch and batch sizes) come from the plan, those set (epochs) are
    kept, and the plan is told and stored in the model as on the command line."""
    from napari_unet_seg.model_file import load_model

    viewer = make_napari_viewer()
    images, masks = synthetic_dir
    _, fresh = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Train")
    assert [fresh.epochs.native.text(), fresh.batch_size.native.text(), fresh.patch_size.native.text()] == [
        "auto"] * 3  # the defaults: chosen from the data
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "run", epochs=2, batch_size=0,
                           patch_size=0)
    assert "batch size auto, patch size auto" in widget.advanced.values.text()
    assert wait_job(widget.start(), timeout=60_000) == "done"
    plan = load_model(tmp_path / "run" / "best.pt").config["extra"]["plan"]
    assert plan["kept"] == {"epochs": 2}
    told = [text for level, text in notifications if text.startswith("settings from the data:")]
    assert len(told) == 1 and "epochs" not in told[0], told
    for name in ("batch_size", "patch_size"):
        assert f"{name.replace('_', ' ')} {plan['settings'][name]}," in told[0], told
    assert len(widget.history) == 2 == widget.epoch_progress.max


def test_train_from_layers(make_napari_viewer, tmp_path, wait_job):
    viewer = make_napari_viewer()
    pairs = [synthetic_pair((48, 48), seed=s) for s in range(3)]
    image = viewer.add_image(np.stack([p[0] for p in pairs]), name="stack")
    labels = np.stack([(p[1] > 0).astype(np.uint8) for p in pairs])
    labels[2] = 0  # an unpainted slice is left out
    viewer.add_labels(labels, name="painted")
    widget = _train_widget(viewer, out=tmp_path / "run")
    widget.source.value = "layers"
    assert _shown(widget.image_layer) and not _shown(widget.images) and not _shown(widget.add_button)
    assert widget.image_layer.value is image or widget.image_layer.value.name == "stack"
    widget.labels_layer.value = viewer.layers["painted"]
    assert wait_job(widget.start(), timeout=60_000) == "done"
    assert (tmp_path / "run" / "best.pt").is_file()
    assert len(widget.history) == 1


def test_train_cancel_stops_and_keeps_finished_epochs(make_napari_viewer, synthetic_dir, tmp_path, wait_job, qtbot):
    viewer = make_napari_viewer()
    images, masks = synthetic_dir
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "run", epochs=500)
    job = widget.start()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=60_000)
    began = time.perf_counter()
    widget.cancel_button.clicked()
    assert wait_job(job, timeout=30_000) == "cancelled"
    assert time.perf_counter() - began < 10
    assert 1 <= len(widget.history) < 500
    assert widget.start_button.enabled
    # the engine's own cancelled branch ran: the run's files are all there, and the widget says so
    for name in ("best.pt", "last.pt", "history.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert job.result is not None and job.result.status == "cancelled"
    assert widget.status.value.startswith("cancelled") and "kept best.pt, last.pt, history.csv, curves.png" in \
        widget.status.value
    assert widget.table.value["data"]  # the best finished epoch is shown


def test_train_refuses_bad_values_with_one_line(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    widget = _train_widget(viewer)
    assert widget.start() is None
    assert notifications[-1] == ("error", notifications[-1][1]) and "output folder" in notifications[-1][1]
    widget.out.value = tmp_path / "run"
    assert widget.start() is None
    assert "images folder" in notifications[-1][1]
    widget.source.value = "layers"
    assert widget.start() is None
    assert "image layer" in notifications[-1][1]
    assert widget.job is None and widget.start_button.enabled
    viewer.add_image(np.zeros((32, 32), np.uint8), name="cells")
    viewer.add_image(np.zeros((32, 32), np.uint8), name="cells_mask")  # a mask file opens as an Image layer
    assert widget.start() is None
    assert notifications[-1][1].endswith("(a mask opened from a file is an Image layer: right-click it in the layer "
                                         "list > Convert to Labels)")


def test_viewer_stays_responsive_while_training(make_napari_viewer, tiny_model, tmp_path, event_loop_gaps,
                                                check_gaps):
    """The Qt event loop keeps ticking while a run trains in its worker thread.

    ``tiny_model`` is only a warm-up: the first training in a process imports torch and MONAI modules,
    and a C extension being initialised holds the GIL, which no widget design can avoid.

    The widget asks the engine for no per-epoch ``curves.png`` (``curves_every=0``): drawing it with
    matplotlib in the worker would hold the GIL for 0.3-1 s each epoch. The run's curves are drawn once,
    at its end.
    """
    from napari_unet_seg.sample_data import write_synthetic_folder

    # enough batches for 150+ ticks (with room: CPU training got 1.6x faster and 3 epochs once gave 137), so
    # that the 99th percentile is not simply one of the few epoch ends
    images, masks = write_synthetic_folder(tmp_path / "data", 40, (64, 64))
    viewer = make_napari_viewer()
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "run", epochs=8)
    gaps = event_loop_gaps(widget.start)
    assert len(gaps) >= 150
    check_gaps(gaps, "training")
    assert widget.plot.renders >= 1  # the live plot was rendered (in its own thread) while training


def test_add_to_training_set_saves_pairs_and_never_overwrites(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    image, mask = synthetic_pair((40, 40), seed=1)
    viewer.add_image(image, name="cells")
    viewer.add_labels((mask > 0).astype(np.uint8), name="corrected")
    images, masks = tmp_path / "train" / "images", tmp_path / "train" / "masks"
    widget = _train_widget(viewer, images=images, masks=masks)
    widget.image_layer.value, widget.labels_layer.value = viewer.layers["cells"], viewer.layers["corrected"]

    first = widget.add_to_training_set()
    assert first == (images / "cells.tif", masks / "cells.png")
    assert notifications[-1][0] == "info" and "cells.tif" in notifications[-1][1] and str(images) in \
        notifications[-1][1]
    assert np.array_equal(read_image(first[0]), image) and np.array_equal(read_image(first[1]), mask > 0)
    kept = first[0].read_bytes(), first[1].read_bytes()
    viewer.layers["corrected"].data[:5] = 2  # another correction of the same image: a second pair
    second = widget.add_to_training_set()
    assert second == (images / "cells-2.tif", masks / "cells-2.png")
    assert (first[0].read_bytes(), first[1].read_bytes()) == kept
    assert read_image(second[1])[0, 0] == 2
    assert sorted(p.image.name for p in pair_files(images, masks)) == ["cells-2.tif", "cells.tif"]

    # a stack: the slice the viewer shows
    stack = np.stack([synthetic_pair((40, 40), seed=s)[0] for s in range(3)])
    labels = np.zeros(stack.shape, np.uint8)
    labels[1, 5:20, 5:20] = 1
    viewer.add_image(stack, name="stack")
    viewer.add_labels(labels, name="stack labels")
    widget.image_layer.value, widget.labels_layer.value = viewer.layers["stack"], viewer.layers["stack labels"]
    viewer.dims.set_current_step(0, 1)
    image_path, mask_path = widget.add_to_training_set()
    assert image_path.name == "stack_z1.tif" and np.array_equal(read_image(image_path), stack[1])
    assert np.array_equal(read_image(mask_path), labels[1])
    viewer.dims.set_current_step(0, 2)  # nothing painted there
    assert widget.add_to_training_set() is None
    assert notifications[-1][0] == "error" and "paint or correct the labels first" in notifications[-1][1]
    viewer.dims.ndisplay = 3
    assert widget.add_to_training_set() is None
    assert "view it in 2D" in notifications[-1][1]
    viewer.dims.ndisplay = 2
    widget.labels_layer.value = viewer.layers["corrected"]  # 2D labels on a 3D stack's slice: same shape
    assert widget.add_to_training_set()[0].name == "stack_z2.tif"
    widget.masks.value = None
    assert widget.add_to_training_set() is None and "masks folder" in notifications[-1][1]
    assert len(list(images.iterdir())) == len(list(masks.iterdir())) == 4


def test_fine_tune_continues_a_model_into_a_new_folder(make_napari_viewer, tiny_model, synthetic_dir, tmp_path,
                                                       wait_job, notifications):
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")
    images, masks = synthetic_dir
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(tiny_model, base / "best.pt")  # the folder holds a run: fine-tuning must not touch it
    kept = (base / "best.pt").read_bytes()
    widget = _train_widget(viewer, images=images, masks=masks, out=base, epochs=2, model_width=1.0)
    assert widget.fine_tune() is None
    assert notifications[-1][0] == "error" and "choose the model to fine-tune" in notifications[-1][1]
    assert widget.model.enabled

    widget.start_file.value = base / "best.pt"
    assert widget.start_from.value == str(base / "best.pt")
    # the model fixes the architecture and the classes
    assert widget.model_width.value == 0.25 and not widget.model.enabled and not widget.classes.enabled
    widget.overwrite.value = True
    assert widget.start() is None and "the model to start from" in notifications[-1][1]  # would replace it

    job = widget.fine_tune()
    assert not widget.finetune_button.enabled and not widget.start_button.enabled
    assert wait_job(job, timeout=60_000) == "done"
    tuned = tmp_path / "base-2" / "best.pt"
    assert widget.out.value == tmp_path / "base-2" and any("base-2" in text for _, text in notifications)
    assert (base / "best.pt").read_bytes() == kept
    start, result = load_model(tiny_model), load_model(tuned)
    assert result.architecture == start.architecture and result.normalization == start.normalization
    assert result.config["width"] == 0.25
    # the same live plot and progress as a training run
    for title in ("train loss", "val loss", "val Dice", "val IoU"):
        assert list(widget.lines[title].get_xdata()) == [1, 2], title
    assert widget.epoch_progress.value == widget.epoch_progress.max == 2
    assert widget.status.value.startswith("done") and "base-2" in widget.status.value
    # the new model goes to Segment; "start from" keeps the model the user chose (and lists the new one)
    assert segment.model.value == str(tuned)
    assert widget.start_from.value == str(base / "best.pt") and str(tuned) in widget.start_from.choices
    widget.start_from.value = "(new model)"
    assert widget.model.enabled and widget.model_width.enabled


def test_announce_model_reaches_the_model_lists_of_the_same_viewer_only(qtbot, tmp_path):
    from napari.utils._proxies import PublicOnlyProxy

    from napari_unet_seg.widgets._models import ModelPicker, announce_model, same_viewer

    class FakeViewer:
        pass

    mine, other = FakeViewer(), FakeViewer()
    assert same_viewer(PublicOnlyProxy(mine), mine) and not same_viewer(PublicOnlyProxy(mine), other)
    here, there = ModelPicker(PublicOnlyProxy(mine)), ModelPicker(other)
    model = tmp_path / "run" / "best.pt"
    assert announce_model(model, PublicOnlyProxy(mine)) >= 1
    assert here.combo.value == str(model) and here.value == str(model)
    assert str(model) not in there.files and there.combo.value != str(model)


@pytest.mark.gpu
def test_training_on_cuda_gives_gpu_memory_back(make_napari_viewer, synthetic_dir, tmp_path, wait_job):
    import gc

    import torch

    viewer = make_napari_viewer()
    images, masks = synthetic_dir
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "run", device="cuda")
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    assert wait_job(widget.start(), timeout=120_000) == "done"
    assert load_model(tmp_path / "run" / "best.pt").config["device"] == "cuda"
    # the widget's finish handler collected the job's tensors and emptied the CUDA cache
    assert torch.cuda.memory_reserved() <= before + 32 * 2**20


@pytest.fixture
def started_from(monkeypatch):
    """The ``initial_model`` of every training run the widgets start (None: random weights); with
    ``start_dice`` set, the runs' results report it (the val Dice of their starting model)."""
    import napari_unet_seg.training as training

    real = training.train_steps

    class Seen(list):
        start_dice = None

    seen = Seen()

    def recording(config, **options):
        seen.append(options.get("initial_model"))
        result = yield from real(config, **options)
        if seen.start_dice is not None:
            result.start_dice = seen.start_dice
        return result

    monkeypatch.setattr(training, "train_steps", recording)
    return seen


def test_a_second_start_trains_from_random_weights_unless_continuing_was_chosen(make_napari_viewer, synthetic_dir,
                                                                              tmp_path, wait_job, started_from):
    viewer = make_napari_viewer()
    images, masks = synthetic_dir
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "run")
    assert wait_job(widget.start(), timeout=60_000) == "done"
    best = tmp_path / "run" / "best.pt"
    assert widget.start_from.value == "(new model)" and widget.model.enabled
    widget.out.value = tmp_path / "second"
    assert wait_job(widget.start(), timeout=60_000) == "done"
    assert started_from == [None, None]  # "new model" stayed new
    assert "training a new unet" not in widget.status.value and widget.status.value.startswith("done")
    widget.start_from.value = str(best)  # continuing is a choice
    widget.out.value = tmp_path / "third"
    assert wait_job(widget.start(), timeout=60_000) == "done"
    assert started_from == [None, None, str(best)]


def test_a_worse_fine_tune_is_reported_and_the_previous_model_stays_selected(make_napari_viewer, tiny_model,
                                                                           synthetic_dir, tmp_path, wait_job,
                                                                           notifications, started_from):
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")
    segment.model_file.value = tiny_model
    images, masks = synthetic_dir
    widget = _train_widget(viewer, images=images, masks=masks, out=tmp_path / "tuned")
    widget.start_from.value = str(tiny_model)
    started_from.start_dice = 1.5  # no Dice reaches it: the fine-tune is worse than its start
    assert wait_job(widget.fine_tune(), timeout=60_000) == "done"
    tuned = str(tmp_path / "tuned" / "best.pt")
    assert segment.model.value == str(tiny_model) and tuned in segment.model.choices
    assert "Worse than the model it started from" in widget.status.value and "1.5000" in widget.status.value
    assert any(level == "warning" and "Worse" in text for level, text in notifications)

    started_from.start_dice = 0.0  # better than its start: the new model is selected
    widget.out.value = tmp_path / "tuned-again"
    assert wait_job(widget.fine_tune(), timeout=60_000) == "done"
    assert segment.model.value == str(tmp_path / "tuned-again" / "best.pt")
    assert "Worse" not in widget.status.value


def test_a_double_click_on_add_adds_the_pair_once(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    image, mask = synthetic_pair((40, 40), seed=2)
    viewer.add_image(image, name="cells")
    viewer.add_labels((mask > 0).astype(np.uint8), name="corrected")
    images, masks = tmp_path / "images", tmp_path / "masks"
    widget = _train_widget(viewer, images=images, masks=masks)
    widget.image_layer.value, widget.labels_layer.value = viewer.layers["cells"], viewer.layers["corrected"]
    widget.add_button.clicked()
    widget.add_button.clicked()
    assert sorted(p.name for p in images.iterdir()) == ["cells.tif"] and len(list(masks.iterdir())) == 1
    assert notifications[-1][0] == "error" and "already in the training set as cells.tif" in notifications[-1][1]
    assert "already in the training set" in widget.status.value
    viewer.layers["corrected"].data[:3] = 1  # a new correction is a new pair
    assert widget.add_to_training_set()[0].name == "cells-2.tif"
