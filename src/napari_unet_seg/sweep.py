"""Sweeps: train a grid of runs on one data set and tabulate them (``comparison.csv`` / ``comparison.md``).

The sweep file (YAML) names the data and the settings; :mod:`~napari_unet_seg.sweep_spec` reads and checks it
into a :class:`SweepSpec` (its names are importable from here too). ``sweep_steps`` is a generator of the
engine's events that returns the table's rows; ``sweep`` drains it. Each run is an ordinary run folder
(``OUT/<index>-<model>-<loss>-<optimizer>-lr<lr>``) scored on the test set when there is one; the
tables are rewritten atomically after every run, so a cancelled sweep keeps what it finished, and running
the sweep again with the same ``OUT`` skips the finished runs and resumes an interrupted one.

``list_runs`` / ``read_comparison`` read such a folder back (for the Compare view).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Generator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import JobCancelled, UserError, is_cancelled
from .events import Batch, Checkpoint, Epoch, Message, Tiles, drain
from .image_io import atomic_write
from .outputs import check_folder
from .sweep_spec import (DATA_KEYS, GRID_KEYS, SPLIT_KEYS, _NOT_GRID, SweepRun, SweepSpec, _pairs, _show, load_sweep,
                         parse_sweep, split_lists)  # the sweep file's names stay importable from here

__all__ = ["SweepRun", "SweepSpec", "load_sweep", "parse_sweep", "split_lists", "sweep_steps", "sweep", "check_out",
           "list_runs", "read_comparison", "DATA_KEYS", "SPLIT_KEYS", "GRID_KEYS", "RESULT_COLUMNS"]

#: The result columns after the settings.
RESULT_COLUMNS = ("epochs_run", "best_epoch", "best_val_dice", "best_val_iou", "test_dice", "test_iou",
                  "test_accuracy", "seconds", "status")
#: Settings columns of ``list_runs`` on a folder that is not a sweep.
LIST_COLUMNS = ("model", "width", "loss", "optimizer", "lr", "epochs", "batch_size", "scheduler", "patch_size",
                "resize", "augment", "seed")
_STATE = "run.json"
_TEST_SCORES = "test_scores.json"


# ---------------------------------------------------------------------------------------------------------
# The split's folders


def _link(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        return
    try:
        target.symlink_to(source.resolve())
    except OSError:  # no symlinks here (e.g. Windows without developer mode): copy instead
        if source.is_dir():  # a zarr store
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)


def _materialize_split(spec: SweepSpec, out: Path) -> tuple[dict[str, tuple[Path, Path]], Message]:
    """Write ``OUT/split/<side>/{images,masks}`` (symlinks or copies) and ``OUT/split.json``."""
    pairs = _pairs(spec)
    lists = split_lists(spec, pairs)
    record = {"images": str(spec.images), "masks": str(spec.masks), **spec.split, **lists}
    stored_path = out / "split.json"
    if stored_path.exists():
        stored = json.loads(stored_path.read_text())
        if any(stored.get(k) != v for k, v in lists.items()):
            raise UserError(f"{stored_path}: holds another split (the data or the split settings changed); "
                            "use a new --out so runs of both splits are not mixed")
    by_name = {pair.name: pair for pair in pairs}
    sides = ("train", "val", "test") if "val" in lists else ("trainval", "test")
    folders = {}
    for side in sides:
        images, masks = out / "split" / side / "images", out / "split" / side / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for name in lists[side]:
            pair = by_name[name]
            _link(pair.image, images / pair.image.name)
            _link(pair.mask, masks / pair.mask.name)
        folders[side] = (images, masks)
    atomic_write(stored_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    counts = ", ".join(f"{len(lists[s])} {s}" for s in sides)
    return folders, Message(f"split of {len(by_name)} pairs: {counts} -> {out / 'split'} (listed in split.json)")


# ---------------------------------------------------------------------------------------------------------
# Running the sweep


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, values: dict) -> None:
    text = json.dumps(values, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _check_same_settings(run: SweepRun, run_dir: Path) -> None:
    from .model_file import read_metadata

    stored_file = next((run_dir / n for n in ("last.pt", "best.pt") if (run_dir / n).exists()), None)
    if stored_file is None:
        return
    stored = read_metadata(stored_file).get("config", {})
    for key, planned in run.config.to_dict().items():
        if key in _NOT_GRID or key not in stored or _from_data(key, planned, stored):
            continue
        old = stored[key]
        same = math.isclose(old, planned) if isinstance(planned, float) and isinstance(old, (int, float)) \
            else old == planned or (isinstance(planned, tuple) and list(planned) == old)
        if not same:
            raise UserError(f"{run_dir}: holds a run with {key}={_show(old)}, but the sweep plans "
                            f"{key}={_show(planned)} for it; use a new --out (or remove that folder)")


def _from_data(key: str, planned: Any, stored: dict) -> bool:
    """Whether ``planned`` asks training to take the setting from the data (which the stored run then
    holds as measured): ``spatial_dims`` auto, ``spacing`` None, a 3D run's default patch size."""
    return ((key == "spatial_dims" and planned == "auto") or (key == "spacing" and planned is None)
            or (key == "patch_size" and planned == TrainConfig.patch_size and stored.get("spatial_dims") == 3))


