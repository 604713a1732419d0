"""Bad settings (issue 14, class 4 and typed settings): typos, wrong types, NaN/inf, negative seeds and sizes,
sizes that cannot fit in memory, YAML alias bombs. Each case: one line (exit status 2 on the CLI, no
traceback; ``UserError`` in Python) and the folder byte-identical before and after."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import napari_unet_seg as nus
from napari_unet_seg.cli import main
from napari_unet_seg.errors import UserError
from napari_unet_seg.options import sweep
from napari_unet_seg.sweep import sweep as engine_sweep

from cli_helpers import cli


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}




@pytest.fixture
def workspace(tmp_path, synthetic_dir, tiny_model):
    """A folder holding data, a model and an existing file: everything a bad command must leave alone."""
    import shutil

    images, masks = synthetic_dir
    shutil.copytree(images, tmp_path / "images")
    shutil.copytree(masks, tmp_path / "masks")
    shutil.copy(tiny_model, tmp_path / "model.pt")
    (tmp_path / "scores.json").write_text("{}")
    return tmp_path


BOMB = "grids:\n  - {lr: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]}\n" + "".join(
    f"  - {{lr: &{n} [{', '.join(['*' + p] * 9)}]}}\n" for p, n in zip("abcdefgh", "bcdefghi")) + \
    "images: *i\nmasks: masks\n"

TRAIN = ["train", "--images", "images", "--masks", "masks", "--out", "run", "--device", "cpu", "--epochs", 1,
         "--width", 0.25, "--patch-size", 32]
#: (id, command line, files to write first, what the one line says)
CLI_CASES = [
    ("lr inf", [*TRAIN, "--lr", "inf"], {}, "--lr must be a finite number, got inf"),
    ("weight decay nan", [*TRAIN, "--weight-decay", "nan"], {}, "--weight-decay must be a finite number, got nan"),
    ("negative seed", [*TRAIN, "--seed", -1], {}, "--seed must be in [0, 4294967295], got -1"),
    ("negative batch", [*TRAIN, "--batch-size", -4], {}, "--batch-size must be > 0, got -4"),
    ("negative workers", [*TRAIN, "--workers", -1], {}, "--workers must be >= 0, got -1"),
    ("patch size 40000", [*TRAIN, "--patch-size", 40000], {}, "--patch-size 40000 with --batch-size 8 needs about"),
    ("resize 50000", [*TRAIN, "--resize", 50000], {}, "--resize 50000 with --batch-size 8 needs about"),
    ("width inf", [*TRAIN, "--width", "inf"], {}, "--width must be a finite number"),
    ("predict threshold nan", ["predict", "--model", "model.pt", "--input", "images", "--output", "out",
                               "--threshold", "nan"], {}, "--threshold must be a finite number, got nan"),
    ("predict tile 8", ["predict", "--model", "model.pt", "--input", "images", "--output", "out", "--tile", 8],
     {}, "--tile must be >= 16 pixels, got 8"),
    ("predict negative min size", ["predict", "--model", "model.pt", "--input", "images", "--output", "out",
                                   "--min-size", -3], {}, "--min-size must be >= 0, got -3"),
    ("evaluate overlap 1", ["evaluate", "--model", "model.pt", "--images", "images", "--masks", "masks",
                            "--json", "scores.json", "--overlap", 1], {}, "--overlap must be in [0, 1), got 1"),
    ("evaluate device", ["evaluate", "--model", "model.pt", "--images", "images", "--masks", "masks",
                         "--device", "gpu0"], {}, "device 'gpu0' is unknown; use auto, cuda, cuda:N, mps or cpu"),
    ("demo epochs 0", ["demo", "--out", "demo", "--epochs", 0], {}, "--epochs must be > 0, got 0"),
    ("sweep alias bomb", ["sweep", "bomb.yaml", "--dry-run"], {"bomb.yaml": BOMB},
     "aliases (*name) expand to more than 100000 values"),
    ("sweep typo", ["sweep", "typo.yaml", "--dry-run"], {"typo.yaml": "images: images\nmasks: masks\nepoch: 3\n"},
     "unknown key 'epoch'; did you mean 'epochs'?"),
    ("sweep nan", ["sweep", "nan.yaml", "--dry-run"], {"nan.yaml": "images: images\nmasks: masks\nlr: .nan\n"},
     "lr must be a finite number, got nan"),
]
#: Cases run through a real subprocess (the rest call ``main`` in-process, which is the same code).
SUBPROCESS = {"lr inf", "patch size 40000", "sweep alias bomb", "predict threshold nan"}


@pytest.mark.parametrize("args, files, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_settings_in_one_line_and_writes_nothing(workspace, monkeypatch, capsys, request, args,
                                                                 files, message):
    for name, text in files.items():
        (workspace / name).write_text(text)
    before = snapshot(workspace)
    if request.node.callspec.id in SUBPROCESS:
        done = cli(*args, cwd=workspace)
        status, stderr = done.returncode, done.stderr
    else:
        monkeypatch.chdir(workspace)
        status = main([str(a) for a in args])
        stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr, stderr
    assert len(lines[0]) < 400
    assert snapshot(workspace) == before and not (workspace / "run").exists() and not (workspace / "out").exists()


def test_memory_refusal_names_a_size_that_fits(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    assert main([str(a) for a in [*TRAIN, "--patch-size", 40000]]) == 2
    line = capsys.readouterr().err.strip()
    fits = int(line.split("use --patch-size ")[1].split()[0])
    assert 16 <= fits < 40000 and fits % 16 == 0
    from napari_unet_seg.config import TrainConfig

    TrainConfig(images="images", masks="masks", out="run", device="cpu", width=0.25, patch_size=fits).validate()


API_CASES = [
    ("train typo epoch", lambda d: nus.train(epoch=1, out=d / "run"),
     "unknown option 'epoch'; did you mean 'epochs'?"),
    ("train typo patchsize", lambda d: nus.train(patchsize=64, out=d / "run"),
     "unknown option 'patchsize'; did you mean 'patch_size'?"),
    ("train epochs as text", lambda d: nus.train(epochs="1", out=d / "run"),
     "--epochs must be a whole number, got '1'"),
    ("train lr inf", lambda d: nus.train(images=d / "images", masks=d / "masks", out=d / "run", lr=math.inf),
     "--lr must be a finite number, got inf"),
    ("train seed -1", lambda d: nus.train(images=d / "images", masks=d / "masks", out=d / "run", seed=-1),
     "--seed must be in [0, 4294967295], got -1"),
    ("train config as dict", lambda d: nus.train({"epochs": 1}), "config must be a TrainConfig"),
    ("train patch 40000", lambda d: nus.train(images=d / "images", masks=d / "masks", out=d / "run", device="cpu",
                                              patch_size=40000), "needs about"),
    ("predict list of names", lambda d: nus.predict(["a", "b"]), "model must be a model object, a model file"),
    ("predict list as image", lambda d: nus.predict(d / "model.pt", ["a", "b"]),
     "the image must be a numeric numpy or dask array"),
    ("predict typo", lambda d: nus.predict(d / "model.pt", np.zeros((32, 32)), tiles=32),
     "unknown option 'tiles'; did you mean 'tile'?"),
    ("predict threshold nan", lambda d: nus.predict(d / "model.pt", np.zeros((32, 32)), threshold=math.nan),
     "threshold must be a finite number, got nan"),
    ("predict tile as text", lambda d: nus.predict(d / "model.pt", np.zeros((32, 32)), tile="64"),
     "tile must be a whole number, got '64'"),
    ("evaluate typo", lambda d: nus.evaluate(d / "model.pt", d / "images", d / "masks", overlapp=0.5),
     "did you mean 'overlap'?"),
    ("evaluate images not a path", lambda d: nus.evaluate(d / "model.pt", 3, d / "masks"),
     "images must be a folder path, got 3"),
    ("export typo", lambda d: nus.export_model(d / "model.pt", "torchscript", d / "model.pt", overwite=True),
     "did you mean 'overwrite'?"),
    ("export opset", lambda d: nus.export_model(d / "model.pt", "onnx", d / "m.onnx", opset=11),
     "opset must be >= 17, got 11"),
    ("sweep typo", lambda d: sweep(d / "x.yaml", d / "sweep", devise="cpu"), "did you mean 'device'?"),
    ("sweep engine device", lambda d: engine_sweep(d / "x.yaml", d / "sweep", device="gpu"),
     "device 'gpu' is unknown; use auto, cuda, cuda:N, mps or cpu"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api_refuses_bad_settings_with_one_user_error(workspace, call, message):
    before = snapshot(workspace)
    with pytest.raises(UserError) as info:
        call(workspace)
    text = str(info.value)
    assert message in text and "\n" not in text and len(text) < 400, text
    assert snapshot(workspace) == before and not (workspace / "run").exists() and not (workspace / "sweep").exists()


def test_a_correct_call_still_runs(workspace):
    labels = nus.predict(workspace / "model.pt", np.zeros((32, 32), np.float32), tile=32, device="cpu")
    assert labels.shape == (32, 32)
