"""The Train widget: train or fine-tune a model on folders of pairs or on the open layers, with a live plot.

The work happens in ``napari_unet_seg.training.train_steps``, in a worker thread; this widget turns
its values into a :class:`~napari_unet_seg.config.TrainConfig`, draws the events and, when a model
file is written, adds it to the viewer's model list (``_models``). "Add to training set" saves the
current image and its corrected labels into the folders (``napari_unet_seg.training_set.add_pair``),
and "Fine-tune" continues a model on them. The live plot lives in its own dock (``_plot``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, LineEdit, ProgressBar,
                              PushButton, RadioButtons, SpinBox)

from ..config import AUGMENTS, OPTIMIZERS
from ..errors import UserError
from ..events import Batch, Checkpoint, Epoch, Message
from ..losses import LOSS_NAMES
from ..models import MODEL_NAMES
from ..training_set import add_pair, fresh_folder
from ._layout import Advanced, Docked, build, device_combo, set_status, status_label
from ._models import NEW_MODEL, ModelPicker, announce_model
from ._params import (AUTO, DIMENSIONS, FOREGROUND, LABELS_HINT, check_layer_shapes, dims_choice, dims_value,
                      foreground_value, given_settings, kept_files, layer_array, layer_pairs, model_label,
                      not_a_volume, optional_path, plan_summary, plane_key, resolve_dims, scale_text, train_config)
from ._plot import TrainingPlot
from ._worker import Job, free_gpu_memory, report_error, show_message, start_job

if TYPE_CHECKING:
    import napari

__all__ = ["TrainWidget"]

FOLDERS, LAYERS = "folders", "layers"
PLOT_TITLE = "Training curves"


def start_settings(model: str) -> dict[str, Any]:
    """The Train widget values a model to start from fixes: ``{"model", "model_width", "classes", "dims"}``.

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
    settings["dims"] = dims_choice(int(meta.get("architecture", {}).get("kwargs", {}).get("spatial_dims", 2)))
    return settings


def _training_steps(config, layers: dict | None, initial: str | None, cancel, *, budget: float,
                    given: set[str]):
    """``train_steps`` in the worker thread, after the layers' data are turned into pairs and the settings
    not ``given`` are chosen from the data (:func:`~napari_unet_seg.planning.plan_training`)."""
    from ..model_file import load_model
    from ..planning import plan_training
    from ..training import train_steps

    arrays = None
    if layers is not None:
        arrays = layer_pairs(layer_array(layers["image"], layers["image_multiscale"]),
                             layer_array(layers["labels"], layers["labels_multiscale"]), rgb=layers["rgb"],
                             image_name=layers["image_name"], labels_name=layers["labels_name"],
                             spatial_dims=config.spatial_dims)
    start = load_model(initial) if initial is not None else None
    plan_training(config, budget=budget, given=given, arrays=arrays, start=start)
    yield Message(plan_summary(config.extra["plan"]))
    return (yield from train_steps(config, arrays=arrays, initial_model=initial, cancel=cancel))


def _auto_spin(label: str, most: int, tooltip: str, step: int = 1) -> FloatSpinBox:
    """A whole-number spin box whose least value, :data:`AUTO`, reads "auto" (chosen from the data) and is its
    default. A Qt double spin box with no decimals: magicgui's integer one (superqt's) has no special text."""
    box = FloatSpinBox(label=label, value=AUTO, min=AUTO, max=most, step=step, tooltip=tooltip)
    box.native.setDecimals(0)
    box.native.setSpecialValueText("auto")
    return box


