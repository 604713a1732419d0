"""The command line end to end, through subprocesses as a user runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet_seg.cli import build_parser
from napari_unet_seg.image_io import read_image
from napari_unet_seg.inference import predict
from napari_unet_seg.sample_data import synthetic_pair


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "napari_unet_seg", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_train_predict_evaluate_info(tmp_path, synthetic_dir):
    images, masks = synthetic_dir
    run = tmp_path / "run"
    done = cli("train", "--images", images, "--masks", masks, "--out", run, "--epochs", 2, "--batch-size", 4,
               "--patch-size", 32, "--width", 0.25, "--device", "cpu", "--augment", "none", "--loss", "dice",
               "--optimizer", "adam", "--lr", 0.01, "--val-fraction", 0.25, "--scheduler", "plateau")
    assert done.returncode == 0, done.stderr
    assert "found 8 image/mask pairs" in done.stderr and "epoch 2/2" in done.stderr
    assert "post-processing stored in best.pt: threshold " in done.stderr
    assert (run / "best.pt").exists() and (run / "history.csv").exists() and (run / "curves.png").exists()

    out = tmp_path / "pred"
    done = cli("predict", "--model", run / "best.pt", "--input", images, "--output", out, "--tile", 64,
               "--overlap", 0.5, "--threshold", 0.4, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "post-processing: threshold 0.4" in done.stdout  # given, so the model's threshold is not used
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in images.iterdir())
    mask = read_image(out / written[0])
    assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    again = cli("predict", "--model", run / "best.pt", "--input", images, "--output", out)
    assert again.returncode == 2 and "exists already; pass --overwrite" in again.stderr
    same = cli("predict", "--model", run / "best.pt", "--input", images, "--output", images)
    assert same.returncode == 2 and f"--output {images}: is the input folder" in same.stderr

    scores_file = tmp_path / "scores.json"
    done = cli("evaluate", "--model", run / "best.pt", "--images", images, "--masks", masks, "--json", scores_file,
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    scores = json.loads(scores_file.read_text())
    assert set(scores) >= {"dice", "iou", "accuracy", "precision", "recall", "per_image"}
    assert f"Dice {scores['dice']:.4f}" in done.stdout

    done = cli("info", run / "best.pt")
    assert done.returncode == 0 and "unet" in done.stdout and "napari-unet-seg train" in done.stdout
    assert re.search(r"post-processing: threshold [0-9.]+.*\(validation Dice [0-9.]+ plain -> [0-9.]+ on 2 "
                     r"image\(s\)", done.stdout), done.stdout


def test_predict_applies_the_models_choice_unless_told_otherwise(tmp_path, tiny_model):
    from napari_unet_seg.model_file import load_model, save_model

    model = load_model(tiny_model)
    model.postprocess = {"threshold": 0.3, "tta": False, "keep_largest": True, "fill_holes": True}
    tuned = save_model(tmp_path / "tuned.pt", model)
    image, _ = synthetic_pair((64, 64), seed=4)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    done = cli("predict", "--model", tuned, "--input", tmp_path / "in", "--output", tmp_path / "m", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert ("post-processing: threshold 0.3, keep largest, fill holes (the model's choice for threshold, keep "
            "largest, fill holes, made on its validation images") in done.stdout
    assert np.array_equal(read_image(tmp_path / "m" / "a.png"), predict(tuned, image, device="cpu"))
    done = cli("predict", "--model", tuned, "--input", tmp_path / "in", "--output", tmp_path / "p", "--device", "cpu",
               "--threshold", 0.5, "--no-keep-largest", "--no-fill-holes")
    assert done.returncode == 0 and "post-processing: threshold 0.5\n" in done.stdout, done.stdout
    assert np.array_equal(read_image(tmp_path / "p" / "a.png"), predict(tiny_model, image, device="cpu"))


def test_predict_writes_instances_and_uncertainty_and_never_overwrites(tmp_path, tiny_model):
    import imageio.v3 as iio

    from napari_unet_seg import predict
    from napari_unet_seg.sample_data import synthetic_pair

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image, _ = synthetic_pair((64, 80), seed=5)
    iio.imwrite(inputs / "cells.v1.png", image)
    args = ["predict", "--model", tiny_model, "--input", inputs, "--output", out, "--device", "cpu",
            "--instances", "watershed", "--min-distance", 3, "--uncertainty"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cells.v1.png", "cells.v1_uncertainty.tif"]
    labels, spread = predict(tiny_model, image, device="cpu", instances="watershed", min_distance=3,
                             uncertainty=True)
    assert labels.max() >= 2
    np.testing.assert_array_equal(read_image(out / "cells.v1.png"), labels)
    written = read_image(out / "cells.v1_uncertainty.tif")
    assert written.dtype == np.float32 and written.shape == (64, 80)
    np.testing.assert_allclose(written, spread, atol=1e-6)

    (out / "cells.v1.png").unlink()
    (out / "cells.v1.tif").write_bytes(b"older")  # beyond 65535 objects the instance mask would be this TIFF
    before = (out / "cells.v1_uncertainty.tif").read_bytes()
    for existing in ("cells.v1.tif", "cells.v1_uncertainty.tif"):
        refused = cli(*args)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr
        assert f"{existing} exists already; pass --overwrite to replace it" in lines[0]
        assert not (out / "cells.v1.png").exists() and (out / "cells.v1_uncertainty.tif").read_bytes() == before
        (out / "cells.v1.tif").unlink(missing_ok=True)
    done = cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert read_image(out / "cells.v1_uncertainty.tif").dtype == np.float32 and (out / "cells.v1.png").exists()


def test_predict_writes_the_mask_file_it_is_given(tmp_path, tiny_model):
    import imageio.v3 as iio

    from napari_unet_seg import predict
    from napari_unet_seg.sample_data import synthetic_pair

    image, _ = synthetic_pair((64, 80), seed=6)
    iio.imwrite(tmp_path / "cells.png", image)
    for name in ("mask.png", "mask.tif"):
        done = cli("predict", "--model", tiny_model, "--input", tmp_path / "cells.png", "--output", tmp_path / name,
                   "--device", "cpu")
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(read_image(tmp_path / name), predict(tiny_model, image, device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png", "mask.png", "mask.tif"]
    for name in ("mask.jpg", "out/mask.bmp"):  # no folder named like an image, no lossy labels
        done = cli("predict", "--model", tiny_model, "--input", tmp_path / "cells.png", "--output", tmp_path / name,
                   "--device", "cpu")
        assert done.returncode == 2 and f"{name}: masks are written as .png or .tif" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png", "mask.png", "mask.tif"]


def test_predict_names_the_colour_image_it_segments_as_gray(tmp_path, tiny_model):
    import imageio.v3 as iio

    image, _ = synthetic_pair((64, 80), seed=6)
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "gray.png", np.stack([image] * 3, axis=-1))
    iio.imwrite(tmp_path / "in" / "tinted.png", np.stack([image, image // 2, 255 - image], axis=-1))
    done = cli("predict", "--model", tiny_model, "--input", tmp_path / "in", "--output", tmp_path / "out",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warned == ["warning: tinted.png: a colour image for a model trained on grayscale images: segmented as "
                      "gray (the mean of its channels); use a colour model if the colour matters"], done.stderr


def test_resume_continues_a_run(tmp_path, synthetic_dir):
    images, masks = synthetic_dir
    common = ["--images", images, "--masks", masks, "--out", tmp_path / "r", "--batch-size", 4, "--patch-size", 32,
              "--width", 0.25, "--device", "cpu"]
    assert cli("train", *common, "--epochs", 1).returncode == 0
    refused = cli("train", *common, "--epochs", 1)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    done = cli("train", "--out", tmp_path / "r", "--resume", "--epochs", 2)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "epoch 2/2" in done.stderr


def test_start_from_fine_tunes_a_model_keeping_its_network(tmp_path, synthetic_dir, tiny_model):
    images, masks = synthetic_dir
    done = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "ft", "--start-from", tiny_model,
               "--epochs", 1, "--batch-size", 4, "--patch-size", 32, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert re.search(r"starting model .*: val Dice [0-9.]+ on the validation images", done.stderr), done.stderr
    info = cli("info", tmp_path / "ft" / "best.pt").stdout
    assert f"fine-tuned from: {tiny_model.resolve()}" in info
    assert re.search(r"trained with: .*--start-from", info) and f"--no-plan --start-from {tiny_model.resolve()}" in info
    from napari_unet_seg.model_file import load_model

    tuned, start = load_model(tmp_path / "ft" / "best.pt"), load_model(tiny_model)
    assert tuned.config["width"] == start.config["width"] == 0.25  # the start's width, not the default 1


@pytest.mark.parametrize("args, message", [
    (["train", "--images", "x", "--masks", "y", "--start-from", "{tmp}/none.pt"], "no such file"),
    (["train", "--out", "{tmp}/r", "--resume", "--start-from", "em-membranes"], "give one of them"),
    (["train", "--images", "/no/such", "--masks", "/no/such", "--out", "{tmp}/x"], "does not exist"),
    (["train", "--model", "vnet"], "invalid choice: 'vnet'"),
    (["train", "--epochs", "many"], "invalid int value"),
    (["predict", "--model", "/no/model.pt", "--input", "x", "--output", "y"], "no such file"),
    (["evaluate", "--model", "{tmp}/junk.pt", "--images", "x", "--masks", "y"], "truncated or corrupt"),
    (["info", "{tmp}"], "is a folder"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, args, message):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    done = cli(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_parser_defaults_match_train_config():
    from napari_unet_seg.config import TrainConfig

    args = vars(build_parser().parse_args(["train"]))
    defaults = TrainConfig()
    for key, value in args.items():
        if hasattr(defaults, key) and key not in ("out", "command"):
            assert getattr(defaults, key) == value, key


def test_cli_module_imports_no_heavy_packages():
    code = "import sys, napari_unet_seg.cli; print(any(m in sys.modules for m in ('torch', 'monai', 'napari')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_ctrl_c_during_a_write_to_stderr_is_not_a_reentrant_write(tmp_path, monkeypatch):
    """The first Ctrl-C can arrive while the main thread writes a progress line to stderr: the handler's own
    line must not go through the same buffered writer (CI once died with "reentrant call inside
    <_io.BufferedWriter name='<stderr>'>")."""
    import io
    import signal
    import threading

    from napari_unet_seg.commands import _ctrl_c_cancels

    target = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 - closed below

    class Raw(io.RawIOBase):
        fired = True  # armed inside the block below

        def writable(self):
            return True

        def fileno(self):
            return target.fileno()

        def write(self, data):
            if not Raw.fired:  # Ctrl-C lands in the middle of this write
                Raw.fired = True
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            return os.write(target.fileno(), bytes(data))

    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BufferedWriter(Raw()), line_buffering=True))
    cancel = threading.Event()
    with _ctrl_c_cancels(cancel):
        Raw.fired = False
        print("epoch 1/9  loss 0.5", file=sys.stderr)
    sys.stderr.flush()
    target.close()
    written = (tmp_path / "stderr.txt").read_text()
    assert cancel.is_set() and "stopping after this batch" in written and "epoch 1/9" in written


