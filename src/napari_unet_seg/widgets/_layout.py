"""The layout every dock widget shares, to fit a 1366x768 laptop screen beside napari's layer list.

A widget is: its common path (data, model, start button, progress) on top, rarely changed settings in
a collapsed :class:`Advanced` section whose title shows their values, all in a scroll area, and a
status line under it that is always visible (:func:`status_label`, :func:`set_status`).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible

__all__ = ["Advanced", "Section", "scrolled", "status_label", "set_status", "summary"]

#: The most a dock widget may ask for, so that three fit a 768-px screen's dock area with scrolling.
MAX_MIN_HEIGHT = 600


def summary(widgets: Sequence[Any]) -> str:
    """``label value, ...`` of magicgui value widgets (check boxes by their text when ticked; empty text
    fields left out)."""
    parts = []
    for widget in widgets:
        value = widget.value
        if isinstance(value, str) and not value.strip():
            continue
        if isinstance(value, bool):
            if value:
                parts.append(widget.text)
            continue
        special = getattr(getattr(widget, "native", None), "specialValueText", None)
        if special is not None and special() and value == widget.min:
            value = special()  # a spin box at its least value shows its special text ("auto")
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{widget.label} {value}")
    return ", ".join(parts)


class Section:
    """A collapsible section (superqt ``QCollapsible``) holding a labelled magicgui container.

    ``title`` is shown on the toggle; with ``show_values`` the values inside are listed under it,
    word-wrapped, while the section is folded (``text`` is the title with the values).
    """

    def __init__(self, title: str, widgets: Sequence[Any], *, expanded: bool = False,
                 show_values: bool = False) -> None:
        from qtpy.QtWidgets import QLabel

        self.title, self.widgets, self.show_values = title, list(widgets), show_values
        self.container = Container(widgets=self.widgets)
        self.collapsible = QCollapsible(title)
        self.collapsible.setDuration(0)  # no animation: it would repaint the dock for 100 ms
        self.collapsible.addWidget(self.container.native)
        self.values = QLabel()
        self.values.setWordWrap(True)
        self.values.setStyleSheet("color: gray; margin-left: 18px;")
        self.values.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.native = QWidget()
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.collapsible)
        layout.addWidget(self.values)
        self.collapsible.toggled.connect(self.refresh)
        if expanded:
            self.collapsible.expand(animate=False)
        if show_values:
            for widget in self.widgets:
                if hasattr(widget, "changed"):
                    widget.changed.connect(self.refresh)
        self.refresh()

    @property
    def text(self) -> str:
        """The title, with the values inside when ``show_values``."""
        if not self.show_values:
            return self.title
        return f"{self.title}: {summary([w for w in self.widgets if hasattr(w, 'value')])}"

    def refresh(self, *_: Any) -> None:
        """Update the list of values (shown while folded)."""
        text = self.text
        self.values.setText(text[len(self.title) + 2:] if self.show_values else "")
        self.values.setVisible(self.show_values and not self.expanded)
        self.collapsible.setToolTip(text)

    def expand(self) -> None:
        self.collapsible.expand(animate=False)
        self.refresh()

    @property
    def expanded(self) -> bool:
        return self.collapsible.isExpanded()


class Advanced(Section):
    """The collapsed "Advanced" section of a widget; its title shows the values it holds."""

    def __init__(self, widgets: Sequence[Any]) -> None:
        super().__init__("Advanced", widgets, show_values=True)


def scrolled(*parts: Any) -> QScrollArea:
    """A vertical scroll area holding ``parts`` (magicgui widgets, sections or Qt widgets) top to bottom."""
    inner = QWidget()
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    for part in parts:
        layout.addWidget(part if isinstance(part, QWidget) else part.native)
    layout.addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # tables scroll on their own
    area.setWidget(inner)
    area.setMinimumHeight(120)
    return area


def status_label() -> Label:
    """The always visible status line of a widget (word-wrapped, selectable)."""
    status = Label(value="")
    status.native.setWordWrap(True)
    status.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
    return status


def set_status(status: Label, text: str, *, error: bool = False) -> None:
    """Show ``text`` in a status line, in red when it is an error."""
    status.value = text
    status.tooltip = text
    status.native.setStyleSheet("color: #ff6f61;" if error else "")


def build(widget: Container, body: Sequence[Any], footer: Sequence[Any]) -> QScrollArea:
    """Lay out a dock widget: ``body`` in a scroll area, then ``footer`` (buttons, progress, status) fixed.

    The magicgui parts are kept in ``widget.parts``, so that :class:`Docked` passes napari's
    ``reset_choices`` (a layer was added or removed) on to them.
    """
    area = scrolled(*body)
    layout = widget.native.layout()
    layout.addWidget(area, 1)
    for part in footer:
        layout.addWidget(part if isinstance(part, QWidget) else part.native)
    widget.parts = [part.container if isinstance(part, Section) else part for part in (*body, *footer)
                    if isinstance(part, (Section, Container))]
    widget.scroll_area = area
    return area


class Docked:
    """Mixin (before ``Container``) of a widget laid out by :func:`build`: refreshes its parts' choices."""

    parts: list = []

    def reset_choices(self, *args: Any) -> None:
        super().reset_choices(*args)
        for part in self.parts:
            part.reset_choices(*args)


def on_values(widgets: Sequence[Any], callback: Callable[..., Any]) -> None:
    """Call ``callback`` when any of ``widgets`` changes."""
    for widget in widgets:
        widget.changed.connect(callback)


def device_combo() -> ComboBox:
    """A device list holding only the devices that exist here; its tooltip says what ``auto`` picks and
    why each missing GPU is missing (the same diagnosis as ``napari-unet-seg doctor``)."""
    from ..device import available_devices, cuda_problem, mps_problem

    devices = available_devices()
    lines = [f"{name}: {reason}" for name, reason in devices]
    names = [name for name, _ in devices]
    if not any(name.startswith("cuda") for name in names):
        lines.append(f"no cuda: {cuda_problem()}")
    if "mps" not in names and mps_problem() and platform.system() == "Darwin":
        lines.append(f"no mps: {mps_problem()}")
    return ComboBox(label="device", choices=names, value="auto", tooltip="\n".join(lines))
