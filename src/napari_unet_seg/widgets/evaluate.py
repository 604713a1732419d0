"""The Evaluate widget: score a model on a folder of pairs, a Labels layer against ground truth, and
compare the runs of a folder.

Folder scores come from ``napari_unet_seg.evaluation.evaluate_steps`` in a worker thread (after the
same gray/colour check Segment makes); layer comparisons from ``evaluation.compare_labels`` and run
lists from ``sweep.read_comparison`` (fast, in the main thread). The folder evaluation is the common
path; the other two tools are folded into sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton

from ..errors import UserError
from ..events import Message, Tiles
from ._layout import Advanced, Docked, Section, device_combo, build, set_status, status_label
from ._models import ModelPicker, announce_model
from ._params import (LABELS_HINT, comparison_table, evaluation_table, layer_array, optional_path, runs_table,
                      write_csv)
from ._table import fill_table, make_table
from ._worker import Job, free_gpu_memory, report_error, show_message, start_job

if TYPE_CHECKING:
    import napari

__all__ = ["EvaluateWidget"]

FOLDER_HEADERS = ("image", "Dice", "IoU", "accuracy")
RUN_HEADERS = runs_table([])[0]


#: How Compare reads the labels: as masks/objects (foreground, and objects when ids differ) or as class ids.
COMPARE_AS = ("masks or objects", "class ids")


def _evaluation_steps(model: str, images: str, masks: str, device: str, cancel: Any):
    """``evaluate_steps`` after loading the model in the worker (the engine refuses colour/gray mismatches)."""
    from ..evaluation import evaluate_steps
    from ..model_file import load_model

    return (yield from evaluate_steps(load_model(model), images, masks, device=device, cancel=cancel))


class EvaluateWidget(Docked, Container):
    """Dice / IoU / accuracy of a model per image of a folder (with CSV export), of a Labels layer, and the
    runs of a folder side by side."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False, labels=False)
        self.viewer = viewer
        self.job: Job | None = None
        self.result: dict | None = None
        self.comparison: dict | None = None
        # a model against a folder of image/mask pairs
        self.models = ModelPicker(viewer)
        self.model, self.model_file = self.models.combo, self.models.file
        self.images = FileEdit(label="images folder", mode="d", nullable=True)
        self.masks = FileEdit(label="masks folder", mode="d", nullable=True)
        self.device = device_combo()
        self.evaluate_button = PushButton(text="Evaluate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="images", value=0, min=0, max=1)
        self.table = make_table(FOLDER_HEADERS, min_height=140)
        self.csv_file = FileEdit(label="CSV file", mode="w", filter="*.csv", nullable=True)
        self.export_button = PushButton(text="Export CSV", enabled=False)
        # a Labels layer against a ground-truth Labels layer
        self.labels_layer = ComboBox(label="labels", choices=self._labels_layers)
        self.truth_layer = ComboBox(label="ground truth", choices=self._labels_layers)
        self.compare_as = ComboBox(label="labels are", choices=COMPARE_AS, value=COMPARE_AS[0],
                                   tooltip="masks or objects: any id > 0 is foreground (one id per object also "
                                           "gives object precision/recall/F1 at IoU 0.5); class ids: each id is "
                                           "a class, scored per class")
        self.compare_button = PushButton(text="Compare")
        self.compare_table = make_table(("class", "Dice", "IoU"), min_height=60, max_height=160)
        # the runs of a folder (a sweep's output, or run folders side by side)
        self.runs: list[dict] = []
        self.runs_folder = FileEdit(label="runs folder", mode="d", nullable=True,
                                    tooltip="a folder of run folders (each with best.pt and history.csv), e.g. "
                                            "a sweep's output")
        self.list_button = PushButton(text="List runs")
        self.runs_table = make_table(RUN_HEADERS, min_height=100, max_height=260)
        self.run = ComboBox(label="run", choices=self._run_choices, nullable=True)
        self.use_run_button = PushButton(text="Use its best.pt",
                                         tooltip="add the run's best.pt to the model lists of this window")
        self.status = status_label()
        self.advanced = Advanced([self.device])
        self.layers_section = Section("Labels layer against ground truth",
                                      [self.labels_layer, self.truth_layer, self.compare_as, self.compare_button,
                                       self.compare_table])
        self.runs_section = Section("Compare runs", [self.runs_folder, self.list_button, self.runs_table, self.run,
                                                     self.use_run_button])
        build(self, [Container(widgets=[self.model, self.model_file, self.images, self.masks]), self.advanced,
                     Container(widgets=[self.table, self.csv_file, self.export_button]), self.layers_section,
                     self.runs_section],
              [Container(widgets=[self.evaluate_button, self.cancel_button], layout="horizontal", labels=False),
               Container(widgets=[self.progress]), self.status])
        self.evaluate_button.changed.connect(self.evaluate)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self.export_csv)
        self.compare_button.changed.connect(self.compare)
        self.runs_folder.changed.connect(self.list_runs)
        self.list_button.changed.connect(self.list_runs)
        self.use_run_button.changed.connect(self.use_run)

    def _labels_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def evaluate(self, *_: Any) -> Job | None:
        """Start scoring the chosen model on the folder pairs; returns the job (None when refused)."""
        if self.job is not None and self.job.running:
            return self.job
        try:
            model = self.models.value
            images, masks = optional_path(self.images.value), optional_path(self.masks.value)
            if images is None or masks is None:
                raise UserError("choose the images folder and the masks folder to evaluate on")
            if Path(images).resolve() == Path(masks).resolve():
                raise UserError(f"images folder and masks folder are both {images}; choose the folder of the masks")
        except UserError as error:
            report_error(error, status=self.status)
            return None
        device = self.device.value
        self.result = None
        self.export_button.enabled = False
        fill_table(self.table, FOLDER_HEADERS, [])
        self.progress.value, self.progress.max = 0, 1
        self._set_running(True)
        set_status(self.status, f"evaluating {self.model.current_choice} on {Path(images).name} ...")
        self.job = start_job("evaluation",
                             lambda cancel: _evaluation_steps(model, images, masks, device, cancel),
                             on_event=self._on_event, on_done=self._show_result,
                             on_finish=self._on_finish, owner=self.native, status=self.status)
        return self.job

    def cancel(self, *_: Any) -> None:
        """Stop the running evaluation (between tiles)."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            set_status(self.status, "cancelling ...")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Tiles):
            self.progress.max, self.progress.value = max(1, event.total), event.done

    def _show_result(self, result: dict) -> None:
        self.result = result
        headers, rows = evaluation_table(result)
        fill_table(self.table, headers, rows)
        self.export_button.enabled = True
        count, volumes = result.get("count", len(result.get("per_image", []))), int(result.get("volumes") or 0)
        what = f"{count} volume(s)" if volumes == count else f"{count} image(s)"
        text = f"mean Dice {float(result['dice']):.4f}, IoU {float(result['iou']):.4f} over {what}"
        if volumes:
            text += f"; pooled Dice {float(result['pooled_dice']):.4f}"
        set_status(self.status, text)

    def _on_finish(self, job: Job) -> None:
        if job.state == "cancelled":
            set_status(self.status, f"cancelled after {self.progress.value} of {self.progress.max} images; "
                                    "no table")
        self._set_running(False)
        free_gpu_memory()

    def _set_running(self, running: bool) -> None:
        self.evaluate_button.enabled = not running
        self.cancel_button.enabled = running

    def export_csv(self, *_: Any, path: str | Path | None = None) -> Path | None:
        """Write the folder evaluation table (per image and mean) to ``path`` or the chosen CSV file."""
        try:
            if self.result is None:
                raise UserError("evaluate a model on a folder first; then export its table")
            target = optional_path(path) or optional_path(self.csv_file.value)
            if target is None:
                raise UserError("choose a CSV file to export the table to")
            written = write_csv(target, *evaluation_table(self.result))
        except UserError as error:
            report_error(error, status=self.status)
            return None
        show_message(Message(f"wrote {written}"))
        set_status(self.status, f"wrote {written}")
        return written

    def compare(self, *_: Any) -> dict | None:
        """Dice and IoU of the chosen Labels layer against the ground-truth layer (per class when multi-class)."""
        from ..evaluation import compare_labels

        try:
            labels, truth = self.labels_layer.value, self.truth_layer.value
            if labels is None or truth is None:
                raise UserError(f"choose a Labels layer and a ground-truth Labels layer to compare {LABELS_HINT}")
            if labels is truth or labels.name == truth.name:
                raise UserError("choose two different Labels layers: a result and its ground truth")
            result = np.asarray(layer_array(labels.data, labels.multiscale))
            truth_data = np.asarray(layer_array(truth.data, truth.multiscale))
            if result.shape != truth_data.shape:
                raise UserError(f"layer {labels.name!r} {result.shape} does not match ground truth {truth.name!r} "
                                f"{truth_data.shape}; compare labels of the same image")
            classes = None
            if self.compare_as.value == COMPARE_AS[1]:
                classes = max(3, int(max(result.max(initial=0), truth_data.max(initial=0))) + 1)
            scores = compare_labels(result, truth_data, classes)
        except UserError as error:
            report_error(error, status=self.status)
            return None
        self.comparison = scores
        headers, rows = comparison_table(scores)
        fill_table(self.compare_table, headers, rows)
        kind = f" ({scores['kind']})" if scores.get("kind") else ""
        if result.ndim == 3:
            kind += f" in the volume {'x'.join(map(str, result.shape))}"
        set_status(self.status, f"{labels.name} against {truth.name}{kind}: Dice {float(scores['dice']):.4f}, "
                                f"IoU {float(scores['iou']):.4f}")
        return scores

    def _run_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(str(run["run"]), str(run["path"])) for run in self.runs]

    def list_runs(self, *_: Any) -> list[dict] | None:
        """List the runs of the runs folder in the table (a sweep's ``comparison.csv`` when it has one)."""
        from ..sweep import read_comparison

        try:
            folder = optional_path(self.runs_folder.value)
            if folder is None:
                raise UserError("choose a runs folder: the folder that holds the run folders")
            try:
                runs = read_comparison(folder)
            except UserError:
                raise
            except (OSError, KeyError, ValueError) as error:
                raise UserError(f"runs folder {folder}: cannot be read ({type(error).__name__}: {error}); check "
                                "its comparison.csv") from None
            if not runs:
                raise UserError(f"runs folder {folder}: holds no run (a folder with best.pt and history.csv); "
                                "pick the folder that holds the run folders")
        except UserError as error:
            report_error(error, status=self.status)
            return None
        self.runs = runs
        set_status(self.status, f"{len(runs)} run(s) in {Path(folder).name}")
        fill_table(self.runs_table, *runs_table(runs))
        self.run.reset_choices()
        return runs

    def use_run(self, *_: Any) -> Path | None:
        """Add the chosen run's ``best.pt`` to the model lists of this window (Segment, Evaluate, Train)."""
        try:
            if not self.run.value:
                raise UserError("list the runs of a folder and choose one first")
            best = Path(self.run.value) / "best.pt"
            if not best.is_file():
                raise UserError(f"run {best.parent.name}: has no best.pt (it did not finish an epoch); choose "
                                "another run")
        except UserError as error:
            report_error(error, status=self.status)
            return None
        count = announce_model(best, self.viewer)
        text = f"{best.parent.name}/best.pt added to {count} model list(s) of this window"
        show_message(Message(text))
        set_status(self.status, text)
        return best
