"""Sweeps: train a grid of runs on one data set and tabulate them (``comparison.csv`` / ``comparison.md``).

A sweep file (YAML) names the data and the settings; every setting is a value or a list, and each list
is an axis of the grid (see ``docs/sweeps.md``). ``sweep_steps`` is a generator of the engine's events
that returns the table's rows; ``sweep`` drains it. Each run is an ordinary run folder
(``OUT/<index>-<model>-<loss>-<optimizer>-lr<lr>``) scored on the test set when there is one; the
tables are rewritten atomically after every run, so a cancelled sweep keeps what it finished, and running
the sweep again with the same ``OUT`` skips the finished runs and resumes an interrupted one.

``list_runs`` / ``read_comparison`` read such a folder back (for the Compare view).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .errors import JobCancelled, UserError, is_cancelled
from .events import Batch, Checkpoint, Epoch, Message, Tiles, drain
from .image_io import atomic_write

__all__ = ["SweepRun", "SweepSpec", "load_sweep", "parse_sweep", "split_lists", "sweep_steps", "sweep",
           "list_runs", "read_comparison", "DATA_KEYS", "SPLIT_KEYS", "GRID_KEYS", "RESULT_COLUMNS"]

#: Data folders of a sweep file (paths relative to the file's folder).
DATA_KEYS = ("images", "masks", "val_images", "val_masks", "test_images", "test_masks")
#: Keys of the optional ``split`` mapping.
SPLIT_KEYS = ("seed", "test_fraction", "test_count", "test_stems", "test_range", "val_stems", "val_range")
_NOT_GRID = {"images", "masks", "val_images", "val_masks", "out", "device", "overwrite", "command", "extra",
             "skip_unpaired"}
#: TrainConfig fields a sweep file may set (a value, or a list = an axis of the grid).
GRID_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in _NOT_GRID)
_PLURALS = {"models": "model", "losses": "loss", "optimizers": "optimizer", "schedulers": "scheduler"}
_OTHER_KEYS = ("description", "skip_unpaired", "split", "grids")
#: Settings columns every sweep table has (more when the sweep file sets more).
BASE_COLUMNS = ("model", "loss", "optimizer", "lr", "epochs", "batch_size")
#: The result columns after the settings.
RESULT_COLUMNS = ("epochs_run", "best_epoch", "best_val_dice", "best_val_iou", "test_dice", "test_iou",
                  "test_accuracy", "seconds", "status")
#: Settings columns of ``list_runs`` on a folder that is not a sweep.
LIST_COLUMNS = ("model", "width", "loss", "optimizer", "lr", "epochs", "batch_size", "scheduler", "patch_size",
                "resize", "augment", "seed")
_SHORT = {"epochs": "e", "batch_size": "bs", "width": "w", "patch_size": "p", "resize": "r", "weight_decay": "wd",
          "val_fraction": "vf", "early_stop": "es", "classes": "c", "scheduler": "sched-", "augment": "aug-",
          "normalization": "norm-"}
_STATE = "run.json"
_TEST_SCORES = "test_scores.json"


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: its folder name, its grid settings (column -> value) and its full config."""

    index: int
    name: str
    settings: dict
    config: TrainConfig

    def describe(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.settings.items())


@dataclass
class SweepSpec:
    """A validated sweep file. Paths are absolute; ``columns`` are the settings columns of the table."""

    path: Path | None
    images: Path
    masks: Path
    val_images: Path | None = None
    val_masks: Path | None = None
    test_images: Path | None = None
    test_masks: Path | None = None
    skip_unpaired: bool = False
    split: dict | None = None
    description: str = ""
    columns: tuple[str, ...] = BASE_COLUMNS
    runs: list[SweepRun] = field(default_factory=list)
    text: str = ""

    @property
    def name(self) -> str:
        return self.path.name if self.path else "sweep"


# ---------------------------------------------------------------------------------------------------------
# Reading and checking a sweep file


