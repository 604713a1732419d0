"""Sweeps: the grid, its tables, the fixed split, resuming, reading runs back (the sweep file itself:
tests/test_sweep_spec.py)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from sweep_helpers import data_lines, write_sweep
from volume_helpers import blobs, write_volumes

from napari_unet_seg.errors import UserError
from napari_unet_seg.events import Batch, Epoch, Message
from napari_unet_seg.sweep import (RESULT_COLUMNS, list_runs, load_sweep, read_comparison, split_lists, sweep,
                                   sweep_steps)

FAST = "epochs: 1\nbatch_size: 4\npatch_size: 32\nwidth: 0.125\naugment: none\nlr: 1e-2\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks gain nothing from threads, and on a shared 2-core machine they lose a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _messages(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, synthetic_dir):
    """A 2x2 grid (models x losses) with a separate test folder, run once for the tests below."""
    from napari_unet_seg.sample_data import write_synthetic_folder

    root = tmp_path_factory.mktemp("grid")
    test_images, test_masks = write_synthetic_folder(root / "test", 2, (64, 64), seed=100)
    path = write_sweep(root / "cfg", data_lines(root / "cfg", synthetic_dir) + FAST +
                       f"test_images: {test_images}\ntest_masks: {test_masks}\n"
                       "models: [unet, segnet]\nlosses: [dice, bce]\n")
    events = []
    rows = sweep(path, root / "out", device="cpu", on_event=events.append)
    return SimpleNamespace(path=path, out=root / "out", rows=rows, events=events)


def test_grid_writes_one_row_per_run(grid):
    names = ["01-unet-dice-adamw-lr0.01", "02-unet-bce-adamw-lr0.01", "03-segnet-dice-adamw-lr0.01",
             "04-segnet-bce-adamw-lr0.01"]
    assert [r["run"] for r in grid.rows] == names
    with open(grid.out / "comparison.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    columns = ["run", "model", "loss", "optimizer", "lr", "epochs", "batch_size", "width", "patch_size", "augment",
               *RESULT_COLUMNS]
    assert list(table[0]) == columns
    assert [(r["run"], r["model"], r["loss"], r["lr"]) for r in table] == [
        (n, m, loss, "0.01") for n, (m, loss) in zip(names, [("unet", "dice"), ("unet", "bce"), ("segnet", "dice"),
                                                              ("segnet", "bce")])]
    for row in grid.rows:
        assert row["status"] == "completed" and row["epochs_run"] == 1 and row["best_epoch"] == 1
        for key in ("best_val_dice", "best_val_iou", "test_dice", "test_iou", "test_accuracy"):
            assert 0.0 <= row[key] <= 1.0, key
        assert row["seconds"] > 0
        scores = json.loads((grid.out / row["run"] / "test_scores.json").read_text())
        assert scores["count"] == 2 and scores["dice"] == row["test_dice"]
    markdown = (grid.out / "comparison.md").read_text().splitlines()
    table_lines = [line for line in markdown if line.startswith("|")]
    assert len(table_lines) == 2 + 4 and table_lines[0].split(" | ")[:3] == ["| run", "model", "loss"]
    assert (grid.out / "sweep.yaml").read_text() == grid.path.read_text()
    # events: the engine's, plus one line per run start
    assert sum(isinstance(e, Epoch) for e in grid.events) == 4
    starts = [m for m in _messages(grid.events) if m.startswith("run ") and "->" in m]
    assert starts[2].startswith("run 3/4: model=segnet loss=dice optimizer=adamw lr=0.01 epochs=1")


def test_second_call_skips_finished_runs(grid):
    files = [grid.out / r["run"] / name for r in grid.rows for name in ("best.pt", "history.csv", "test_scores.json")]
    files.append(grid.out / "sweep.yaml")  # the earlier copy holds the same text: not written again
    before = {f: f.stat().st_mtime_ns for f in files}
    events = []
    rows = sweep(grid.path, grid.out, device="cpu", on_event=events.append)
    assert not any(isinstance(e, (Batch, Epoch)) for e in events)
    assert sum("is finished already; skipped" in m for m in _messages(events)) == 4
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert rows == grid.rows


def test_list_runs_and_read_comparison(grid, tmp_path):
    runs = list_runs(grid.out)
    assert [r["run"] for r in runs] == [r["run"] for r in grid.rows]  # split/ and files are not runs
    assert [(r["model"], r["loss"], r["width"]) for r in runs][0] == ("unet", "dice", 0.125)
    assert [r["test_dice"] for r in runs] == [r["test_dice"] for r in grid.rows]
    table = read_comparison(grid.out)
    assert [r["run"] for r in table] == [r["run"] for r in grid.rows]
    assert table[0]["lr"] == 0.01 and table[0]["epochs"] == 1 and isinstance(table[0]["test_iou"], float)
    assert Path(table[0]["path"]).is_dir()
    # a folder of runs without a table: listed from the run folders
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a").symlink_to(grid.out / grid.rows[1]["run"])
    rows = read_comparison(tmp_path / "only")
    assert [(r["run"], r["loss"]) for r in rows] == [("a", "bce")]
    with pytest.raises(UserError, match="does not exist"):
        list_runs(tmp_path / "nothing")


def test_split_is_seeded_disjoint_and_recorded(tmp_path, synthetic_dir):
    path = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + FAST + "split: {test_fraction: 0.25, seed: 3}\n")
    # cancelled before the first run: the split is made, nothing is trained
    events = []
    rows = sweep(path, tmp_path / "out", device="cpu", cancel=lambda: True, on_event=events.append)
    assert rows == [] and not any(isinstance(e, Epoch) for e in events)
    record = json.loads((tmp_path / "out" / "split.json").read_text())
    assert len(record["test"]) == 2 and len(record["trainval"]) == 6 and record["seed"] == 3
    assert not set(record["test"]) & set(record["trainval"])
    assert sorted(record["test"] + record["trainval"]) == [f"img{i:03d}" for i in range(8)]
    for side in ("trainval", "test"):
        images = sorted(p.stem for p in (tmp_path / "out" / "split" / side / "images").iterdir())
        masks = sorted(p.stem for p in (tmp_path / "out" / "split" / side / "masks").iterdir())
        assert images == masks == record[side]
    assert (tmp_path / "out" / "split" / "test" / "images" / f"{record['test'][0]}.png").resolve().parent == \
        synthetic_dir[0].resolve()
    # seeded: the same lists again, other ones for another seed
    spec = load_sweep(path)
    assert split_lists(spec) == {"trainval": record["trainval"], "test": record["test"]}
    other = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + FAST +
                        "split: {test_fraction: 0.25, seed: 4}\n", "other.yaml")
    assert split_lists(load_sweep(other))["test"] != record["test"]
    # an OUT with another split is refused (its runs would mix two splits), from a file or from Python
    for changed in (other, replace(load_sweep(other), text="")):
        with pytest.raises(UserError, match="holds another split"):
            sweep(changed, tmp_path / "out", device="cpu", cancel=lambda: True)


def test_split_run_scores_the_held_out_pairs(tmp_path, synthetic_dir):
    """Named test stems and a contiguous validation range (the ISBI layout); a resized model is tested
    on resized images and scored at the masks' own size."""
    path = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + FAST.replace("patch_size: 32", "resize: 32") +
                       "split:\n  test_stems: [img006, img007]\n  val_range: [4, 5]\n")
    rows = sweep(path, tmp_path / "out", device="cpu")
    record = json.loads((tmp_path / "out" / "split.json").read_text())
    assert record["test"] == ["img006", "img007"] and record["val"] == ["img004", "img005"]
    assert record["train"] == [f"img{i:03d}" for i in range(4)]
    scores = json.loads((tmp_path / "out" / rows[0]["run"] / "test_scores.json").read_text())
    assert [s["name"] for s in scores["per_image"]] == ["img006.png", "img007.png"]
    assert rows[0]["test_dice"] == scores["dice"] and rows[0]["resize"] == 32


