"""Make the screenshots of docs/widgets.md: each widget at work in a real napari window.

Run from the repository root (it takes a minute or two on a CPU)::

    xvfb-run -a -s "-screen 0 1366x768x24" python docs/make_screenshots.py

or on a desktop simply ``python docs/make_screenshots.py``. The window is 1366x768, a laptop screen.
It trains a small model on the EM crops that ship with the package (in a temporary folder), taking
the Train screenshot mid-training (live plot under the canvas), then drives the Segment and Evaluate
widgets through their public methods, as the tests do, and writes ``docs/images/{train,segment,
evaluate}.png`` (palette PNGs, well under 300 KB each).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = "napari-unet-seg"


#: The window: a 1366x768 laptop screen.
WIDTH, HEIGHT = 1366, 768


def wait(app, job, timeout: float = 600.0) -> None:
    """Let the viewer run until the widget's job ends."""
    if job is None:
        raise SystemExit("the widget refused to start; see the notification above")
    deadline = time.monotonic() + timeout
    while job.running:
        if time.monotonic() > deadline:
            raise SystemExit(f"{job.what} did not finish in {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)
    settle(app)
    if job.state != "done":
        raise SystemExit(f"{job.what} ended {job.state}: {job.error}")


def settle(app, seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def dock(viewer, app, name: str, width: int = 430):
    """Open a widget through the manifest, as the Plugins menu does, at a readable width."""
    from qtpy.QtCore import Qt

    dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    viewer.window._qt_window.resizeDocks([dock_widget], [width], Qt.Orientation.Horizontal)
    settle(app)
    return dock_widget, widget


def save(viewer, app, name: str, out: Path, reset: bool = True) -> Path:
    """Grab the whole window and store it as a palette PNG."""
    from PIL import Image

    settle(app)
    if reset:
        viewer.reset_view()
    settle(app)
    grabbed = viewer.window._qt_window.grab()  # the whole window: canvas, layer list and dock widgets
    raw = out / f"{name}.raw.png"
    grabbed.save(str(raw))
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            out / f"{name}.png", optimize=True)
    raw.unlink()
    path = out / f"{name}.png"
    print(f"{path}: {path.stat().st_size // 1024} KB")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images", help="folder for the PNGs")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the demo training run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")  # no info toasts on the canvas
    import napari
    import torch

    from napari_unet_seg.sample_data import sample_folders

    torch.manual_seed(0)
    images, masks = sample_folders("em")
    work = Path(tempfile.mkdtemp(prefix="nus-screenshots-"))
    viewer = napari.Viewer(title="napari-unet-seg")
    app = napari.qt.get_qapp()
    viewer.window._qt_window.resize(WIDTH, HEIGHT)
    viewer.open_sample(PLUGIN, "em")
    image_layer, truth_layer = viewer.layers
    truth_layer.visible = False

    # Train: a short run on the six EM crops; the screenshot is taken mid-training, with the live plot
    train_dock, train = dock(viewer, app, "Train")
    train.images.value, train.masks.value = images, masks
    train.out.value = work / "em-run"
    train.epochs.value, train.batch_size.value, train.patch_size.value = args.epochs, 4, 128
    train.model_width.value, train.val_fraction.value, train.device.value = 0.5, 0.2, "cpu"
    job = train.start()
    settle(app)
    viewer.reset_view()  # the plot's dock took room under the canvas
    middle = max(2, args.epochs // 2)
    while job.running and len(train.history) < middle:
        app.processEvents()
        time.sleep(0.02)
    settle(app, 1.0)
    train.plot.wait()
    settle(app)
    save(viewer, app, "train", args.out, reset=False)
    wait(app, job)
    viewer.window.remove_dock_widget(train_dock)
    viewer.window.remove_dock_widget(train.plot)

    # Segment: the trained model (selected automatically after training) on the EM section
    segment_dock, segment = dock(viewer, app, "Segment")
    segment.model_file.value = train.best_path
    segment.image.value = image_layer
    segment.tile.value = 256
    segment.min_size.value = 20
    wait(app, segment.run())
    viewer.layers.selection.active = viewer.layers[f"{image_layer.name} labels"]
    save(viewer, app, "segment", args.out)
    viewer.window.remove_dock_widget(segment_dock)

    # Evaluate: the model on the sample folder, and the new labels against the ground truth
    evaluate_dock, evaluate = dock(viewer, app, "Evaluate")
    evaluate.model_file.value = train.best_path
    evaluate.images.value, evaluate.masks.value = images, masks
    evaluate.device.value = "cpu"
    wait(app, evaluate.evaluate())
    evaluate.csv_file.value = work / "scores.csv"
    evaluate.labels_layer.value = viewer.layers[f"{image_layer.name} labels"]
    evaluate.truth_layer.value = truth_layer
    evaluate.compare()
    save(viewer, app, "evaluate", args.out)
    viewer.close()


if __name__ == "__main__":
    main()