class TrainWidget(Docked, Container):
    """Train a U-Net or SegNet; plots the training loss per batch and the validation scores per epoch."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False, labels=False)
        self.viewer = viewer
        self.job: Job | None = None
        self.best_path: Path | None = None
        self.initial: str | None = None
        self.run_dir: Path | None = None
        self.added: dict[tuple, Path] = {}  # pairs added by this widget: (folders, name, content) -> image file
        self._data_controls()
        self._setting_controls()
        self._run_controls()
        self.advanced = Advanced([self.model, self.model_width, self.classes, self.dims, self.spacing, self.loss,
                                  self.optimizer, self.lr, self.batch_size, self.patch_size, self.foreground,
                                  self.budget, self.val_fraction, self.augment, self.device])
        build(self, [Container(widgets=[self.source, self.images, self.masks, self.image_layer, self.labels_layer,
                                        self.add_button, self.start_from, self.start_file, self.out,
                                        self.overwrite, self.epochs]), self.advanced],
              [Container(widgets=[self.start_button, self.finetune_button, self.cancel_button, self.plot_button],
                         layout="horizontal", labels=False),
               Container(widgets=[self.epoch_progress, self.batch_progress]), self.status])
        self.plot = TrainingPlot()
        self.lines, self.table = self.plot.lines, self.plot.table
        self.plot_dock = None
        self._connect()
        self._on_source(self.source.value)
        self._on_start_from(self.start_from.value)
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, lambda: self.plot_dock is None and self._guarded_hidden_plot())

    def _data_controls(self) -> None:
        """The training data (folders or layers), the pair to add, the model to start from."""
        self.source = RadioButtons(label="training data", choices=[FOLDERS, LAYERS], value=FOLDERS,
                                   orientation="horizontal")
        self.images = FileEdit(label="images folder", mode="d", nullable=True)
        self.masks = FileEdit(label="masks folder", mode="d", nullable=True,
                              tooltip="masks named like their images (0 background, > 0 foreground or class ids)")
        self.image_layer = ComboBox(label="image layer", choices=self._layers_of("Image"),
                                    tooltip="the image to train on (layers), or to add to the training set "
                                            "(folders)")
        self.labels_layer = ComboBox(label="labels layer", choices=self._layers_of("Labels"),
                                     tooltip="labels painted on the image layer; in 2D slices, stack slices "
                                             "without labels are left out; in 3D, unpainted voxels are background")
        self.add_button = PushButton(text="Add to training set",
                                     tooltip="save the image layer and its labels as a new pair in the images and "
                                             "masks folders: a 2D image, the current slice of a stack trained in "
                                             "2D slices, or the whole volume trained in 3D (with its spacing)")
        self.start_models = ModelPicker(self.viewer, new_model=True)
        self.start_from, self.start_file = self.start_models.combo, self.start_models.file
        self.start_from.label, self.start_file.label = "start from", "start from file"
        self.start_from.tooltip = ("new model: random weights; a model: fine-tune it (its architecture and "
                                   "classes are kept). Stays as chosen after a run.")

    def _setting_controls(self) -> None:
        """The network and training settings (most of them shown under Advanced), output and device."""
        self.model = ComboBox(label="model", choices=MODEL_NAMES, value="unet",
                              tooltip="network architecture: U-Net variants (MONAI) or SegNet")
        self.model_width = FloatSpinBox(label="width", value=1.0, min=0.125, max=4.0, step=0.125,
                                        tooltip="channel multiplier of the network (0.25: small and fast)")
        self.model_width.native.setDecimals(3)  # Qt's two decimals would round the least width to 0.13
        self.model_width.min = 0.125
        self.classes = SpinBox(label="classes", value=2, min=2, max=255,
                               tooltip="2: binary (foreground / background); more: class ids 0..N-1")
        self.loss = ComboBox(label="loss", choices=LOSS_NAMES, value="dicece")
        self.optimizer = ComboBox(label="optimizer", choices=OPTIMIZERS, value="adamw")
        self.lr = FloatSpinBox(label="learning rate", value=1e-3, min=1e-6, max=1.0, step=1e-5)
        self.epochs = _auto_spin("epochs", 100_000, "passes over the training data; auto: as many as fill the "
                                 "time budget at this device's measured speed")
        self.batch_size = _auto_spin("batch size", 4096, "patches a step; auto: from the device's memory")
        self.patch_size = _auto_spin("patch size", 8192, "edge of the random square crops trained on, in pixels "
                                     "(3D: along the finest axis, coarser axes shorter in physical units); auto: "
                                     "whole images resized for large compact objects (lesions), else 256² patches "
                                     "at full resolution (3D: 64 voxels on a CPU, 96 on a GPU)", step=16)
        self.foreground = ComboBox(label="foreground patches", choices=list(FOREGROUND), value="auto",
                                   tooltip="share of the patches centred on a foreground pixel (thin or rare "
                                           "structures), the rest drawn anywhere; auto: 1 in 3 in 3D and where "
                                           "foreground is rare (under 5 %), else none")
        self.budget = FloatSpinBox(label="time budget (min)", value=20.0, min=0.5, max=10_000.0, step=5.0,
                                   tooltip="minutes of training that 'epochs' auto is sized for")
        self.dims = ComboBox(label="dimensions", choices=list(DIMENSIONS), value="auto",
                             tooltip="2D slices: train on the slices of stacks (a 2D network); 3D volumes: train "
                                     "on whole volumes (a 3D network); auto: 3D for stacks deep enough whose "
                                     "voxels are near isotropic (the voxel spacing), else 2D slices")
        self.spacing = LineEdit(label="voxel spacing", value="",
                                tooltip="Z, Y, X size of a voxel (e.g. 50, 4, 4), from the image layer's scale; "
                                        "empty: read from the files (folders), none for a 2D layer")
        self.val_fraction = FloatSpinBox(label="val fraction", value=0.1, min=0.0, max=0.9, step=0.05,
                                         tooltip="share of the pairs held out to validate (and pick best.pt)")
        self.augment = ComboBox(label="augmentation", choices=AUGMENTS, value="light")
        self.out = FileEdit(label="output folder", mode="d", nullable=True,
                            tooltip="where best.pt, last.pt, history.csv and curves.png are written")
        self.overwrite = CheckBox(text="overwrite", value=False,
                                  tooltip="replace a run that the output folder already holds")
        self.device = device_combo()

    def _run_controls(self) -> None:
        """The buttons, progress bars and status line."""
        self.start_button = PushButton(text="Start")
        self.finetune_button = PushButton(text="Fine-tune",
                                          tooltip="continue training the 'start from' model on the training "
                                                  "data, into a new output folder when the chosen one holds a run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.plot_button = PushButton(text="Curves", tooltip="show the live training plot in its own dock")
        self.epoch_progress = ProgressBar(label="epochs", value=0, min=0, max=1)
        self.batch_progress = ProgressBar(label="batches", value=0, min=0, max=1)
        self.status = status_label()

    def _connect(self) -> None:
        """The controls' signals."""
        self.source.changed.connect(self._on_source)
        self.start_button.changed.connect(self.start)
        self.finetune_button.changed.connect(self.fine_tune)
        self.cancel_button.changed.connect(self.cancel)
        self.plot_button.changed.connect(self.show_plot)
        self.add_button.changed.connect(self.add_to_training_set)
        self.start_from.changed.connect(self._on_start_from)
        self.image_layer.changed.connect(self._on_image_layer)

    def _guarded_hidden_plot(self) -> None:
        try:
            self.show_plot(visible=False)
        except RuntimeError:  # the widget was closed before the event loop came back
            pass

    @property
    def history(self) -> list[dict]:
        """The metrics of the epochs of the current (or last) run."""
        return self.plot.history

    def _layers_of(self, kind: str):
        def choices(_widget: Any = None) -> list[tuple[str, Any]]:
            import napari.layers

            cls = getattr(napari.layers, kind)
            return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)]

        return choices

    def show_plot(self, *_: Any, visible: bool = True) -> Any:
        """Show the live plot in its own dock under the canvas (float it to enlarge); return the dock.

        The dock is made, hidden, when the widget opens (``visible=False``): adding a dock costs the
        main thread 50-100 ms, which Start should not.
        """
        window = getattr(self.viewer, "window", None)
        if window is None:
            return None
        if self.plot_dock is None:
            try:
                self.plot_dock = window.add_dock_widget(self.plot, name=PLOT_TITLE, area="bottom")
            except RuntimeError:  # the plot was deleted with a dock the user closed: make a new one
                self.plot = TrainingPlot()
                self.lines, self.table = self.plot.lines, self.plot.table
                self.plot_dock = window.add_dock_widget(self.plot, name=PLOT_TITLE, area="bottom")
            self.plot_dock.destroyed.connect(self._forget_plot_dock)
        self.plot_dock.setVisible(visible)
        return self.plot_dock

    def _forget_plot_dock(self, *_: Any) -> None:
        self.plot_dock = None

    def _on_source(self, value: str) -> None:
        # the layers stay visible with folders: they are what "Add to training set" saves
        for widget in (self.images, self.masks, self.add_button):
            widget.visible = value == FOLDERS
        self._on_image_layer(self.image_layer.value)

    def _on_image_layer(self, layer: Any) -> None:
        """The voxel spacing follows the image layer's scale when training on layers (empty with folders:
        the files state theirs)."""
        use = layer is not None and self.source.value == LAYERS
        self.spacing.value = scale_text(layer.scale, layer.ndim) if use else ""

    def _on_start_from(self, value: str | None) -> None:
        fixed = value not in (None, NEW_MODEL)
        if fixed:
            try:
                settings = start_settings(value)
            except UserError as error:
                report_error(error, status=self.status)
                settings = {}
            for name, setting in settings.items():
                getattr(self, name).value = setting
        for widget in (self.model, self.model_width, self.classes, self.dims):
            widget.enabled = not fixed

    def _training_layers(self) -> dict | None:
        """The layers to train on (their data are turned into pairs in the worker), None with folders."""
        if self.source.value != LAYERS:
            return None
        image, labels = self.image_layer.value, self.labels_layer.value
        if image is None or labels is None:
            raise UserError("choose an image layer and a Labels layer painted on it, or train on folders "
                            + LABELS_HINT * (labels is None))
        check_layer_shapes(layer_array(image.data, image.multiscale).shape,
                           layer_array(labels.data, labels.multiscale).shape, rgb=bool(image.rgb),
                           image_name=image.name, labels_name=labels.name)
        return {"image": image.data, "image_multiscale": image.multiscale, "labels": labels.data,
                "labels_multiscale": labels.multiscale, "rgb": bool(image.rgb), "image_name": image.name,
                "labels_name": labels.name}

    def config(self):
        """The :class:`TrainConfig` of the current values (raises ``UserError`` when one is refused)."""
        return train_config(out=self.out.value, images=self.images.value, masks=self.masks.value,
                            from_layers=self.source.value == LAYERS, model=self.model.value,
                            width=self.model_width.value, classes=self.classes.value, loss=self.loss.value,
                            optimizer=self.optimizer.value, lr=self.lr.value, epochs=self.epochs.value,
                            batch_size=self.batch_size.value, patch_size=self.patch_size.value,
                            val_fraction=self.val_fraction.value, augment=self.augment.value,
                            device=self.device.value, overwrite=self.overwrite.value,
                            spatial_dims=dims_value(self.dims.value), spacing=self.spacing.value.strip() or None,
                            foreground_sampling=foreground_value(self.foreground.value))

    def _initial_model(self, config, fine_tune: bool) -> str | None:
        """The model to start from (None: random weights); with ``fine_tune`` a free output folder."""
        from ..run_lock import RUN_FILES

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
        if self.job is not None and self.job.running:
            return self.job
        try:
            config = self.config()
            layers = self._training_layers()
            why = self._layer_dims(config, layers) if layers is not None else ""
            initial = self._initial_model(config, fine_tune)
        except UserError as error:
            report_error(error, status=self.status)
            return None
        self.best_path, self.initial, self.run_dir = None, initial, Path(config.out)
        self.show_plot()
        self.plot.clear()
        self.epoch_progress.max, self.epoch_progress.value = max(1, int(self.epochs.value)), 0
        self.batch_progress.value = 0
        what = f"fine-tuning {model_label(initial)}" if initial else f"training a new {config.model}"
        if why == "chosen":
            what += f" in {'3D volumes' if config.spatial_dims == 3 else '2D slices'}"
        elif why:
            what += f" ({why})"
        set_status(self.status, f"{what} -> {config.out}")
        self._set_running(True)
        given = given_settings(epochs=self.epochs.value, batch_size=self.batch_size.value,
                               patch_size=self.patch_size.value, spatial_dims=config.spatial_dims,
                               spacing=config.spacing, foreground_sampling=config.foreground_sampling)
        budget = self.budget.value
        self.job = start_job("training", lambda cancel: _training_steps(config, layers, initial, cancel,
                                                                        budget=budget, given=given),
                             on_event=self._on_event, on_finish=self._on_finish, owner=self.native,
                             status=self.status)
        return self.job

    def _layer_dims(self, config, layers: dict) -> str:
        """Decide 2D slices or 3D volumes for the training layers (``auto``: from their depth and voxel
        spacing), set ``config.spatial_dims`` (and no spacing for slices); return why ("" for a 2D layer)."""
        shape = tuple(layers["labels"][0].shape if layers["labels_multiscale"] else layers["labels"].shape)
        dims, why = resolve_dims(config.spatial_dims, shape, config.spacing)
        if dims == 3 and len(shape) != 3:
            raise UserError(not_a_volume(layers["image_name"], shape))
        config.spatial_dims = dims
        if dims == 2:
            config.spacing = None
        return why if len(shape) == 3 else ""

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

    def _pair_to_add(self, image: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, str, list[float] | None]:
        """``(image, labels, name, spacing)`` to add: a 2D image, the current slice of a stack trained in 2D
        slices, or the whole volume trained in 3D (``dimensions``, ``auto`` decided as for training)."""
        from ..config import Rule, check_value

        if labels.ndim == 3 and image.ndim == 3:
            text = self.spacing.value.strip() or scale_text(image.scale, image.ndim)
            spacing = check_value("voxel spacing", text, Rule("spacing")) if text else None
            dims, _ = resolve_dims(dims_value(self.dims.value), tuple(labels.data.shape), spacing)
            if dims == 3:
                volume = np.asarray(layer_array(image.data, image.multiscale))
                return volume, np.asarray(layer_array(labels.data, labels.multiscale)), image.name, spacing
        image_plane, index = self._current_plane(image)
        labels_plane, _ = self._current_plane(labels)
        name = image.name + ("_z" + "_".join(map(str, index)) if index else "")
        return image_plane, labels_plane, name, None

    def add_to_training_set(self, *_: Any) -> tuple[Path, Path] | None:
        """Save the image layer and the labels layer as a new pair in the folders: the current slice of a
        stack trained in 2D slices, the whole volume (and its voxel spacing) trained in 3D.

        Returns ``(image_path, mask_path)``, None when refused; existing files are never overwritten, and
        a pair this widget already added (same image, same labels) is not added again.
        """
        try:
            image, labels = self.image_layer.value, self.labels_layer.value
            if image is None or labels is None:
                raise UserError("choose the image layer and the Labels layer with your corrections to add them "
                                + LABELS_HINT * (labels is None))
            images, masks = optional_path(self.images.value), optional_path(self.masks.value)
            if images is None or masks is None:
                raise UserError("choose the images folder and the masks folder of the training set to add to")
            image_data, labels_data, name, spacing = self._pair_to_add(image, labels)
            key = (str(Path(images).resolve()), str(Path(masks).resolve()), name, plane_key(image_data, labels_data))
            earlier = self.added.get(key)
            if earlier is not None and earlier.exists():
                raise UserError(f"this image and these labels are already in the training set as {earlier.name}; "
                                "correct the labels (or pick another slice) before adding again")
            written = add_pair(image_data, labels_data, images, masks, name, spacing=spacing)
        except UserError as error:
            report_error(error, status=self.status)
            return None
        self.added[key] = written[0]
        what = "volume" if labels_data.ndim == 3 else "pair"
        show_message(Message(f"added {written[0].name} to {images} and {written[1].name} to {masks}"))
        set_status(self.status, f"added the {what} {written[0].stem} to the training set")
        return written

    def cancel(self, *_: Any) -> None:
        """Stop training after the current batch; the run's files keep the last completed epoch."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            set_status(self.status, "cancelling after this batch ...")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Batch):
            self.batch_progress.max, self.batch_progress.value = max(1, event.batches), event.batch
            self.plot.add_batch(event.epoch, event.batch, event.batches, event.loss)
            if not (self.job and self.job.cancel_event.is_set()):
                set_status(self.status, f"epoch {event.epoch}, batch {event.batch}/{event.batches}: "
                                        f"loss {event.loss:.4f}")
        elif isinstance(event, Epoch):
            self.epoch_progress.max, self.epoch_progress.value = event.epochs, event.epoch
            self.plot.add_epoch(event.metrics)
            self.plot.show_best()
            dice = event.metrics.get("val_dice", float("nan"))
            set_status(self.status, f"epoch {event.epoch}/{event.epochs}: val Dice {dice:.4f}")
        elif isinstance(event, Checkpoint) and event.kind == "best":
            self.best_path = Path(event.path)

    def _on_finish(self, job: Job) -> None:
        self._set_running(False)
        free_gpu_memory()
        self.plot.update_lines()  # what the plot holds, now; its picture follows from the render thread
        self.plot.draw()
        best = self.plot.show_best()
        if job.state == "failed":
            return  # the status line shows the error
        best_dice = None if best is None else float(best["val_dice"])
        start_dice = getattr(job.result, "start_dice", None)
        worse = start_dice is not None and best_dice is not None and best_dice < float(start_dice)
        have_best = self.best_path is not None and self.best_path.exists()
        if have_best:
            announce_model(self.best_path, self.viewer, select=not worse)
        run = self.run_dir
        text = f"{job.state}: {len(self.history)} epoch(s)"
        if best is not None:
            text += f", best val Dice {best_dice:.4f} (epoch {int(best['epoch'])})"
        if have_best:
            text += f"; model {self.best_path.parent.name}/{self.best_path.name}"
        if job.state == "cancelled" and run is not None:
            kept = kept_files(run)
            text += f"; kept {', '.join(kept)} in {Path(run).name}" if kept else "; no epoch finished, nothing kept"
        if worse:
            text += (f". Worse than the model it started from (val Dice {float(start_dice):.4f} on the same "
                     "validation pairs): the previous model stays selected; pick the new one in a model list "
                     "to use it")
            show_message(Message(text, "warning"))
        set_status(self.status, text, error=worse)

    def _set_running(self, running: bool) -> None:
        self.start_button.enabled = self.finetune_button.enabled = self.add_button.enabled = not running
        self.cancel_button.enabled = running