def test_cancelled_sweep_keeps_its_table_and_resumes(tmp_path, synthetic_dir):
    path = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + FAST.replace("epochs: 1", "epochs: 2") +
                       "losses: [dice, bce]\n")
    cancel = threading.Event()
    for event in sweep_steps(path, tmp_path / "out", device="cpu", cancel=cancel):
        if isinstance(event, Epoch) and event.epoch == 1:
            cancel.set()
    with open(tmp_path / "out" / "comparison.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["run"], r["status"], r["epochs_run"]) for r in table] == [("01-unet-dice-adamw-lr0.01", "cancelled",
                                                                           "1")]
    events = []
    rows = sweep(path, tmp_path / "out", device="cpu", on_event=events.append)
    assert any(m.startswith("resuming") for m in _messages(events))
    assert [e.epoch for e in events if isinstance(e, Epoch)] == [2, 1, 2]  # run 1 went on from epoch 2
    assert [(r["status"], r["epochs_run"]) for r in rows] == [("completed", 2), ("completed", 2)]


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_is_never_a_data_folder(tmp_path, synthetic_dir):
    """Its run folders, tables and sweep.yaml would be listed with the images (every data key of the file)."""
    import shutil

    data = tmp_path / "data"
    for kind, source in zip(("images", "masks", "test_images", "test_masks"), synthetic_dir * 2):
        shutil.copytree(source, data / kind)
    path = write_sweep(tmp_path, "".join(f"{k}: data/{k}\n" for k in ("images", "masks", "test_images",
                                                                       "test_masks")) + FAST)
    before = _files(data)
    for kind in ("images", "masks", "test_images", "test_masks"):
        with pytest.raises(UserError, match=rf"--out .*{kind}: is the input folder .*{kind} of this job"):
            sweep(path, data / kind, device="cpu")
    assert _files(data) == before


