"""The live training plot: what it holds after N batches and epochs, its axes, its legend, its picture."""

from __future__ import annotations

import pytest

from napari_unet_seg.widgets._plot import TrainingPlot, batch_series

pytestmark = pytest.mark.gui


def test_batch_positions_lie_between_epochs():
    assert batch_series([(1, 1, 4, 0.9), (1, 4, 4, 0.7), (2, 2, 4, 0.5)]) == ([0.25, 1.0, 1.5], [0.9, 0.7, 0.5])


def _feed(plot, epochs: int, batches: int):
    for epoch in range(1, epochs + 1):
        for batch in range(1, batches + 1):
            plot.add_batch(epoch, batch, batches, 1.0 / (epoch * batches + batch))
        plot.add_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch,
                        "val_dice": 1 - 1 / (epoch + 1), "val_iou": 1 - 1 / epoch})


def test_plot_holds_batches_and_epochs(qtbot):
    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(900, 300)
    _feed(plot, epochs=1, batches=3)
    plot.add_batch(2, 1, 3, 0.2)  # mid-epoch 2: the batch curve moves on before the epoch ends
    plot.update_lines()
    assert list(plot.lines["train loss (batch)"].get_xdata()) == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3])
    assert list(plot.lines["val Dice"].get_xdata()) == [1] and list(plot.lines["val Dice"].get_ydata()) == [0.5]
    _feed(plot, epochs=0, batches=0)
    for batch in (2, 3):
        plot.add_batch(2, batch, 3, 0.1)
    plot.add_epoch({"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_dice": 0.75, "val_iou": 0.6})
    plot.update_lines()
    assert len(plot.lines["train loss (batch)"].get_xdata()) == 6
    for title in ("train loss", "val loss", "val Dice", "val IoU"):
        assert list(plot.lines[title].get_xdata()) == [1, 2], title
    assert list(plot.lines["val IoU"].get_ydata()) == [0.0, 0.6]
    assert plot.show_best()["epoch"] == 2 and float(dict(plot.table.value["data"])["val Dice"]) == 0.75


def test_axes_legend_and_fonts_read_at_a_glance(qtbot):
    plot = TrainingPlot()
    qtbot.addWidget(plot)
    _feed(plot, epochs=3, batches=4)
    plot.update_lines()
    plot.agg.draw()
    for axes in (plot.loss_axes, plot.score_axes):
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # integer epochs only
        legend = axes.get_legend()
        box, inside = legend.get_window_extent(), axes.get_window_extent()
        assert box.y0 >= inside.y1 - 1, "the legend lies above the axes, not over the points"
        assert min(text.get_fontsize() for text in legend.get_texts()) >= 9
        assert axes.xaxis.label.get_fontsize() >= 10
        assert min(label.get_fontsize() for label in axes.get_xticklabels()) >= 9


def test_the_picture_is_rendered_off_the_main_thread_and_follows_the_size(qtbot):
    import threading

    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(1000, 320)
    plot.show()
    qtbot.waitExposed(plot)
    plot.wait()
    threads = []
    real = plot.agg.draw
    plot.agg.draw = lambda: (threads.append(threading.current_thread()), real())[1]
    _feed(plot, epochs=2, batches=2)
    before = plot.renders
    plot.draw()
    qtbot.waitUntil(lambda: plot.renders > before, timeout=10_000)
    assert threads and all(thread is not threading.main_thread() for thread in threads)
    width, height = plot.picture.pixmap().width(), plot.picture.pixmap().height()
    assert width >= 600 and height >= 170
    plot.wait()
    before = plot.renders
    plot.resize(1300, 500)  # enlarged (a floated dock): a sharper, larger picture
    qtbot.waitUntil(lambda: plot.renders > before, timeout=10_000)
    plot.wait()
    assert plot.picture.pixmap().width() > width
