"""docs/console.md runs: its Python blocks are executed in order against a real viewer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

DOC = Path(__file__).resolve().parents[2] / "docs" / "console.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_console_doc_has_the_promised_examples():
    blocks = code_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    text = "\n".join(blocks)
    for needle in ("from napari_unet_seg import", "train(", "progress(", "predict(", "compare_labels(",
                   "evaluate(", "viewer.add_labels("):
        assert needle in text, needle


def test_console_doc_blocks_run(make_napari_viewer, qtbot, tmp_path, monkeypatch, capsys):
    import napari
    from qtpy.QtCore import QThreadPool

    monkeypatch.chdir(tmp_path)
    viewer = make_napari_viewer()
    namespace = {"viewer": viewer, "napari": napari, "__name__": "__console__"}
    for number, block in enumerate(code_blocks(DOC.read_text(encoding="utf-8")), start=1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)  # noqa: S102 - our own docs
        # a block may start a worker thread: wait for it, then deliver its queued signals
        qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=60_000)
        qtbot.wait(50)

    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "completed: " in out and "mean" in out
    assert (tmp_path / "runs" / "console" / "best.pt").is_file()
    assert (tmp_path / "runs" / "console-thread" / "best.pt").is_file()
    assert len(list((tmp_path / "results").glob("*.png"))) == 6
    names = [layer.name for layer in viewer.layers]
    assert names.count("img000 labels") == 1  # segmenting every image layer updated the folder's results
    assert len([n for n in names if n.endswith(" labels")]) == 6
    assert viewer.layers["img000 labels"].data.dtype == np.uint8
    assert 0.0 <= namespace["scores"]["dice"] <= 1.0
    assert namespace["report"]["count"] == 6
