"""The Segment widget: run a model on an image layer and show the result as a Labels layer.

The work happens in ``napari_unet_seg.inference.predict_steps``, in a worker thread; this widget only
collects the values, draws the progress and adds or updates the layers.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, ProgressBar, PushButton, SpinBox

from ..errors import UserError
from ..events import Message, Tiles
from ..instances import INSTANCE_MODES
from ._layout import Advanced, Docked, build, device_combo, set_status, status_label
from ._models import ModelPicker, model_channels, model_dims, model_postprocess
from ._params import labels_name, layer_array, probabilities_name, segment_options, uncertainty_name
from ._worker import Job, free_gpu_memory, report_error, show_message, start_job

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]


def _segment_steps(model: Any, data: Any, cancel: Any, options: dict):
    """``predict_steps``, imported in the worker thread (the first import of the engine takes a while)."""
    from ..inference import predict_steps

    return (yield from predict_steps(model, data, cancel=cancel, **options))


#: ``layer.metadata`` key of the labels layers Segment made: "unedited", or "edited" once painted on.
_MADE = "napari_unet_seg_segment"


def _track_edits(layer: Any) -> None:
    """Mark a labels layer as Segment's, and as edited once the brush, eraser or fill changes it."""
    layer.metadata[_MADE] = "unedited"
    layer.events.paint.connect(lambda event: layer.metadata.__setitem__(_MADE, "edited"))


