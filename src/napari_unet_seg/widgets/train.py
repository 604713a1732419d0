"""The Train widget: train or fine-tune a model on folders of pairs or on the open layers, with a live plot.

The work happens in ``napari_unet_seg.training.train_steps``, in a worker thread; this widget turns
its values into a :class:`~napari_unet_seg.config.TrainConfig`, draws the events and, when a model
file is written, hands it to the Segment and Evaluate widgets of the same viewer. "Add to training
set" saves the current image and its corrected labels into the folders
(``napari_unet_seg.training_set.add_pair``), and "Fine-tune" continues a model on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton,
                              RadioButtons, SpinBox)
from qtpy.QtWidgets import QSizePolicy

from ..config import AUGMENTS, OPTIMIZERS
from ..device import DEVICES
from ..errors import UserError
from ..events import Batch, Checkpoint, Epoch, Message
from ..losses import LOSS_NAMES
from ..models import MODEL_NAMES
from ..training_set import add_pair, fresh_folder
from ._models import NEW_MODEL, ModelPicker, announce_model
from ._params import best_rows, curve_series, layer_array, layer_pairs, model_label, optional_path, train_config
from ._table import fill_table, make_table
from ._worker import Job, free_gpu_memory, report_error, show_message, start_job

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget"]

FOLDERS, LAYERS = "folders", "layers"
TABLE_HEADERS = ("best epoch", "value")


def start_settings(model: str) -> dict[str, Any]:
    """The Train widget values a model to start from fixes: ``{"model", "model_width", "classes"}``.

    Raises:
        UserError: the model file cannot be read.
    """
    from ..model_file import read_metadata
    from ..pretrained import pretrained_path

    meta = read_metadata(pretrained_path(model) or model)
    settings: dict[str, Any] = {"classes": int(meta["num_classes"])}
    if meta.get("architecture", {}).get("name") in MODEL_NAMES:
        settings["model"] = meta["architecture"]["name"]
    if meta.get("config", {}).get("width"):
        settings["model_width"] = float(meta["config"]["width"])
    return settings


class TrainWidget(Container):
    """Train a U-Net or SegNet; plots train/val loss, val Dice and val IoU per epoch."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False)
        self.viewer = viewer
        self.job: Job | None = None
        self.history: list[dict] = []
        self.best_path: Path | None = None
        self.source = RadioButtons(label="training data", choices=[FOLDERS, LAYERS], value=FOLDERS,
                                   orientation="horizontal")
        self.images = FileEdit(label="images folder", mode="d", nullable=True)
        self.masks = FileEdit(label="masks folder", mode="d", nullable=True,
                              tooltip="masks named like their images (0 background, > 0 foreground or class ids)")
        self.image_layer = ComboBox(label="image layer", choices=self._layers_of("Image"),
                                    tooltip="the image to train on (layers), or to add to the training set "
                                            "(folders)")
        self.labels_layer = ComboBox(label="labels layer", choices=self._layers_of("Labels"),
                                     tooltip="labels painted on the image layer; stack slices without labels "
                                             "are left out")
        self.add_button = PushButton(text="Add to training set",
                                     tooltip="save the image layer and its labels (the current slice of a stack) "
                                             "as a new pair in the images and masks folders")
        self.start_models = ModelPicker(viewer, new_model=True)
        self.start_from, self.start_file = self.start_models.combo, self.start_models.file
        self.start_from.label, self.start_file.label = "start from", "start from file"
        self.start_from.tooltip = ("new model: random weights; a model: fine-tune it (its architecture and "
                                   "classes are kept)")
        self.model = ComboBox(label="model", choices=MODEL_NAMES, value="unet",
                              tooltip="network architecture: U-Net variants (MONAI) or SegNet")
        self.model_width = FloatSpinBox(label="width", value=1.0, min=0.125, max=4.0, step=0.125,
                                        tooltip="channel multiplier of the network (0.25: small and fast)")
        self.classes = SpinBox(label="classes", value=2, min=2, max=255,
                               tooltip="2: binary (foreground / background); more: class ids 0..N-1")
        self.loss = ComboBox(label="loss", choices=LOSS_NAMES, value="dicece")
        self.optimizer = ComboBox(label="optimizer", choices=OPTIMIZERS, value="adamw")
        self.lr = FloatSpinBox(label="learning rate", value=1e-3, min=1e-6, max=1.0, step=1e-5)
        self.epochs = SpinBox(label="epochs", value=50, min=1, max=100_000)
        self.batch_size = SpinBox(label="batch size", value=8, min=1, max=4096)
        self.patch_size = SpinBox(label="patch size", value=256, min=16, max=8192, step=16,
                                  tooltip="edge of the random square crops trained on, in pixels")
        self.val_fraction = FloatSpinBox(label="val fraction", value=0.1, min=0.0, max=0.9, step=0.05,
                                         tooltip="share of the pairs held out to validate (and pick best.pt)")
        self.augment = ComboBox(label="augmentation", choices=AUGMENTS, value="light")
        self.out = FileEdit(label="output folder", mode="d", nullable=True,
                            tooltip="where best.pt, last.pt, history.csv and curves.png are written")
        self.overwrite = CheckBox(text="overwrite a run in that folder", value=False)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.start_button = PushButton(text="Start")
        self.finetune_button = PushButton(text="Fine-tune",
                                          tooltip="continue training the 'start from' model on the training "
                                                  "data, into a new output folder when the chosen one holds a run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.epoch_progress = ProgressBar(label="epochs", value=0, min=0, max=1)
        self.batch_progress = ProgressBar(label="batches", value=0, min=0, max=1)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.table = make_table(TABLE_HEADERS, min_height=235, label="best")
        self.extend([self.source, self.images, self.masks, self.image_layer, self.labels_layer, self.add_button,
                     self.start_from, self.start_file, self.model, self.model_width, self.classes, self.loss,
                     self.optimizer, self.lr, self.epochs, self.batch_size, self.patch_size, self.val_fraction,
                     self.augment, self.out, self.overwrite, self.device,
                     Container(widgets=[self.start_button, self.finetune_button, self.cancel_button],
                               layout="horizontal", labels=False),
                     self.epoch_progress, self.batch_progress, self.status])
        self._make_plot()
        self.append(self.table)
        self.source.changed.connect(self._on_source)
        self.start_button.changed.connect(self.start)
        self.finetune_button.changed.connect(self.fine_tune)
        self.cancel_button.changed.connect(self.cancel)
        self.add_button.changed.connect(self.add_to_training_set)
        self.start_from.changed.connect(self._on_start_from)
        self._on_source(self.source.value)
        self._on_start_from(self.start_from.value)

    def _layers_of(self, kind: str):
        def choices(_widget: Any = None) -> list[tuple[str, Any]]:
            import napari.layers

            cls = getattr(napari.layers, kind)
            return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)]

        return choices

    def _make_plot(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # fixed margins and legend places: re-laying out the figure at each epoch would cost the main thread
        self.figure = Figure(figsize=(4.2, 2.4))
        self.figure.subplots_adjust(left=0.1, right=0.98, bottom=0.19, top=0.96, wspace=0.28)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.loss_axes, self.score_axes = self.figure.subplots(1, 2)
        self.lines = {}
        panels = ((self.loss_axes, ("train loss", "val loss"), "upper right"),
                  (self.score_axes, ("val Dice", "val IoU"), "lower right"))
        for axes, titles, place in panels:
            for title in titles:
                self.lines[title] = axes.plot([], [], marker="o", markersize=3, label=title)[0]
            axes.set_xlabel("epoch", fontsize=8)
            axes.tick_params(labelsize=7)
            axes.legend(fontsize=7, loc=place)
        self.score_axes.set_ylim(0, 1)
        self.native.layout().addWidget(self.canvas)

    def _on_source(self, value: str) -> None:
        # the layers stay visible with folders: they are what "Add to training set" saves
        for widget in (self.images, self.masks, self.add_button):
            widget.visible = value == FOLDERS

    def _on_start_from(self, value: str | None) -> None:
        fixed = value not in (None, NEW_MODEL)
        if fixed:
            try:
                settings = start_settings(value)
            except UserError as error:
                report_error(error)
                settings = {}
            for name, setting in settings.items():
                getattr(self, name).value = setting
        for widget in (self.model, self.model_width, self.classes):
            widget.enabled = not fixed

    def _training_arrays(self) -> list | None:
        if self.source.value != LAYERS:
            return None
        image, labels = self.image_layer.value, self.labels_layer.value
        if image is None or labels is None:
            raise UserError("choose an image layer and a Labels layer painted on it, or train on folders")
        return layer_pairs(layer_array(image.data, image.multiscale), layer_array(labels.data, labels.multiscale),
                           rgb=bool(image.rgb), image_name=image.name, labels_name=labels.name)

    def config(self):
        """The :class:`TrainConfig` of the current values (raises ``UserError`` when one is refused)."""
        return train_config(out=self.out.value, images=self.images.value, masks=self.masks.value,
                            from_layers=self.source.value == LAYERS, model=self.model.value,
                            width=self.model_width.value, classes=self.classes.value, loss=self.loss.value,
                            optimizer=self.optimizer.value, lr=self.lr.value, epochs=self.epochs.value,
                            batch_size=self.batch_size.value, patch_size=self.patch_size.value,
                            val_fraction=self.val_fraction.value, augment=self.augment.value,
                            device=self.device.value, overwrite=self.overwrite.value)

    def _initial_model(self, config, fine_tune: bool) -> str | None:
        """The model to start from (None: random weights); with ``fine_tune`` a free output folder."""
        from ..training import RUN_FILES

        initial = self.start_from.value
        initial = None if initial in (None, NEW_MODEL) else str(initial)
        if initial is None:
            if fine_tune:
                raise UserError("choose the model to fine-tune in 'start from' (a shipped model, a model file "
                                "or the one Train made)")
            return None
        if fine_tune:
            out = fresh_folder(config.out, RUN_FILES)
            if out != Path(config.out):
                show_message(Message(f"{config.out} holds a run; fine-tuning into {out}"))
                config.out, self.out.value = str(out), out
        elif config.overwrite:
            path, out = Path(initial).resolve(), Path(config.out).resolve()
            if path.parent == out and path.name in RUN_FILES:
                raise UserError(f"output folder {config.out} holds {path.name}, the model to start from; choose "
                                "another output folder (overwriting would replace that model)")
        return initial

    def start(self, *_: Any, fine_tune: bool = False) -> Job | None:
        """Start training (from the 'start from' model's weights when one is chosen); returns the job (None
        when the values are refused). ``fine_tune`` requires a model to start from and a free output folder."""
        from ..training import train_steps

        if self.job is not None and self.job.running:
            return self.job
        try:
            config = self.config()
            arrays = self._training_arrays()
            initial = self._initial_model(config, fine_tune)
        except UserError as error:
            report_error(error)
            return None
        self.history, self.best_path = [], None
        self._draw()
        fill_table(self.table, TABLE_HEADERS, [])
        self.epoch_progress.max, self.epoch_progress.value = config.epochs, 0
        self.batch_progress.value = 0
        what = f"fine-tuning {model_label(initial)}" if initial else f"training {config.model}"
        self.status.value = f"{what} -> {config.out}"
        self._set_running(True)
        self.job = start_job("training", lambda cancel: train_steps(config, arrays=arrays, initial_model=initial,
                                                                    cancel=cancel),
                             on_event=self._on_event,
                             on_finish=self._on_finish, owner=self.native)
        return self.job

    def fine_tune(self, *_: Any) -> Job | None:
        """Continue training the 'start from' model on the training data, into a free output folder."""
        return self.start(fine_tune=True)

    def _current_plane(self, layer: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """A layer's 2D data at the viewer's current slice, and the slice's index (empty for 2D data)."""
        data = layer_array(layer.data, layer.multiscale)
        leading = layer.ndim - 2
        if leading <= 0:
            return np.asarray(data), ()
        dims = self.viewer.dims
        if dims.ndisplay != 2 or sorted(dims.displayed) != [dims.ndim - 2, dims.ndim - 1]:
            raise UserError(f"layer {layer.name!r} is a stack: view it in 2D, in its (Y, X) plane, to add the "
                            "current slice")
        position = layer.world_to_data(dims.point)[:leading]
        index = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(position, data.shape[:leading]))
        return np.asarray(data[index]), index

    def add_to_training_set(self, *_: Any) -> tuple[Path, Path] | None:
        """Save the image layer and the labels layer (their current slice) as a new pair in the folders.

        Returns ``(image_path, mask_path)``, None when refused; existing files are never overwritten.
        """
        try:
            image, labels = self.image_layer.value, self.labels_layer.value
            if image is None or labels is None:
                raise UserError("choose the image layer and the Labels layer with your corrections to add them")
            images, masks = optional_path(self.images.value), optional_path(self.masks.value)
            if images is None or masks is None:
                raise UserError("choose the images folder and the masks folder of the training set to add to")
            image_plane, index = self._current_plane(image)
            labels_plane, _ = self._current_plane(labels)
            name = image.name + ("_z" + "_".join(map(str, index)) if index else "")
            written = add_pair(image_plane, labels_plane, images, masks, name)
        except UserError as error:
            report_error(error)
            return None
        show_message(Message(f"added {written[0].name} to {images} and {written[1].name} to {masks}"))
        self.status.value = f"added the pair {written[0].stem} to the training set"
        return written

    def cancel(self, *_: Any) -> None:
        """Stop training after the current batch; the run's files keep the last completed epoch."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.value = "cancelling ..."

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Batch):
            self.batch_progress.max, self.batch_progress.value = max(1, event.batches), event.batch
            self.status.value = f"epoch {event.epoch}, batch {event.batch}/{event.batches}: loss {event.loss:.4f}"
        elif isinstance(event, Epoch):
            self.epoch_progress.max, self.epoch_progress.value = event.epochs, event.epoch
            self.history.append(dict(event.metrics))
            self._draw()
            dice = event.metrics.get("val_dice", float("nan"))
            self.status.value = f"epoch {event.epoch}/{event.epochs}: val Dice {dice:.4f}"
        elif isinstance(event, Checkpoint) and event.kind == "best":
            self.best_path = Path(event.path)

    def _draw(self) -> None:
        for title, (x, y) in curve_series(self.history).items():
            self.lines[title].set_data(x, y)
        self.loss_axes.relim()
        self.loss_axes.autoscale_view()
        self.score_axes.set_xlim(self.loss_axes.get_xlim())
        self.canvas.draw_idle()

    def _on_finish(self, job: Job) -> None:
        self._set_running(False)
        free_gpu_memory()
        scored = [row for row in self.history if "val_dice" in row]
        if scored:
            best = max(scored, key=lambda row: row["val_dice"])
            fill_table(self.table, TABLE_HEADERS, best_rows(int(best["epoch"]), best))
        if self.best_path is not None and self.best_path.exists():
            announce_model(self.best_path, self.viewer)
        self.status.value = f"{job.state}: {len(self.history)} epoch(s)" + (
            f"; best model: {self.best_path.parent.name}/{self.best_path.name}" if self.best_path else "")
        self.status.tooltip = str(self.best_path or "")

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = self.finetune_button.enabled = not running
        self.cancel_button.enabled = running