def _test_steps(model_file: Path, images: Path, masks: Path, *, device: str, skip_unpaired: bool,
                cancel: Any) -> Generator[Tiles, None, dict]:
    """Score a model on the test pairs (predict resizes like training did for ``resize`` models)."""
    from .evaluation import evaluate_steps

    return (yield from evaluate_steps(model_file, images, masks, device=device, skip_unpaired=skip_unpaired,
                                      cancel=cancel))


def _finished(run_dir: Path, needs_test: bool) -> bool:
    state = _read_json(run_dir / _STATE)
    return (bool(state.get("trained")) and (run_dir / "best.pt").exists() and (run_dir / "history.csv").exists()
            and (state.get("tested") or not needs_test))


def sweep_steps(spec: SweepSpec | str | os.PathLike, out: str | os.PathLike, *, device: str = "auto",
                cancel: Any = None) -> Generator[Batch | Epoch | Checkpoint | Message | Tiles, None, list[dict]]:
    """Run every run of the sweep into ``out``, yielding the engine's events; return the table's rows.

    Finished runs in ``out`` are skipped (their rows are read back), an interrupted one is resumed from
    its ``last.pt``. ``cancel`` (a ``threading.Event`` or callable) stops after the current batch; the
    tables then hold the runs so far.
    """
    from .device import free_cuda_memory
    from .training import train_steps

    from .options import SWEEP_RULES, check_options

    device = check_options({"device": device}, SWEEP_RULES, "sweep")["device"]
    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec)
    out = _prepared_out(spec, Path(out))
    data, test = yield from _data_folders(spec, out)
    total = len(spec.runs)
    yield Message(f"sweep {spec.name}: {total} run(s) -> {out}")
    rows: list[dict] = []
    for run in spec.runs:
        head = f"run {run.index}/{total}"
        if is_cancelled(cancel):
            yield Message(f"cancelled before {head}", "warning")
            break
        run_dir = out / run.name
        _check_same_settings(run, run_dir)
        if _finished(run_dir, test is not None):
            yield Message(f"{head}: {run.name} is finished already; skipped")
            rows.append(_row(run_dir, run.settings))
            continue
        yield Message(f"{head}: {run.describe()} -> {run_dir}")
        state = _read_json(run_dir / _STATE)
        status = state.get("status", "completed")
        try:
            if not state.get("trained"):
                config = replace(run.config, out=str(run_dir), device=device, overwrite=False,
                                 skip_unpaired=spec.skip_unpaired,
                                 command=f"napari-unet-seg sweep {spec.name} (run {run.name})",
                                 **{k: (str(v) if v is not None else None) for k, v in data.items()})
                resume = (run_dir / "last.pt").exists()
                result = yield from train_steps(config, resume=resume, cancel=cancel)
                status = result.status
                if status == "cancelled":
                    rows.append(_row(run_dir, run.settings, status="cancelled"))
                    break
                _write_json(run_dir / _STATE, {"status": status, "trained": True, "tested": False})
            if test is not None:
                yield from _tested(run_dir, test, device, spec.skip_unpaired, cancel, head)
            _write_json(run_dir / _STATE, {"status": status, "trained": True, "tested": test is not None})
        except JobCancelled:
            yield Message(f"{head}: cancelled while testing; the run is trained, a new sweep call tests it",
                          "warning")
            rows.append(_row(run_dir, run.settings, status="cancelled"))
            break
        finally:
            free_cuda_memory()
        rows.append(_row(run_dir, run.settings))
        _write_tables(out, spec, rows)
    _write_tables(out, spec, rows)
    yield Message(f"comparison of {len(rows)} run(s): {out / 'comparison.csv'}, {out / 'comparison.md'}")
    return rows


