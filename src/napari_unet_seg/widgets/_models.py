"""One model list per napari viewer, for as long as it runs, shared by Segment, Train and Evaluate.

Every model trained, fine-tuned, opened from a file or shipped is in the viewer's list
(:class:`ModelRegistry`), so widgets opened later show it too; the newest is marked, 3D models are
marked ``(3D)`` (:func:`model_dims`). A
:class:`ModelPicker` is a drop-down of that list plus a file picker that adds to it.
:func:`announce_model` adds a new model and selects it in the pickers that follow new models
(Segment, Evaluate); Train's "start from" never switches by itself: fine-tuning is a choice.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from magicgui.widgets import ComboBox, FileEdit

from ..errors import UserError
from ..pretrained import shipped_models
from ._params import model_choices

__all__ = ["ModelPicker", "ModelRegistry", "NEW_MODEL", "NEWEST", "announce_model", "model_channels", "model_dims",
           "registry",
           "same_viewer"]

#: The value of the "new model" choice of a picker made with ``new_model=True`` (random weights).
NEW_MODEL = "(new model)"
#: What marks the newest model of the list.
NEWEST = "  [newest]"

_PICKERS: weakref.WeakSet[ModelPicker] = weakref.WeakSet()
_METADATA: dict[tuple, dict | None] = {}


def _metadata(value: str | os.PathLike) -> dict | None:
    """A model's metadata, read once per file version (path, size, modification time); None if unreadable."""
    from ..model_file import read_metadata, resolve_model_path

    path = resolve_model_path(value)
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _METADATA:
        try:
            _METADATA[key] = read_metadata(path)
        except (UserError, ValueError, TypeError, KeyError):
            _METADATA[key] = None
    return _METADATA[key]


def model_dims(value: str | os.PathLike) -> int | None:
    """``spatial_dims`` (2 or 3) of a shipped model or model file, None when it cannot be read."""
    meta = _metadata(value)
    if not isinstance(meta, dict):
        return None
    return int((meta.get("architecture") or {}).get("kwargs", {}).get("spatial_dims", 2))


def model_postprocess(value: str | os.PathLike) -> dict:
    """The threshold and post-processing a model applies by default (its own choice, made on its validation
    images, else the plain defaults); the defaults when it cannot be read."""
    from ..postprocessing import prediction_settings

    meta = _metadata(value)
    chosen = meta.get("postprocess") if isinstance(meta, dict) else None
    return prediction_settings(chosen if isinstance(chosen, dict) else {})


def model_channels(value: str | os.PathLike) -> int | None:
    """Input channels (1 gray, 3 colour) of a shipped model or model file, None when it cannot be read."""
    meta = _metadata(value)
    return int(meta["in_channels"]) if isinstance(meta, dict) and "in_channels" in meta else None


def _unwrap(viewer: Any) -> Any:
    """The viewer behind napari's ``PublicOnlyProxy`` (plugins get proxies, each one a new object)."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def same_viewer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same napari viewer, proxies or not."""
    return _unwrap(a) is _unwrap(b)


class ModelRegistry:
    """The model files known in one viewer, oldest first; ``newest`` is the last one trained or added."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.newest: str | None = None

    def add(self, path: str | os.PathLike) -> str:
        value = os.fspath(path)
        if value not in self.files:
            self.files.append(value)
        self.newest = value
        return value


_REGISTRIES: dict[int, tuple[Any, ModelRegistry]] = {}
_NO_VIEWER = ModelRegistry()


def registry(viewer: Any = None) -> ModelRegistry:
    """The model list of ``viewer`` (one per viewer, made on first use; None: the list of viewer-less pickers)."""
    if viewer is None:
        return _NO_VIEWER
    real = _unwrap(viewer)
    key = id(real)
    entry = _REGISTRIES.get(key)
    if entry is None or entry[0]() is not real:
        try:
            ref = weakref.ref(real)
        except TypeError:
            ref = (lambda real=real: real)
        entry = _REGISTRIES[key] = (ref, ModelRegistry())
    return entry[1]


class ModelPicker:
    """Two widgets: ``combo`` (the viewer's models) and ``file`` (adds a ``.pt`` file and selects it here).

    With ``new_model=True`` the list starts with a "new model" choice (value :data:`NEW_MODEL`), and
    models announced by training are listed but not selected (``follows_new`` is False).
    """

    def __init__(self, viewer: Any = None, *, new_model: bool = False) -> None:
        self.viewer = viewer
        self.new_model = new_model
        self.follows_new = not new_model
        self.models = registry(viewer)
        self.combo = ComboBox(label="model", choices=self._choices,
                              tooltip="a shipped model, or a model file (.pt) added below or made by Train")
        self.file = FileEdit(label="model file", mode="r", filter="*.pt", nullable=True,
                             tooltip="add a model file (.pt, e.g. RUN/best.pt) to the model lists")
        self.file.changed.connect(self._on_file)
        _PICKERS.add(self)

    @property
    def files(self) -> list[str]:
        return self.models.files

    def _choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        choices = [(label + (NEWEST if value == self.models.newest else ""), value)
                   for label, value in model_choices(shipped_models(), self.models.files, model_dims)]
        return [("new model (random weights)", NEW_MODEL), *choices] if self.new_model else choices

    def _on_file(self, value: Any) -> None:
        if value:
            announce_model(value, self.viewer, select=False)
            self.select(value)

    def refresh(self) -> None:
        """Re-read the model list, keeping the current choice (magicgui drops it when a label changes)."""
        value = self.combo.value
        with self.combo.changed.blocked():  # the choice does not change: no one is told
            self.combo.reset_choices()
            if value is not None and value in self.combo.choices and self.combo.value != value:
                self.combo.value = value
        if self.combo.value != value:
            self.combo.changed.emit(self.combo.value)

    def select(self, path: str | os.PathLike) -> None:
        self.refresh()
        self.combo.value = os.fspath(path)

    def add(self, path: str | os.PathLike, select: bool = True) -> None:
        """Put a model file in the viewer's list (once) and, by default, select it here."""
        self.models.add(path)
        self.select(path) if select else self.refresh()

    @property
    def value(self) -> str:
        """The chosen model (a shipped model's name or a file path).

        Raises:
            UserError: no model is chosen.
        """
        value = self.combo.value
        if not value:
            raise UserError("choose a model: pick a model file (.pt, e.g. RUN/best.pt) or train one with Train")
        return value


def announce_model(path: str | os.PathLike, viewer: Any = None, *, select: bool = True) -> int:
    """Add a model file to ``viewer``'s model list and refresh its widgets' lists.

    With ``select`` it is selected in the pickers that follow new models (Segment, Evaluate), never in
    Train's "start from". Returns how many lists show it.
    """
    registry(viewer).add(path)
    count = 0
    for picker in list(_PICKERS):
        if viewer is not None and picker.viewer is not None and not same_viewer(picker.viewer, viewer):
            continue
        if (picker.viewer is None) != (viewer is None):
            continue
        try:
            picker.select(path) if select and picker.follows_new else picker.refresh()
        except RuntimeError:  # its Qt widget was deleted with its dock
            _PICKERS.discard(picker)
            continue
        count += 1
    return count
