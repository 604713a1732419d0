"""The dock fits a 1366x768 laptop: minimum heights, scroll areas, the Advanced section, the status line."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QScrollArea

pytestmark = pytest.mark.gui

WIDGETS = ("Segment", "Train", "Evaluate")


@pytest.mark.parametrize("name", WIDGETS)
def test_each_dock_widget_fits_a_laptop_screen(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", name)
    assert dock.minimumSizeHint().height() <= 600, dock.minimumSizeHint()
    assert widget.native.minimumSizeHint().height() <= 600
    assert isinstance(widget.scroll_area, QScrollArea) and widget.scroll_area.widgetResizable()
    # the status line and the start button sit outside the scroll area: always visible
    assert not widget.scroll_area.isAncestorOf(widget.status.native)
    button = {"Segment": "run_button", "Train": "start_button", "Evaluate": "evaluate_button"}[name]
    assert not widget.scroll_area.isAncestorOf(getattr(widget, button).native)
    # the rarely changed settings are folded away, their values in the section's title
    assert not widget.advanced.expanded
    assert widget.advanced.text.startswith("Advanced: ") and "device auto" in widget.advanced.text
    assert "device auto" in widget.advanced.values.text() and widget.advanced.values.isVisibleTo(widget.native)


def test_all_three_docked_together_fit(make_napari_viewer):
    viewer = make_napari_viewer()
    docks = [viewer.window.add_plugin_dock_widget("napari-unet-seg", name)[0] for name in WIDGETS]
    assert sum(dock.minimumSizeHint().height() for dock in docks) <= 3 * 600


def test_advanced_title_follows_the_values(make_napari_viewer):
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-unet-seg", "Train")
    widget.batch_size.value, widget.lr.value = 3, 0.01
    title = widget.advanced.values.text()
    assert "batch size 3" in title and "learning rate 0.01" in title
    widget.advanced.expand()
    assert widget.advanced.expanded and widget.batch_size.native.isVisibleTo(widget.advanced.native)
    assert not widget.advanced.values.isVisibleTo(widget.native)  # the controls themselves show the values


def test_errors_show_in_the_status_line_and_as_a_notification(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Train")
    images = tmp_path / "images"
    images.mkdir()
    widget.images.value, widget.masks.value, widget.out.value = images, images, tmp_path / "run"
    assert widget.start() is None
    assert notifications[-1][0] == "error" and "both" in notifications[-1][1]
    assert widget.status.value == notifications[-1][1] and "color" in widget.status.native.styleSheet()


def test_engine_flags_become_control_names_in_the_status_line(make_napari_viewer, synthetic_dir, tmp_path,
                                                              notifications, wait_job):
    """A run folder that holds a run: the engine says "pass --overwrite"; the widget says "tick 'overwrite'"."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Train")
    images, masks = synthetic_dir
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("epoch\n")
    widget.images.value, widget.masks.value, widget.out.value = images, masks, out
    widget.device.value = "cpu"
    state = wait_job(widget.start())
    assert state == "failed"
    assert "--" not in widget.status.value and "tick 'overwrite'" in widget.status.value
    assert notifications[-1] == ("error", widget.status.value)
    assert not widget.status.value.startswith("failed: 0 epoch")


def test_colour_layers_do_not_matter_for_the_layout(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="rgb")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")
    assert widget.image.value.name == "rgb"  # the choices reach the widgets inside the scroll area
    viewer.add_image(np.zeros((8, 8), np.uint8), name="later")
    assert "later" in [layer.name for layer in widget.image.choices]


@pytest.mark.parametrize("name", WIDGETS)
def test_device_lists_hold_only_devices_that_exist_with_reasons(make_napari_viewer, name, monkeypatch):
    import torch

    from napari_unet_seg import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(device, "cuda_problem", lambda: "this torch build has no CUDA support")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", name)
    assert list(widget.device.choices) == ["auto", "cpu"]
    tooltip = widget.device.tooltip
    assert "auto: picks" in tooltip and "no cuda: this torch build has no CUDA support" in tooltip