def check_out(spec: SweepSpec, out: str | os.PathLike) -> Path:
    """``out`` once a sweep of ``spec`` may write there: no data folder of it, and new, empty, or an earlier
    sweep's (a sweep has no ``--overwrite``: an earlier one's folder is resumed, or extended by an edited
    sweep file, whose runs are checked against the finished ones as it reaches them).

    Raises:
        UserError: a file, a data folder, or a folder of other files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the sweep")
    check_folder(out, folders=[getattr(spec, key) for key in DATA_KEYS])
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if (out / "sweep.yaml").is_file() or not spec.text and (
            (out / "split.json").is_file() or any((out / run.name).is_dir() for run in spec.runs)):
        return out
    raise UserError(f"--out {out}: is not empty and holds no earlier sweep (no sweep.yaml); choose a new or "
                    "empty folder (a sweep resumes only its own)")


def _prepared_out(spec: SweepSpec, out: Path) -> Path:
    """The sweep folder, created, with a copy of the sweep file; its data folders and itself checked first."""
    for key in DATA_KEYS:
        folder = getattr(spec, key)
        if folder is not None and not folder.is_dir():
            raise UserError(f"{spec.name}: {key}: folder {folder} does not exist; check the path")
    check_out(spec, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create it ({error.strerror}); choose another folder") from None
    copy = out / "sweep.yaml"
    if spec.text and not (copy.is_file() and copy.read_text(errors="replace") == spec.text):  # new or edited
        atomic_write(copy, lambda tmp: Path(tmp).write_text(spec.text))
    return out


def _data_folders(spec: SweepSpec, out: Path) -> Generator[Message, None, tuple[dict, tuple | None]]:
    """``(data, test)``: the runs' training and validation folders and the test pair of folders (or None),
    those of the fixed split (written under ``out``) when the sweep has one."""
    data = {"images": spec.images, "masks": spec.masks, "val_images": spec.val_images, "val_masks": spec.val_masks}
    test = (spec.test_images, spec.test_masks) if spec.test_images else None
    if spec.split is not None:
        folders, message = _materialize_split(spec, out)
        yield message
        data["images"], data["masks"] = folders["train" if "train" in folders else "trainval"]
        if "val" in folders:
            data["val_images"], data["val_masks"] = folders["val"]
        test = folders["test"]
    return data, test


def _tested(run_dir: Path, test: tuple, device: str, skip_unpaired: bool, cancel: Any, head: str
            ) -> Generator[Tiles | Message, None, None]:
    """Score the run's ``best.pt`` on the test folders into its test_scores.json."""
    began = time.perf_counter()
    scores = yield from _test_steps(run_dir / "best.pt", *test, device=device, skip_unpaired=skip_unpaired,
                                    cancel=cancel)
    scores.update(images=str(test[0]), masks=str(test[1]), seconds=time.perf_counter() - began)
    _write_json(run_dir / _TEST_SCORES, scores)
    items = f"{scores['volumes']} volume(s)" if scores.get("volumes") else f"{scores['count']} image(s)"
    yield Message(f"{head}: test Dice {scores['dice']:.4f}  IoU {scores['iou']:.4f}  accuracy "
                  f"{scores['accuracy']:.4f} on {items}")


def sweep(spec: SweepSpec | str | os.PathLike, out: str | os.PathLike, *, device: str = "auto", cancel: Any = None,
          on_event=None) -> list[dict]:
    """Run a sweep (a file or a :class:`SweepSpec`) into ``out``; see :func:`sweep_steps`. Returns the rows.

    Example:
        >>> rows = sweep("experiments/ph2.yaml", "runs/ph2")          # doctest: +SKIP
        >>> [(r["model"], r["test_dice"]) for r in rows]               # doctest: +SKIP
    """
    return drain(sweep_steps(spec, out, device=device, cancel=cancel), on_event)


