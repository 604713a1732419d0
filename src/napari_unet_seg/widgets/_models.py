"""The model list shared by Segment and Evaluate, and how Train hands a new model to them.

A :class:`ModelPicker` is a drop-down of shipped models and model files plus a file picker that adds
to it. Every picker registers itself; when training ends, :func:`announce_model` adds the new model
file to the pickers of the same viewer and selects it there.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from magicgui.widgets import ComboBox, FileEdit

from ..errors import UserError
from ..pretrained import shipped_models
from ._params import model_choices

__all__ = ["ModelPicker", "NEW_MODEL", "announce_model", "same_viewer"]

#: The value of the "new model" choice of a picker made with ``new_model=True`` (random weights).
NEW_MODEL = "(new model)"

_PICKERS: weakref.WeakSet[ModelPicker] = weakref.WeakSet()


def _unwrap(viewer: Any) -> Any:
    """The viewer behind napari's ``PublicOnlyProxy`` (plugins get proxies, each one a new object)."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def same_viewer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same napari viewer, proxies or not."""
    return _unwrap(a) is _unwrap(b)


class ModelPicker:
    """Two widgets: ``combo`` (the models to choose from) and ``file`` (adds a ``.pt`` file and selects it).

    With ``new_model=True`` the list starts with a "new model" choice (value :data:`NEW_MODEL`).
    """

    def __init__(self, viewer: Any = None, *, new_model: bool = False) -> None:
        self.viewer = viewer
        self.new_model = new_model
        self.files: list[str] = []
        self.combo = ComboBox(label="model", choices=self._choices,
                              tooltip="a shipped model, or a model file (.pt) added below or made by Train")
        self.file = FileEdit(label="model file", mode="r", filter="*.pt", nullable=True,
                             tooltip="add a model file (.pt, e.g. RUN/best.pt) to the model list")
        self.file.changed.connect(self._on_file)
        _PICKERS.add(self)

    def _choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        choices = model_choices(shipped_models(), self.files)
        return [("new model (random weights)", NEW_MODEL), *choices] if self.new_model else choices

    def _on_file(self, value: Any) -> None:
        if value:
            self.add(value)

    def add(self, path: str | os.PathLike, select: bool = True) -> None:
        """Put a model file in the list (once) and, by default, select it."""
        value = os.fspath(path)
        if value not in self.files:
            self.files.append(value)
        self.combo.reset_choices()
        if select:
            self.combo.value = value

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


def announce_model(path: str | os.PathLike, viewer: Any = None) -> int:
    """Add a new model file to the model lists of ``viewer``'s widgets (all viewers when None) and select it.

    Returns how many lists received it.
    """
    count = 0
    for picker in list(_PICKERS):
        if viewer is not None and picker.viewer is not None and not same_viewer(picker.viewer, viewer):
            continue
        try:
            picker.add(path)
        except RuntimeError:  # its Qt widget was deleted with its dock
            _PICKERS.discard(picker)
            continue
        count += 1
    return count
