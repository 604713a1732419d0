"""Sweep files: read and validate one (YAML) into a :class:`SweepSpec`, the grid of runs to train.

Every setting is a value or a list, and each list is an axis of the grid; ``grids`` joins several grids
(see ``docs/sweeps.md``). Each run gets a folder name (``<index>-<model>-<loss>-<optimizer>-lr<lr>``, plus
the other varying settings until the names differ). An optional ``split`` fixes the train(+val)/test pairs:
:func:`split_lists` picks them, deterministically for a seed. Mistakes raise ``UserError`` naming the key,
the value or the missing folder. :mod:`~napari_unet_seg.sweep` runs the spec.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import TRAIN_RULES, TrainConfig, check_value, shown
from .errors import UserError

__all__ = ["SweepRun", "SweepSpec", "load_sweep", "parse_sweep", "split_lists", "DATA_KEYS", "SPLIT_KEYS",
           "GRID_KEYS", "BASE_COLUMNS"]

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
_SHORT = {"epochs": "e", "batch_size": "bs", "width": "w", "patch_size": "p", "resize": "r", "weight_decay": "wd",
          "val_fraction": "vf", "early_stop": "es", "classes": "c", "scheduler": "sched-", "augment": "aug-",
          "normalization": "norm-", "foreground_sampling": "fg"}


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

#: Largest sweep file read, and most values it may expand to through YAML aliases (an alias bomb of a few
#: hundred bytes expands to billions; the loader shares the aliased objects, the checks and messages would not).
MAX_FILE_BYTES, MAX_VALUES = 1_000_000, 100_000


def _expanded_size(value: Any, seen: dict[int, int]) -> int:
    """How many values ``value`` holds once its aliases are written out (counted once per shared object)."""
    if not isinstance(value, (list, dict)):
        return 1
    if id(value) not in seen:
        seen[id(value)] = 0  # a recursive alias (&a [*a]) counts as one value
        items = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        total = 1
        for item in items:
            total += _expanded_size(item, seen)
            if total > MAX_VALUES:
                break
        seen[id(value)] = total
    return seen[id(value)]


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
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UserError(f"sweep file {path}: is {size / 1e6:.1f} MB; a sweep file is a few KB of settings "
                            f"(at most {MAX_FILE_BYTES // 1000} KB)")
        text = path.read_text()
        values = yaml.safe_load(text)
    except OSError as error:
        raise UserError(f"sweep file {path}: cannot be read ({error.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"sweep file {path}: is not valid YAML{where} ({shown(reason)[1:-1]})") from None
    if _expanded_size(values, {}) > MAX_VALUES:
        raise UserError(f"sweep file {path}: its YAML aliases (*name) expand to more than {MAX_VALUES} values; "
                        "write the settings out without nested aliases")
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
                raise UserError(f"{source}: {key} must be a folder path, got {shown(values[key])}")
            data[key] = (Path(base) / Path(values[key]).expanduser()).resolve()
    for a, b in (("val_images", "val_masks"), ("test_images", "test_masks")):
        if (a in data) != (b in data):
            raise UserError(f"{source}: give both {a} and {b}, or neither")
    skip_unpaired = values.get("skip_unpaired", False)
    if not isinstance(skip_unpaired, bool):
        raise UserError(f"{source}: skip_unpaired must be true or false, got {shown(skip_unpaired)}")
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
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = (f"did you mean {close[0]!r}? (all keys: docs/sweeps.md)" if close
                    else f"allowed keys: {', '.join(allowed)}")
            raise UserError(f"{where}: unknown key {shown(key)}; {hint}")


def _coerce(key: str, value: Any, where: str) -> Any:
    """A value of the TrainConfig field ``key`` checked by its rule (``1e-4`` is a string in YAML 1.1: accepted)."""
    rule = TRAIN_RULES[key]
    if rule.kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return check_value(f"{where}{key}", value, rule)


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
        raise UserError(f"{source}: split: seed must be a whole number, got {shown(out['seed'])}")
    for key in (*tests, *vals):
        value = split[key]
        if key == "test_fraction":
            try:
                value = -1.0 if isinstance(value, bool) else float(value)
            except (TypeError, ValueError):
                value = -1.0
            if not 0 < value < 1:
                raise UserError(f"{source}: split: test_fraction must be between 0 and 1, got {shown(split[key])}")
        elif key == "test_count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{source}: split: test_count must be a whole number >= 1, got {shown(value)}")
        elif key.endswith("_stems"):
            if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
                raise UserError(f"{source}: split: {key} must be a list of image names (stems), e.g. ['27', '28']")
            value = [str(v) for v in value]
        else:  # *_range: [first, last], positions in name order counted from 0, both included
            if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) and not isinstance(
                    v, bool) and v >= 0 for v in value) or value[0] > value[1]):
                raise UserError(f"{source}: split: {key} must be [first, last] positions (from 0, in name order, "
                                f"both included), got {shown(value)}")
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