def _replaceable(layer: Any) -> bool:
    """Whether a new result may replace ``layer``: a labels layer Segment made and nobody painted on."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and layer.metadata.get(_MADE) == "unedited"


def check_model_fits(dims: int | None, layer: Any, model: str) -> None:
    """Refuse a 3D model for a 2D layer (a 2D model segments a stack slice by slice)."""
    if dims == 3 and layer.ndim < 3:
        raise UserError(f"{model} is a 3D model and layer {layer.name!r} is 2D {tuple(layer.data.shape)}: "
                        "choose a volume (Z, Y, X) layer, or a 2D model")


class SegmentWidget(Docked, Container):
    """Segment an image layer (2D, RGB, a stack, a volume, or a multiscale image's highest resolution).

    A 3D model predicts a volume as one; a 2D model predicts a stack slice by slice.

    Adds a Labels layer ``<image> labels`` (class ids, or object ids with instances) with the image's
    scale and translate; a second run updates it. Optionally adds the probabilities as an Image layer
    ``<image> probabilities`` and the uncertainty as ``<image> uncertainty``.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False, labels=False)
        self.viewer = viewer
        self.job: Job | None = None
        self.image = ComboBox(label="image", choices=self._image_layers,
                              tooltip="the Image layer to segment (multiscale: its highest resolution)")
        self.models = ModelPicker(viewer)
        self.model, self.model_file = self.models.combo, self.models.file
        self.device = device_combo()
        self.tile = SpinBox(label="tile size", value=0, min=0, max=8192, step=16,
                            tooltip="edge of the square tiles the image is cut into (cubes for a 3D model), "
                                    "in pixels; 0: from the model's training patch")
        self.overlap = FloatSpinBox(label="overlap", value=0.25, min=0.0, max=0.9, step=0.05,
                                    tooltip="fraction by which neighbouring tiles overlap")
        self.threshold = FloatSpinBox(label="threshold", value=0.5, min=0.01, max=0.99, step=0.01,
                                      tooltip="foreground probability above which a pixel is foreground "
                                              "(binary models)")
        self.tta = CheckBox(text="test-time augmentation (flips)", value=False,
                            tooltip="average the predictions of the four flips: smoother, 4x slower")
        self.min_size = SpinBox(label="min object size", value=0, min=0, max=10**8,
                                tooltip="objects smaller than this many pixels are removed (0: keep all)")
        self.keep_largest = CheckBox(text="keep largest object", value=False,
                                     tooltip="keep only the largest object of each class (one lesion per image)")
        self.fill_holes = CheckBox(text="fill holes", value=False, tooltip="fill holes inside objects")
        self.instances = ComboBox(label="instances", choices=INSTANCE_MODES, value="none",
                                  tooltip="none: class labels; components: one id per connected object; "
                                          "watershed: also splits touching objects (binary models)")
        self.min_distance = SpinBox(label="min distance", value=5, min=1, max=1000,
                                    tooltip="watershed: least distance between object centres, in pixels")
        self.probabilities = CheckBox(text="add probability layer", value=False)
        self.uncertainty = CheckBox(text="add uncertainty layer", value=False,
                                    tooltip="predict the 8 rotations and flips: the labels come from their "
                                            "mean, the layer shows their spread; 8x slower")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="tiles", value=0, min=0, max=1)
        self.status = status_label()
        cleanup = Container(widgets=[self.keep_largest, self.fill_holes], layout="horizontal", labels=False)
        self.advanced = Advanced([self.device, self.tile, self.overlap, self.threshold, self.tta, self.min_size,
                                  cleanup, self.instances, self.min_distance, self.probabilities, self.uncertainty])
        build(self, [Container(widgets=[self.image, self.model, self.model_file]), self.advanced],
              [Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
               Container(widgets=[self.progress]), self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._on_image)
        self.model.changed.connect(self._on_model)
        self._on_image(self.image.value)
        self._on_model(self.model.value)

    def _on_model(self, value: Any) -> None:
        """Show the chosen model's own threshold and post-processing (chosen on its validation images)."""
        if not value:
            return
        chosen = model_postprocess(value)
        self.threshold.value, self.tta.value = chosen["threshold"], chosen["tta"]
        self.keep_largest.value, self.fill_holes.value = chosen["keep_largest"], chosen["fill_holes"]

    def _on_image(self, layer: Any) -> None:
        """With a shipped model chosen, switch to a shipped model made for this image's kind (gray or RGB;
        a 3D one for a volume when one ships, never a 3D one for a 2D image)."""
        from ..pretrained import shipped_models

        shipped = shipped_models()
        if layer is None or self.model.value not in shipped:
            return
        kind = [name for name in shipped if model_channels(name) == (3 if layer.rgb else 1)]
        flat = [name for name in kind if model_dims(name) == 2]
        wanted = ([name for name in kind if model_dims(name) == 3] or flat) if layer.ndim >= 3 else flat
        if wanted and self.model.value not in wanted:
            self.model.value = wanted[0]

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def options(self, rgb: bool | None = None) -> dict[str, Any]:
        """The keyword arguments this widget passes to ``predict_steps``."""
        return segment_options(device=self.device.value, tile=self.tile.value, overlap=self.overlap.value,
                               threshold=self.threshold.value, tta=self.tta.value, min_size=self.min_size.value,
                               keep_largest=self.keep_largest.value, fill_holes=self.fill_holes.value,
                               probabilities=self.probabilities.value, rgb=rgb, instances=self.instances.value,
                               min_distance=self.min_distance.value, uncertainty=self.uncertainty.value)

    def run(self, *_: Any) -> Job | None:
        """Start segmenting the chosen layer; returns the job (None when the values are refused)."""
        if self.job is not None and self.job.running:
            return self.job
        try:
            layer = self.image.value
            if layer is None:
                raise UserError("open an image to segment first (File > Open, or drag it onto the viewer)")
            model = self.models.value
            check_model_fits(model_dims(model), layer, self.model.current_choice)
            options = self.options(rgb=bool(layer.rgb))
        except UserError as error:
            report_error(error, status=self.status)
            return None
        data = layer_array(layer.data, layer.multiscale)
        target = {"name": layer.name, "scale": tuple(layer.scale), "translate": tuple(layer.translate)}
        self._set_running(True)
        self.progress.value, self.progress.max = 0, 1
        set_status(self.status, f"segmenting {layer.name} with {self.model.current_choice} ...")
        began = time.perf_counter()

        def done(result: Any) -> None:
            if self.job is not None and self.job.cancel_event.is_set():
                return  # cancelled after the last tile: nothing is added or changed
            self.show_result(result, **target)
            set_status(self.status, f"{target['name']}: done in {time.perf_counter() - began:.1f} s")

        self.job = start_job("segmentation", lambda cancel: _segment_steps(model, data, cancel, options),
                             on_event=self._on_event, on_done=done,
                             on_finish=self._on_finish, owner=self.native, status=self.status)
        return self.job

    def cancel(self, *_: Any) -> None:
        """Stop the running job (between tiles); no layer is added or changed."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            set_status(self.status, "cancelling ...")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Tiles):
            self.progress.max = max(1, event.total)
            self.progress.value = min(event.done, event.total)

    def _on_finish(self, job: Job) -> None:
        if job.state == "cancelled":
            set_status(self.status, f"cancelled after {self.progress.value} of {self.progress.max} tiles; "
                                    "no layer was added or changed")
        self._set_running(False)
        free_gpu_memory()

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    def show_result(self, result: Any, *, name: str, scale: tuple, translate: tuple) -> str:
        """Add (or update) ``<name> labels`` and, when computed, ``<name> probabilities``/``uncertainty``;
        return the name of the labels layer the result went to.

        A labels layer is updated only if this widget made it and nobody painted on it since: corrected
        labels, or a layer of the user's own with that name, are kept, and the result becomes a new layer.
        """
        from napari.layers import Labels

        target = labels_name(name)
        copies = [layer for layer in self.viewer.layers
                  if re.fullmatch(rf"{re.escape(target)}( \[\d+\])?", layer.name)]  # napari's "name [1]"
        free = [layer for layer in copies if _replaceable(layer)]
        kept = next((layer for layer in copies if layer.name == target and isinstance(layer, Labels)), None)
        if free or kept is None:  # an earlier result nobody edited, or none yet
            target = self._put_layer("labels", free[-1].name if free else target, result.labels, scale, translate)
        else:
            target = self._add_labels(result.labels, target, scale, translate)
            why = "edited since it was segmented" if kept.metadata.get(_MADE) else "not made by Segment"
            show_message(Message(f"kept the layer {kept.name!r} ({why}); the new labels are the layer {target!r}",
                                 "warning"))
        if result.probabilities is not None:
            probs = result.probabilities
            extra = probs.ndim - result.labels.ndim  # multi-class probabilities have a leading class axis
            self._put_layer("image", probabilities_name(name), probs, (1.0,) * extra + tuple(scale),
                            (0.0,) * extra + tuple(translate))
        if result.uncertainty is not None:
            spread = result.uncertainty
            self._put_layer("image", uncertainty_name(name), spread, scale, translate, colormap="inferno",
                            contrast_limits=(0.0, max(float(spread.max(initial=0.0)), 1e-3)))
        return target

    def _put_layer(self, kind: str, name: str, data: Any, scale: tuple, translate: tuple, *,
                   colormap: str = "magma", contrast_limits: tuple = (0.0, 1.0)) -> str:
        """Update the layer ``name`` of this kind in place, or add it; return the name it has."""
        from napari.layers import Image, Labels

        cls = Labels if kind == "labels" else Image
        existing = next((layer for layer in self.viewer.layers if layer.name == name and isinstance(layer, cls)),
                        None)
        if existing is not None and existing.data.ndim == data.ndim:
            existing.data = data
            existing.scale, existing.translate = scale, translate
            if kind == "image":
                existing.contrast_limits = contrast_limits
            existing.refresh()
            return name
        if existing is not None:
            self.viewer.layers.remove(existing)
        if kind == "labels":
            return self._add_labels(data, name, scale, translate)
        return self.viewer.add_image(data, name=name, scale=scale, translate=translate, colormap=colormap,
                                     contrast_limits=contrast_limits, blending="additive", opacity=0.6).name

    def _add_labels(self, data: Any, name: str, scale: tuple, translate: tuple) -> str:
        """A new labels layer, tracked for edits; napari makes ``name`` unique (``name [1]``)."""
        layer = self.viewer.add_labels(data, name=name, scale=scale, translate=translate)
        _track_edits(layer)
        return layer.name
