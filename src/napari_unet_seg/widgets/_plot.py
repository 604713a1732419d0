"""The live training plot: per-batch training loss between epochs, validation loss, Dice and IoU per epoch.

:class:`TrainingPlot` is a Qt widget (the plot + the best epoch's table) that Train puts in its own
dock, so it can be floated and enlarged. The epoch axis has integer ticks, the legends sit above the
panels (never over the points), fonts are 10 pt. Rendering a figure costs 50-250 ms, so matplotlib
draws it with Agg in a thread of its own (it lets go of the GIL every few ms) and the main thread only
shows the finished picture; redraws are coalesced to at most one every :data:`REDRAW_S` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import threading

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QWidget

from ._params import best_rows, curve_series
from ._table import fill_table, make_table

__all__ = ["TrainingPlot", "batch_series", "REDRAW_S", "TABLE_HEADERS"]

#: The least time between two redraws of the plot (seconds).
REDRAW_S = 0.5
TABLE_HEADERS = ("best epoch", "value")
FONT = 10


def batch_series(batches: Sequence[tuple[int, int, int, float]]) -> tuple[list[float], list[float]]:
    """Positions and losses of per-batch points: batch ``b`` of ``n`` in epoch ``e`` lies at ``e - 1 + b / n``."""
    return ([epoch - 1 + batch / max(1, count) for epoch, batch, count, _ in batches],
            [float(loss) for *_, loss in batches])


class _Rendered(QObject):
    """Carries a finished picture from the render thread to the main thread."""

    done = Signal(object)


class TrainingPlot(QWidget):
    """Two panels: losses (train per batch and per epoch, val per epoch) and validation Dice/IoU.

    ``lines`` (title -> matplotlib line) hold what the plot shows after :meth:`update_lines`;
    ``renders`` counts the pictures shown.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        super().__init__(parent)
        self.batches: list[tuple[int, int, int, float]] = []
        self.history: list[dict] = []
        self.figure = Figure(figsize=(7.5, 2.6), dpi=100)
        self.agg = FigureCanvasAgg(self.figure)
        # fixed margins: re-laying out the figure at each redraw would cost time
        self.figure.subplots_adjust(left=0.07, right=0.99, bottom=0.2, top=0.8, wspace=0.18)
        self.loss_axes, self.score_axes = self.figure.subplots(1, 2)
        self.lines = {"train loss (batch)": self.loss_axes.plot([], [], lw=0.8, alpha=0.5, color="C0",
                                                                label="train loss (batch)")[0]}
        panels = ((self.loss_axes, ("train loss", "val loss")), (self.score_axes, ("val Dice", "val IoU")))
        for axes, titles in panels:
            for index, title in enumerate(titles):
                color = f"C{index}" if axes is self.loss_axes else f"C{index + 2}"
                self.lines[title] = axes.plot([], [], marker="o", markersize=4, color=color, label=title)[0]
            axes.set_xlabel("epoch", fontsize=FONT)
            axes.tick_params(labelsize=FONT - 1)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            axes.legend(fontsize=FONT - 1, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=3, frameon=False,
                        borderaxespad=0.0, handlelength=1.5)
            axes.grid(alpha=0.3)
        self.score_axes.set_ylim(0, 1)
        self.picture = QLabel()
        self.picture.setMinimumSize(320, 140)
        self.picture.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.table = make_table(TABLE_HEADERS, min_height=60)
        self.table.native.setMaximumWidth(220)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.picture, 1)
        layout.addWidget(self.table.native)
        self._lock = threading.Lock()  # the figure is touched by one thread at a time
        self._busy = self._again = False
        self._rendered = _Rendered()
        self._rendered.done.connect(self._show)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(REDRAW_S * 1000))
        self._timer.timeout.connect(self.draw)
        self.renders = 0
        # The first picture of a process finds and loads the fonts, holding the GIL for up to a second:
        # make it now, when the widget opens, not while a job runs.
        self.draw()

    def clear(self) -> None:
        """Forget the points (a new run starts); the picture is blank until the first batch."""
        self.batches, self.history = [], []
        fill_table(self.table, TABLE_HEADERS, [])
        self.picture.clear()

    def add_batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        self.batches.append((epoch, batch, batches, float(loss)))
        self.schedule()

    def add_epoch(self, metrics: Mapping[str, Any]) -> None:
        self.history.append(dict(metrics))
        self.schedule()

    def show_best(self) -> dict | None:
        """Fill the table with the best epoch (highest val Dice); return its row."""
        scored = [row for row in self.history if "val_dice" in row]
        if not scored:
            return None
        best = max(scored, key=lambda row: row["val_dice"])
        fill_table(self.table, TABLE_HEADERS, best_rows(int(best["epoch"]), best))
        return best

    def schedule(self) -> None:
        """Redraw soon (coalesced with the other points of the next :data:`REDRAW_S` seconds)."""
        if not self._timer.isActive():
            self._timer.start()

    def update_lines(self, batches: Sequence | None = None, history: Sequence | None = None) -> None:
        """Put the points on the lines and set the axes' limits (no drawing)."""
        batches = self.batches if batches is None else batches
        history = self.history if history is None else history
        with self._lock:
            self.lines["train loss (batch)"].set_data(*batch_series(batches))
            for title, (x, y) in curve_series(history).items():
                self.lines[title].set_data(x, y)
            last = max(batch_series(batches[-1:])[0] + [float(row["epoch"]) for row in history[-1:]] + [1.0])
            for axes in (self.loss_axes, self.score_axes):
                axes.set_xlim(0, last + 0.05)
            self.loss_axes.relim()
            self.loss_axes.autoscale_view(scalex=False)

    def draw(self) -> None:
        """Render the current points in the render thread; the picture is shown when it is ready."""
        self._timer.stop()
        if self._busy:
            self._again = True
            return
        self._busy, self._again = True, False
        batches, history = list(self.batches), [dict(row) for row in self.history]
        size = (max(320, self.picture.width()), max(140, self.picture.height()))
        threading.Thread(target=self._render, args=(batches, history, size), daemon=True,
                         name="training-plot").start()

    def _render(self, batches: list, history: list, size: tuple[int, int]) -> None:
        picture = None
        try:
            self.update_lines(batches, history)
            with self._lock:
                dpi = self.figure.dpi
                self.figure.set_size_inches(size[0] / dpi, size[1] / dpi)
                # margins in pixels, so tick labels and legends fit at any size
                self.figure.subplots_adjust(left=52 / size[0], right=1 - 10 / size[0], bottom=42 / size[1],
                                            top=1 - 26 / size[1], wspace=60 / size[0] * 2)
                self.agg.draw()
                width, height = self.agg.get_width_height()
                picture = (width, height, bytes(self.agg.buffer_rgba()))
        finally:
            try:
                self._rendered.done.emit(picture)
            except RuntimeError:  # the plot was closed
                pass

    def _show(self, picture: tuple | None) -> None:
        self._busy = False
        if picture is not None:
            width, height, data = picture
            image = QImage(data, width, height, width * 4, QImage.Format.Format_RGBA8888)
            self.picture.setPixmap(QPixmap.fromImage(image))
            self.renders += 1
        if self._again:
            self.draw()

    def wait(self, timeout: float = 10.0) -> None:
        """Wait (processing Qt events) until no picture is being rendered; for tests and screenshots."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while (self._busy or self._timer.isActive()) and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.schedule()