def test_ctrl_c_stops_training_with_consistent_files(tmp_path, synthetic_dir):
    import signal

    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.reporting import read_history
    from napari_unet_seg.training import RUN_FILES

    images, masks = synthetic_dir
    run = tmp_path / "run"
    args = ["train", "--images", images, "--masks", masks, "--out", run, "--epochs", 100, "--batch-size", 4,
            "--patch-size", 32, "--width", 0.25, "--device", "cpu", "--augment", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "napari_unet_seg", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        seen = []
        for line in proc.stderr:  # wait for the first epoch line, then press Ctrl-C
            seen.append(line)
            if line.startswith("epoch 1/100"):
                break
        assert seen and seen[-1].startswith("epoch 1/100"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "(cancelled)" in out and "Traceback" not in err
    epoch = load_model(run / "last.pt").metrics["epoch"]
    history = read_history(run / "history.csv")
    assert 1 <= epoch < 100 and [row["epoch"] for row in history] == list(range(1, epoch + 1))
    assert load_model(run / "best.pt").metrics["epoch"] <= epoch
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)  # no temporary left behind


def test_sweep_dry_run_and_errors(tmp_path, synthetic_dir):
    images, masks = synthetic_dir
    config = tmp_path / "grid.yaml"
    config.write_text(f"images: {images}\nmasks: {masks}\nmodels: [unet, segnet]\nlosses: [dice]\nepochs: 1\n")
    done = cli("sweep", config, "--out", tmp_path / "s", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 2 and "segnet" in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: x\nmasks: y\nmodelz: [unet]\n")
    done = cli("sweep", bad, "--dry-run")
    assert done.returncode == 2 and "modelz" in done.stderr and "Traceback" not in done.stderr


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(capsys, pattern: str, *args) -> None:
    """The command (run in this process: no second start of torch) exits 2 with one line matching ``pattern``."""
    from napari_unet_seg.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 2, args
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), lines


@pytest.fixture
def victim(tmp_path, synthetic_dir):
    """Copies of the synthetic pairs in d/ (as training and validation folders) and a file ``f.txt``: what no
    refused command may change."""
    import shutil

    for kind, source in zip(("images", "masks", "val_images", "val_masks"), synthetic_dir * 2):
        shutil.copytree(source, tmp_path / "d" / kind)
    (tmp_path / "f.txt").write_text("keep\n")
    return tmp_path


def test_no_command_writes_into_an_input_folder(victim, capsys):
    d = victim / "d"
    before = _files(victim)
    data = ["--images", d / "images", "--masks", d / "masks", "--val-images", d / "val_images", "--val-masks",
            d / "val_masks"]
    for kind in ("images", "masks", "val_images", "val_masks"):
        _refused(capsys, rf"--out {d / kind}: is the input folder .* choose another folder", "train", *data,
                 "--out", d / kind, "--epochs", 1, "--patch-size", 32, "--no-plan", "--device", "cpu")
    sweep_file = victim / "s.yaml"
    sweep_file.write_text(f"images: {d / 'images'}\nmasks: {d / 'masks'}\nepochs: 1\nbatch_size: 2\n")
    for more in ([], ["--dry-run"]):
        _refused(capsys, rf"--out {d / 'masks'}: is the input folder", "sweep", sweep_file, "--out", d / "masks", *more)
    (victim / "u").mkdir()
    (victim / "u" / "comparison.csv").write_text("x\n")
    _refused(capsys, rf"--out {victim / 'u'}: is not empty and holds no earlier sweep", "sweep", sweep_file, "--out",
             victim / "u", "--device", "cpu")
    assert _files(victim) == {**before, "s.yaml": sweep_file.read_bytes(), "u/comparison.csv": b"x\n"}


def test_an_output_under_a_file_is_refused_before_the_work(victim, tiny_model, monkeypatch, capsys):
    import napari_unet_seg.evaluation as evaluation
    import napari_unet_seg.export as export

    def no_work(*args, **kwargs):
        raise AssertionError("the job ran before its output was checked")

    monkeypatch.setattr(evaluation, "evaluate", no_work)
    monkeypatch.setattr(export, "_check_inputs", no_work)
    before, blocked = _files(victim), victim / "f.txt"
    model, d = ["--model", tiny_model], victim / "d"
    line = rf"{blocked}/\S+: cannot write here \({blocked} is a file, not a folder\); choose another path"
    for args in [["evaluate", *model, "--images", d / "images", "--masks", d / "masks", "--json", blocked / "s.json"],
                 ["predict", *model, "--input", d / "images", "--output", blocked / "p"],
                 ["predict", *model, "--input", d / "images" / "img000.png", "--output", blocked / "p.png"],
                 ["train", "--images", d / "images", "--masks", d / "masks", "--out", blocked / "run", "--no-plan"],
                 ["demo", "--out", blocked / "demo"]]:
        _refused(capsys, line, *args, "--device", "cpu")
    for fmt, name, needs in [("torchscript", "m.pt", "torch"), ("onnx", "m.onnx", "onnxruntime"),
                             ("bioimageio", "pkg", "bioimageio.spec"), ("bioimageio", "p.zip", "bioimageio.spec")]:
        if export._installed(needs):  # else the missing package is the one line
            _refused(capsys, line, "export", *model, "--format", fmt, "--out", blocked / name)
    assert _files(victim) == before


def test_predict_keeps_its_output_out_of_the_input_listing(victim, tiny_model, capsys):
    import zarr

    from napari_unet_seg.cli import main
    from napari_unet_seg.pairing import list_images

    folder = victim / "tif"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", read_image(victim / "d" / "images" / "img000.png"))
    zarr.open(str(victim / "z.zarr"), mode="w", shape=(64, 64), dtype="uint8")[:] = 7
    before = _files(victim)
    model = ["predict", "--model", tiny_model, "--device", "cpu", "--uncertainty"]
    for source, output, pattern in [(folder, folder, "is the input folder"),  # a.png would join a.tif
                                    (folder, folder / "p.zarr", "would take p.zarr for one of its images"),
                                    (victim / "z.zarr", victim / "z.zarr" / "p", "lies in the input")]:
        _refused(capsys, rf"--output {output}: .*{pattern}", *model, "--input", source, "--output", output)
    assert _files(victim) == before
    assert main([str(a) for a in [*model, "--input", folder, "--output", folder / "pred"]]) == 0  # not listed
    assert list_images(folder) == [folder / "a.tif"] and (folder / "pred" / "a.png").is_file()


def test_export_never_replaces_a_package_folder_holding_the_test_image(victim, tiny_model, capsys):
    package = victim / "pkg"
    package.mkdir()
    (package / "rdf.yaml").write_text("old package\n")
    (package / "test.png").write_bytes((victim / "d" / "images" / "img000.png").read_bytes())
    before = _files(victim)
    _refused(capsys, rf"--out {package}: holds the --test-image and would be replaced", "export", "--model", tiny_model,
             "--format", "bioimageio", "--out", package, "--test-image", package / "test.png", "--overwrite")
    assert _files(victim) == before


def test_a_configs_command_line_parses_back_to_the_same_settings():
    from napari_unet_seg.cli import build_parser
    from napari_unet_seg.config import TrainConfig

    config = TrainConfig(images="my data/images", masks="m", out="runs/x", model="segnet", lr=1e-4, resize=256,
                         amp=False, overwrite=True, augment="none", epochs=7)
    words = config.as_command().split(" ", 1)[1]
    import shlex

    args = vars(build_parser().parse_args(shlex.split(words)))
    parsed = TrainConfig(**{k: v for k, v in args.items() if k not in ("command", "resume")})
    assert parsed == config


def test_the_console_shows_this_packages_warnings_not_its_libraries(monkeypatch, capsys):
    import warnings

    from napari_unet_seg import commands

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    commands._warnings_to_console()
    ours = str(Path(commands.__file__).with_name("training.py"))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as numcodecs sets it for its own notice
        warnings.warn_explicit("crc32c usage is deprecated", DeprecationWarning, "numcodecs/__init__.py", 106)
        warnings.warn_explicit("non-tuple sequence for indexing", UserWarning, "monai/transforms/utils.py", 1)
        warnings.warn_explicit("2 masks are empty", UserWarning, ours, 1)
    assert capsys.readouterr().err == "warning: 2 masks are empty\n"