# ---------------------------------------------------------------------------------------------------------
# Rows and tables


def _row(run_dir: Path, settings: dict, status: str | None = None) -> dict:
    """One table row from a run folder's files (history.csv, best.pt, test_scores.json, run.json)."""
    from .model_file import read_metadata
    from .reporting import read_history

    row: dict[str, Any] = {"run": run_dir.name, **settings, **{c: None for c in RESULT_COLUMNS}}
    history = read_history(run_dir / "history.csv") if (run_dir / "history.csv").exists() else []
    row["epochs_run"] = len(history)
    best_epoch = None
    if (run_dir / "best.pt").exists():
        best_epoch = read_metadata(run_dir / "best.pt").get("metrics", {}).get("epoch")
    if best_epoch is None and history:
        best_epoch = max(history, key=lambda r: r["val_dice"])["epoch"]
    best = next((r for r in history if r["epoch"] == best_epoch), {})
    row.update(best_epoch=best_epoch, best_val_dice=best.get("val_dice"), best_val_iou=best.get("val_iou"))
    scores = _read_json(run_dir / _TEST_SCORES)
    row.update(test_dice=scores.get("dice"), test_iou=scores.get("iou"), test_accuracy=scores.get("accuracy"))
    row["seconds"] = sum(r.get("seconds", 0.0) for r in history) + scores.get("seconds", 0.0)
    state = _read_json(run_dir / _STATE)
    epochs = settings.get("epochs")
    row["status"] = status or state.get("status") or (
        "completed" if epochs is not None and len(history) >= epochs else "partial")
    return row


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _columns(spec: SweepSpec) -> list[str]:
    return ["run", *spec.columns, *RESULT_COLUMNS]


def _write_tables(out: Path, spec: SweepSpec, rows: list[dict]) -> None:
    columns = _columns(spec)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    atomic_write(out / "comparison.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))

    def md(column: str, value: Any) -> str:
        if value is None:
            return "-"
        if column == "seconds":
            return f"{value:.1f}"
        if isinstance(value, float) and column not in spec.columns:
            return f"{value:.4f}"
        return _cell(value)

    lines = [f"# Sweep {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    test = "the split's test pairs" if spec.split else (str(spec.test_images) if spec.test_images else "none")
    lines += [f"Data: {spec.images}; test set: {test}. Validation Dice/IoU at the best epoch (model selection); "
              "test scores of that model.", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(md(c, row.get(c)) for c in columns) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write(out / "comparison.md", lambda tmp: Path(tmp).write_text(text))


def list_runs(folder: str | os.PathLike, columns: Iterable[str] = LIST_COLUMNS) -> list[dict]:
    """The runs in ``folder``: every subfolder with ``best.pt`` and ``history.csv``, sorted by name.

    Each row holds ``run`` (the subfolder's name), ``path``, the settings ``columns`` from the model
    file's training config, the best epoch's validation Dice/IoU, the test scores when the run has a
    ``test_scores.json``, ``seconds`` and ``status``.
    """
    from .model_file import read_metadata

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"runs folder {folder}: does not exist; pick the folder that holds the run folders")
    rows = []
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not ((run_dir / "best.pt").exists() and (run_dir / "history.csv").exists()):
            continue
        config = read_metadata(run_dir / "best.pt").get("config", {})
        row = _row(run_dir, {c: config.get(c) for c in columns})
        rows.append({"run": row.pop("run"), "path": str(run_dir), **row})
    return rows


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_comparison(folder: str | os.PathLike) -> list[dict]:
    """The rows of ``folder/comparison.csv`` (numbers parsed, ``path`` added), or :func:`list_runs` of the
    folder when it has no table (a folder of runs that is not a sweep)."""
    folder = Path(folder)
    table = folder / "comparison.csv"
    if not table.exists():
        return list_runs(folder)
    with open(table, newline="") as handle:
        rows = [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return [{"run": row["run"], "path": str(folder / str(row["run"])), **row} for row in rows]