def test_a_folder_of_other_files_is_refused_and_an_edited_sweep_extends_its_own(grid, tmp_path):
    """A sweep has no --overwrite: it writes into a new or empty folder, or resumes (extends) an earlier one."""
    other = tmp_path / "u"
    other.mkdir()
    (other / "comparison.csv").write_text("x\n")
    with pytest.raises(UserError, match=rf"--out {other}: is not empty and holds no earlier sweep"):
        sweep(grid.path, other, device="cpu")
    assert _files(other) == {"comparison.csv": b"x\n"}
    before = _files(grid.out)
    edited = write_sweep(grid.path.parent, grid.path.read_text().replace("losses: [dice, bce]", "losses: [dice]"),
                         "edited.yaml")
    shutil.copytree(grid.out, tmp_path / "copy")
    sweep(edited, tmp_path / "copy", device="cpu", cancel=lambda: True)  # an edited sweep file extends its folder
    assert (tmp_path / "copy" / "sweep.yaml").read_text() == edited.read_text()
    assert {name: data for name, data in _files(tmp_path / "copy").items() if name.endswith(".pt")} == \
        {name: data for name, data in before.items() if name.endswith(".pt")}


def test_missing_files_and_folders(tmp_path, synthetic_dir):
    with pytest.raises(UserError, match="sweep file .*nothing.yaml: does not exist"):
        load_sweep(tmp_path / "nothing.yaml")
    path = write_sweep(tmp_path, "images: gone/images\nmasks: gone/masks\n")
    with pytest.raises(UserError, match=r"images: folder .*gone/images does not exist"):
        load_sweep(path)
    with pytest.raises(UserError, match="masks is missing"):
        load_sweep(write_sweep(tmp_path, "images: a\n", "half.yaml"))
    spec = load_sweep(path, check_data=False)  # checked again before anything runs
    with pytest.raises(UserError, match="does not exist"):
        sweep(spec, tmp_path / "out", device="cpu")


def test_a_sweep_over_volumes_trains_and_scores_them_in_3d(tmp_path):
    """Volumes split like images, each run trained in 3D with the files' spacing and scored per volume."""
    from napari_unet_seg.model_file import load_model

    write_volumes(tmp_path / "data", [blobs(k) for k in range(5)], spacing=(1.0, 1.0, 1.0))
    path = write_sweep(tmp_path, "images: data/images\nmasks: data/masks\nsplit:\n  test_count: 1\n"
                       "  val_range: [0, 0]\n" + FAST.replace("width: 0.125", "width: 0.25") +
                       "models: [unet, basic_unet]\n")
    events = []
    rows = sweep(path, tmp_path / "out", device="cpu", on_event=events.append)
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert sum("accuracy" in text and text.endswith(" on 1 volume(s)") for text in _messages(events)) == 2
    test = json.loads((tmp_path / "out" / "split.json").read_text())["test"]
    for row in rows:
        model = load_model(tmp_path / "out" / row["run"] / "best.pt")
        assert model.spatial_dims == 3 and model.spacing == [1.0, 1.0, 1.0] and model.config["patch_shape"] == [
            16, 32, 32]
        scores = json.loads((tmp_path / "out" / row["run"] / "test_scores.json").read_text())
        assert scores["volumes"] == 1 and [s["name"] for s in scores["per_image"]] == [f"{test[0]}.tif"]
        assert scores["per_image"][0]["shape"] == [16, 48, 48] and row["test_dice"] == scores["dice"]


def test_sweep_module_imports_no_qt():
    code = ("import sys, napari_unet_seg.sweep\n"
            "print(sorted(m for m in ('qtpy', 'napari', 'magicgui', 'PyQt5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