def load_sweep(path: str | os.PathLike, *, check_data: bool = True) -> SweepSpec:
    """Read and validate a sweep file; relative data paths are taken from the file's folder.

    ``check_data=False`` skips the checks that the data folders (and split stems) exist.

    Raises:
        UserError: a missing or unreadable file, bad YAML, an unknown key (the allowed ones are listed),
            a bad value (named), or missing data folders.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path}: {'is a folder' if path.is_dir() else 'does not exist'}; "
                        "give a .yaml file")
    try:
        text = path.read_text()
        values = yaml.safe_load(text)
    except OSError as error:
        raise UserError(f"sweep file {path}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"sweep file {path}: is not valid YAML{where} ({reason})") from None
    spec = parse_sweep(values, base=path.parent, source=path.name, check_data=check_data)
    spec.path, spec.text = path.resolve(), text
    return spec


def parse_sweep(values: Any, *, base: str | os.PathLike = ".", source: str = "sweep",
                check_data: bool = True) -> SweepSpec:
    """Validate the mapping of a sweep file (as :func:`load_sweep`, for a dict already in memory)."""
    if not isinstance(values, dict) or not values:
        raise UserError(f"{source}: must be a mapping of keys (images, masks, models, ...); see docs/sweeps.md")
    allowed = (*DATA_KEYS, *_OTHER_KEYS, *sorted(_PLURALS), *GRID_KEYS)
    _check_keys(values, allowed, source)
    for key in ("images", "masks"):
        if not values.get(key):
            raise UserError(f"{source}: {key} is missing; give the folder of training {key}")
    data = {}
    for key in DATA_KEYS:
        if values.get(key) is not None:
            if not isinstance(values[key], (str, os.PathLike)):
                raise UserError(f"{source}: {key} must be a folder path, got {values[key]!r}")
            data[key] = (Path(base) / Path(values[key]).expanduser()).resolve()
    for a, b in (("val_images", "val_masks"), ("test_images", "test_masks")):
        if (a in data) != (b in data):
            raise UserError(f"{source}: give both {a} and {b}, or neither")
    skip_unpaired = values.get("skip_unpaired", False)
    if not isinstance(skip_unpaired, bool):
        raise UserError(f"{source}: skip_unpaired must be true or false, got {skip_unpaired!r}")
    description = values.get("description") or ""
    if not isinstance(description, str):
        raise UserError(f"{source}: description must be text")
    split = _parse_split(values.get("split"), data, source)
    if check_data:
        for key, folder in data.items():
            if not folder.is_dir():
                raise UserError(f"{source}: {key}: folder {folder} does not exist; check the path (relative "
                                "paths start at the sweep file's folder)")
    shared = _grid_settings(values, source, "")
    grids = values.get("grids")
    if grids is None:
        grids = [{}]
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise UserError(f"{source}: grids must be a list of mappings of settings (one grid each)")
    entries = []
    for number, grid in enumerate(grids, start=1):
        _check_keys(grid, (*sorted(_PLURALS), *GRID_KEYS), f"{source}: grids[{number}]")
        entries.append({**shared, **_grid_settings(grid, source, f"grids[{number}]: ")})
    mentioned = set().union(*entries)
    columns = tuple(BASE_COLUMNS) + tuple(k for k in GRID_KEYS if k in mentioned and k not in BASE_COLUMNS)
    spec = SweepSpec(path=None, skip_unpaired=skip_unpaired, split=split, description=description,
                     columns=columns, **data)
    spec.runs = _expand(entries, columns, source)
    if check_data and split is not None:
        split_lists(spec)  # unknown stems or ranges outside the data fail now, not after hours of training
    return spec


def _check_keys(values: dict, allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for key in values:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")


_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}


def _coerce(key: str, value: Any, where: str) -> Any:
    """A value of the TrainConfig field ``key`` from YAML (``1e-4`` is a string in YAML 1.1: accepted)."""
    kind = _TYPES[key]
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"{where}{key} needs a value")
    base = kind.split("|")[0].strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}{key} must be true or false, got {value!r}")
    if isinstance(value, bool):
        raise UserError(f"{where}{key} must be a {'number' if base in ('int', 'float') else 'name'}, got {value!r}")
    if base == "int":
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise UserError(f"{where}{key} must be a whole number, got {value!r}")
    if base == "float":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"{where}{key} must be a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise UserError(f"{where}{key} must be a name, got {value!r}")
    return value


def _grid_settings(values: dict, source: str, where: str) -> dict[str, list]:
    settings: dict[str, list] = {}
    for plural, single in _PLURALS.items():
        if plural in values and single in values:
            raise UserError(f"{source}: {where}give {plural} or {single}, not both")
    for key, value in values.items():
        name = _PLURALS.get(key, key)
        if name not in GRID_KEYS:
            continue
        items = value if isinstance(value, list) else [value]
        if not items:
            raise UserError(f"{source}: {where}{key} is an empty list; give at least one value")
        settings[name] = [_coerce(name, item, f"{source}: {where}") for item in items]
    return settings


def _expand(entries: list[dict[str, list]], columns: tuple[str, ...], source: str) -> list[SweepRun]:
    planned: list[tuple[dict, TrainConfig]] = []
    seen: dict[tuple, int] = {}
    for entry in entries:
        keys = list(entry)
        for combination in itertools.product(*(entry[k] for k in keys)):
            try:
                config = TrainConfig(**dict(zip(keys, combination))).validate()
            except UserError as error:
                raise UserError(f"{source}: {_plain(str(error))}") from None
            settings = {c: getattr(config, c) for c in columns}
            key = tuple(sorted((k, repr(v)) for k, v in config.to_dict().items()))
            if key in seen:
                raise UserError(f"{source}: run {' '.join(f'{k}={_show(v)}' for k, v in settings.items())} "
                                f"appears twice (runs {seen[key]} and {len(planned) + 1}); remove one")
            seen[key] = len(planned) + 1
            planned.append((settings, config))
    names = _run_names([s for s, _ in planned], columns)
    return [SweepRun(i, name, settings, config)
            for i, (name, (settings, config)) in enumerate(zip(names, planned), start=1)]


def _plain(message: str) -> str:
    """``--batch-size must be > 0`` (the CLI's words) -> ``batch_size must be > 0`` (the sweep file's)."""
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _show(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _token(key: str, value: Any) -> str:
    text = _show(value) if value is not None else "none"
    if isinstance(value, bool):
        text = key if value else f"no-{key}"
        return re.sub(r"[^A-Za-z0-9.+-]", "-", text)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", _SHORT.get(key, key) + text)


def _run_names(settings: list[dict], columns: tuple[str, ...]) -> list[str]:
    """``01-unet-dice-adamw-lr0.001``: the four main settings, plus other varying ones until names differ."""
    parts = [[_token("", s["model"]), _token("", s["loss"]), _token("", s["optimizer"]), _token("lr", s["lr"])]
             for s in settings]
    varying = [c for c in columns if c not in ("model", "loss", "optimizer", "lr")
               and len({repr(s[c]) for s in settings}) > 1]
    for column in varying:
        if len({"-".join(p) for p in parts}) == len(parts):
            break
        for p, s in zip(parts, settings):
            p.append(_token(column, s[column]))
    width = max(2, len(str(len(settings))))
    return [f"{i:0{width}d}-" + "-".join(p) for i, p in enumerate(parts, start=1)]


# ---------------------------------------------------------------------------------------------------------
# The fixed train(+val)/test split


def _parse_split(split: Any, data: dict, source: str) -> dict | None:
    if split is None:
        return None
    if not isinstance(split, dict):
        raise UserError(f"{source}: split must be a mapping, e.g. {{test_fraction: 0.1, seed: 0}}")
    _check_keys(split, SPLIT_KEYS, f"{source}: split")
    if "test_images" in data:
        raise UserError(f"{source}: give test_images/test_masks or split, not both")
    tests = [k for k in ("test_fraction", "test_count", "test_stems", "test_range") if k in split]
    if len(tests) != 1:
        raise UserError(f"{source}: split needs exactly one of test_fraction, test_count, test_stems, test_range"
                        + (f" (got {', '.join(tests)})" if tests else ""))
    vals = [k for k in ("val_stems", "val_range") if k in split]
    if len(vals) > 1:
        raise UserError(f"{source}: split takes val_stems or val_range, not both")
    if vals and "val_images" in data:
        raise UserError(f"{source}: give val_images/val_masks or split: {vals[0]}, not both")
    out = {"seed": split.get("seed", 0)}
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool):
        raise UserError(f"{source}: split: seed must be a whole number, got {out['seed']!r}")
    for key in (*tests, *vals):
        value = split[key]
        if key == "test_fraction":
            try:
                value = -1.0 if isinstance(value, bool) else float(value)
            except (TypeError, ValueError):
                value = -1.0
            if not 0 < value < 1:
                raise UserError(f"{source}: split: test_fraction must be between 0 and 1, got {split[key]!r}")
        elif key == "test_count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{source}: split: test_count must be a whole number >= 1, got {value!r}")
        elif key.endswith("_stems"):
            if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
                raise UserError(f"{source}: split: {key} must be a list of image names (stems), e.g. ['27', '28']")
            value = [str(v) for v in value]
        else:  # *_range: [first, last], positions in name order counted from 0, both included
            if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) and not isinstance(
                    v, bool) and v >= 0 for v in value) or value[0] > value[1]):
                raise UserError(f"{source}: split: {key} must be [first, last] positions (from 0, in name order, "
                                f"both included), got {value!r}")
        out[key] = value
    return out


def _pairs(spec: SweepSpec):
    from .pairing import pair_files

    return pair_files(spec.images, spec.masks, skip_unpaired=spec.skip_unpaired)


def _pick(names: list[str], split: dict, kind: str, where: str) -> list[str]:
    if f"{kind}_stems" in split:
        wanted = split[f"{kind}_stems"]
        unknown = [s for s in wanted if s not in names]
        if unknown:
            raise UserError(f"{where}: split: {kind}_stems {', '.join(unknown[:5])} are not among the "
                            f"{len(names)} pairs (names such as {', '.join(names[:3])}); quote names like '07'")
        return sorted(set(wanted))
    if f"{kind}_range" in split:
        first, last = split[f"{kind}_range"]
        if last >= len(names):
            raise UserError(f"{where}: split: {kind}_range {[first, last]} goes past the {len(names)} pairs "
                            f"(positions 0..{len(names) - 1})")
        return names[first:last + 1]
    count = split.get("test_count") or int(round(len(names) * split["test_fraction"]))
    count = max(1, count)
    if count >= len(names):
        raise UserError(f"{where}: split: the test set would take {count} of the {len(names)} pairs; "
                        "leave some for training")
    order = np.random.default_rng(split["seed"]).permutation(len(names))
    return sorted(names[i] for i in order[:count])


def split_lists(spec: SweepSpec, pairs=None) -> dict[str, list[str]]:
    """The pair names (image stems) of each side of the spec's split: ``trainval`` and ``test`` (plus
    ``train`` and ``val`` when the split names the validation pairs too). Deterministic for a seed."""
    if spec.split is None:
        raise UserError(f"{spec.name}: has no split")
    names = [pair.name for pair in (pairs if pairs is not None else _pairs(spec))]
    test = _pick(names, spec.split, "test", spec.name)
    lists = {"trainval": [n for n in names if n not in set(test)], "test": test}
    if not lists["trainval"]:
        raise UserError(f"{spec.name}: split: every pair would be a test pair; leave some for training")
    if "val_stems" in spec.split or "val_range" in spec.split:
        val = _pick(names, spec.split, "val", spec.name)
        overlap = sorted(set(val) & set(test))
        if overlap:
            raise UserError(f"{spec.name}: split: {', '.join(overlap[:5])} would be both validation and test "
                            "pairs; make the two sets disjoint")
        lists["val"] = val
        lists["train"] = [n for n in lists["trainval"] if n not in set(val)]
        if not lists["train"]:
            raise UserError(f"{spec.name}: split: no training pairs are left")
    return lists


def _link(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        return
    try:
        target.symlink_to(source.resolve())
    except OSError:  # no symlinks here (e.g. Windows without developer mode): copy instead
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
        if key in _NOT_GRID or key not in stored:
            continue
        old = stored[key]
        same = math.isclose(old, planned) if isinstance(planned, float) and isinstance(old, (int, float)) \
            else old == planned or (isinstance(planned, tuple) and list(planned) == old)
        if not same:
            raise UserError(f"{run_dir}: holds a run with {key}={_show(old)}, but the sweep plans "
                            f"{key}={_show(planned)} for it; use a new --out (or remove that folder)")


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

    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the sweep")
    for key in ("images", "masks", "val_images", "val_masks", "test_images", "test_masks"):
        folder = getattr(spec, key)
        if folder is not None and not folder.is_dir():
            raise UserError(f"{spec.name}: {key}: folder {folder} does not exist; check the path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create it ({error.strerror}); choose another folder") from None
    if spec.text:
        atomic_write(out / "sweep.yaml", lambda tmp: Path(tmp).write_text(spec.text))
    data = {"images": spec.images, "masks": spec.masks, "val_images": spec.val_images, "val_masks": spec.val_masks}
    test = (spec.test_images, spec.test_masks) if spec.test_images else None
    if spec.split is not None:
        folders, message = _materialize_split(spec, out)
        yield message
        data["images"], data["masks"] = folders["train" if "train" in folders else "trainval"]
        if "val" in folders:
            data["val_images"], data["val_masks"] = folders["val"]
        test = folders["test"]
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
                began = time.perf_counter()
                scores = yield from _test_steps(run_dir / "best.pt", *test, device=device,
                                                skip_unpaired=spec.skip_unpaired, cancel=cancel)
                scores.update(images=str(test[0]), masks=str(test[1]), seconds=time.perf_counter() - began)
                _write_json(run_dir / _TEST_SCORES, scores)
                yield Message(f"{head}: test Dice {scores['dice']:.4f}  IoU {scores['iou']:.4f}  accuracy "
                              f"{scores['accuracy']:.4f} on {scores['count']} images")
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
