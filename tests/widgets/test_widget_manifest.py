"""The napari manifest: three widgets and the sample data, reachable through napari."""

from __future__ import annotations

import pytest


def test_manifest_contributions_resolve():
    from importlib import import_module

    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-unet-seg")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment", "Train", "Evaluate"]
    assert all(not w.autogenerate for w in manifest.contributions.widgets)
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for widget in manifest.contributions.widgets:
        assert commands[widget.command].startswith("napari_unet_seg.widgets.")
    for python_name in commands.values():
        module, name = python_name.split(":")
        assert callable(getattr(import_module(module), name))
    em, dermoscopy, em3d = manifest.contributions.sample_data
    assert commands[em3d.command] == "napari_unet_seg.sample_data:em3d_sample_layers"
    assert em3d.display_name == "EM mitochondria volume (FIB-SEM, 3D)"
    assert commands[em.command] == "napari_unet_seg.sample_data:em_sample_layers"
    assert "ISBI 2012" in em.display_name
    assert commands[dermoscopy.command] == "napari_unet_seg.sample_data:dermoscopy_sample_layers"
    assert "ISIC 2018" in dermoscopy.display_name


@pytest.mark.gui
def test_widgets_and_sample_open_in_a_viewer(make_napari_viewer):
    from napari_unet_seg.widgets.evaluate import EvaluateWidget
    from napari_unet_seg.widgets.segment import SegmentWidget
    from napari_unet_seg.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet-seg", "em")
    assert [layer.name for layer in viewer.layers] == ["EM section (ISBI 2012)", "EM membranes (ground truth)"]
    viewer.open_sample("napari-unet-seg", "dermoscopy")
    assert viewer.layers["Dermoscopy (ISIC 2018)"].rgb and viewer.layers["Lesion (ground truth)"].data.max() == 1
    for name, cls in (("Segment", SegmentWidget), ("Train", TrainWidget), ("Evaluate", EvaluateWidget)):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-unet-seg", name)
        assert isinstance(widget, cls)
    segment = viewer.window.add_plugin_dock_widget("napari-unet-seg", "Segment")[1]
    assert segment.image.value.name == "EM section (ISBI 2012)"  # the layer list fills the drop-down
    viewer.add_image(segment.image.value.data, name="second")
    assert "second" in [choice.name for choice in segment.image.choices]  # and follows new layers
