"""Bad input, end to end: each case as a user meets it, through the public API and the command line.

The readers, the pairing rules and the model-file checks have unit tests beside their modules; here
every case goes through ``train``/``predict`` and ``python -m napari_unet_seg``: one ``UserError`` line
(exit status 2, no traceback), a warning where the job can go on, and no file lost.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_unet_seg import cli as cli_module
from napari_unet_seg.errors import UserError
from napari_unet_seg.events import Epoch
from napari_unet_seg.image_io import read_image
from napari_unet_seg.inference import predict
from napari_unet_seg.model_file import FORMAT_VERSION, SegmentationModel, load_model, save_model
from napari_unet_seg.models import build_network, network_kwargs
from napari_unet_seg.reporting import read_history
from napari_unet_seg.sample_data import synthetic_pair
from napari_unet_seg.training import RUN_FILES, train, train_steps

from cli_helpers import cli, one_line

FAST = dict(epochs=1, batch_size=4, patch_size=16, width=0.125, augment="none", device="cpu")
FAST_ARGS = ["--epochs", "1", "--batch-size", "4", "--patch-size", "16", "--width", "0.125", "--augment", "none",
             "--device", "cpu"]
DIR = object()  # a folder where a file is expected

IMAGE, MASK = synthetic_pair((32, 32), seed=1, objects=2)


def _png(array: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", array, extension=".png")


def _layout(root: Path, files: dict) -> tuple[Path, Path]:
    """Write ``{"i/a.png": array | bytes | DIR}`` under ``root``; return the ``i`` and ``m`` folders."""
    for folder in ("i", "m"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if content is DIR:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif path.suffix == ".tif":
            tifffile.imwrite(path, content, photometric="minisblack")
        else:
            iio.imwrite(path, content)
    return root / "i", root / "m"




colour_mask = np.stack([MASK, np.zeros_like(MASK), np.zeros_like(MASK)], axis=-1)

# (case, files, extra options, what the one error line says)
BAD_FOLDERS = [
    ("empty images folder", {"m/a.png": MASK}, {}, r"images folder .*: holds no image file"),
    ("image without mask", {"i/a.png": IMAGE, "i/b.png": IMAGE, "m/a.png": MASK}, {},
     r"1 image\(s\) without mask: b.png.*--skip-unpaired"),
    ("mask without image", {"i/a.png": IMAGE, "m/a.png": MASK, "m/c_mask.png": MASK}, {},
     r"1 mask\(s\) without image: c_mask.png"),
    ("two images with one stem", {"i/a.png": IMAGE, "i/a.tif": IMAGE, "m/a.png": MASK}, {},
     r"a.png and a.tif have the same stem 'a'; keep one"),
    ("image and mask sizes differ", {"i/a.png": IMAGE, "m/a.png": MASK[:, :24]}, {},
     r"a.png: image is 32x32 \(Y x X\) but its mask is 32x24 \(Y x X\)"),
    ("mask values beyond --classes", {"i/a.png": IMAGE, "m/a.png": (MASK > 0).astype(np.uint8) * 5},
     {"classes": 3}, r"values \[5\] outside the class ids 0..2; check --classes 3"),
    ("colour mask", {"i/a.png": IMAGE, "m/a.png": colour_mask}, {}, r"a.png \(mask\): is a colour \(RGB\) mask"),
    ("truncated image", {"i/a.png": _png(IMAGE)[:60], "m/a.png": MASK}, {}, r"a.png: cannot be read.*truncated"),
    ("corrupt image", {"i/a.tif": b"II*\x00 garbage, not a TIFF", "m/a.png": MASK}, {},
     r"a.tif: .*corrupt, replace it"),
    ("0-byte mask", {"i/a.png": IMAGE, "m/a.png": b""}, {}, r"a.png: the file is empty \(0 bytes\)"),
    ("folder named like an image", {"i/a.png": IMAGE, "i/b.png": DIR, "m/a.png": MASK, "m/b.png": MASK}, {},
     r"1 mask\(s\) without image: b.png"),
    ("unsupported file type", {"i/a.gif": b"GIF89a", "m/a.png": MASK}, {},
     r"holds no image file .*found only other types \(a.gif\)"),
    ("4D image", {"i/a.tif": np.zeros((2, 3, 32, 32), np.uint8), "m/a.png": MASK}, {},
     r"image shape \(2, 3, 32, 32\) is not one 2D gray or RGB image"),
    ("5D image", {"i/a.tif": np.zeros((1, 2, 3, 32, 32), np.uint8), "m/a.png": MASK}, {},
     r"image shape \(1, 2, 3, 32, 32\) is not one 2D"),
    ("stack as mask", {"i/a.png": IMAGE, "m/a.tif": np.zeros((3, 32, 32), np.uint8)}, {},
     r"a mask must be one 2D image"),
]


@pytest.mark.parametrize("files, options, pattern", [c[1:] for c in BAD_FOLDERS], ids=[c[0] for c in BAD_FOLDERS])
def test_bad_training_folders_raise_one_line(tmp_path, files, options, pattern):
    images, masks = _layout(tmp_path, files)
    with pytest.raises(UserError, match=pattern) as info:
        train(images=images, masks=masks, out=tmp_path / "run", **{**FAST, **options})
    assert "\n" not in str(info.value)
    assert not any((tmp_path / "run" / name).exists() for name in RUN_FILES)


@pytest.mark.parametrize("files, options, pattern", [c[1:] for c in BAD_FOLDERS], ids=[c[0] for c in BAD_FOLDERS])
def test_bad_training_folders_exit_2_on_the_command_line(tmp_path, files, options, pattern):
    images, masks = _layout(tmp_path, files)
    extra = [a for k, v in options.items() for a in (f"--{k}", v)]
    done = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "run", *FAST_ARGS, *extra)
    one_line(done, pattern)


def test_questionable_data_trains_with_warnings_on_the_command_line(tmp_path):
    # All-background masks (nothing to learn), images smaller than the patch, fewer patches than a batch.
    blank = np.zeros((20, 20), np.uint8)
    images, masks = _layout(tmp_path, {"i/a.png": IMAGE[:20, :20], "i/b.png": IMAGE[:20, :20],
                                       "m/a.png": blank, "m/b.png": blank})
    done = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "run", *FAST_ARGS,
               "--patch-size", "64", "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    assert "warning: every mask is all background: there is nothing to learn" in done.stderr
    assert "warning: --patch-size 64 is larger than every image" in done.stderr
    assert "warning: --batch-size 16 is larger than the 1 patches" in done.stderr
    assert load_model(tmp_path / "run" / "best.pt").metrics["epoch"] == 1


@pytest.mark.parametrize("case", ["NaN and inf", "all NaN", "constant", "single pixel"])
def test_odd_float_constant_and_tiny_images_train_and_predict(tmp_path, case):
    labels = (MASK > 0).astype(np.uint8)
    image = IMAGE.astype(np.float32)
    if case == "NaN and inf":
        image[0, :4], image[1, :3], image[2, :2] = np.nan, np.inf, -np.inf
    elif case == "all NaN":
        image[:] = np.nan
    elif case == "constant":
        image[:] = 7
    else:
        image, labels = np.array([[5.0]], np.float32), np.array([[1]], np.uint8)
    images, masks = _layout(tmp_path, {"i/a.tif": image, "i/b.tif": image, "m/a.tif": labels, "m/b.tif": labels})
    result = train(images=images, masks=masks, out=tmp_path / "run", **FAST)
    row = result.history[-1]
    assert all(np.isfinite(row[k]) for k in ("train_loss", "val_loss", "val_dice"))
    out = predict(result.best, image, device="cpu")
    assert out.shape == image.shape and set(np.unique(out)) <= {0, 1}


def _model(channels: int = 1) -> SegmentationModel:
    kwargs = network_kwargs("unet", width=0.125)
    net = build_network("unet", channels, 1, **kwargs).eval()
    return SegmentationModel(net, {"name": "unet", "kwargs": kwargs}, channels, 2,
                             {"method": "percentile", "low": 1.0, "high": 99.8}, {"patch_size": 16})


def test_colour_model_on_a_grayscale_layer_is_refused():
    with pytest.raises(UserError, match="is grayscale but the model expects colour \\(RGB\\) input") as info:
        predict(_model(channels=3), IMAGE, device="cpu")
    assert "\n" not in str(info.value)
    assert predict(_model(channels=3), np.stack([IMAGE] * 3, axis=-1), device="cpu").shape == IMAGE.shape


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def _bad_model(kind: str, folder: Path) -> Path:
    path = save_model(folder / "good.pt", _model(channels=3 if kind == "colour model" else 1))
    if kind == "truncated":
        (folder / "bad.pt").write_bytes(path.read_bytes()[:1000])
    elif kind == "future version":
        payload = torch.load(path, weights_only=True)
        payload["format_version"] = FORMAT_VERSION + 1
        torch.save(payload, folder / "bad.pt")
    elif kind == "runs code on load":
        torch.save({"format": "napari-unet-seg", "format_version": 1, "metadata": "{}", "state_dict": {},
                    "payload": _Evil()}, folder / "bad.pt")
    else:
        path.rename(folder / "bad.pt")
    return folder / "bad.pt"


@pytest.mark.parametrize("kind, pattern", [
    ("truncated", r"bad.pt: cannot be read .*truncated or corrupt"),
    ("future version", r"bad.pt: is format version 2, newer than .*; upgrade napari-unet-seg"),
    ("runs code on load", r"bad.pt: refused, it holds Python objects that could run code"),
    ("colour model", r"is grayscale but the model expects colour \(RGB\) input"),
])
def test_bad_model_files_are_refused_on_the_command_line(tmp_path, kind, pattern):
    model = _bad_model(kind, tmp_path)
    iio.imwrite(tmp_path / "gray.png", IMAGE)
    done = cli("predict", "--model", model, "--input", tmp_path / "gray.png", "--output", tmp_path / "out",
               "--device", "cpu", cwd=tmp_path)
    one_line(done, pattern)
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unreadable_inputs_on_the_predict_command_line(tmp_path):
    save_model(tmp_path / "m.pt", _model())
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    tifffile.imwrite(tmp_path / "5d.tif", np.zeros((1, 2, 3, 16, 16), np.uint8), photometric="minisblack")
    for source, pattern in [(tmp_path / "folder.png", r"input folder .*folder.png: holds no image file"),
                            (tmp_path / "a.gif", r"unsupported file type .gif"),
                            (tmp_path / "5d.tif", r"shape \(1, 2, 3, 16, 16\) is not one 2D")]:
        done = cli("predict", "--model", tmp_path / "m.pt", "--input", source, "--output", tmp_path / "o",
                   "--device", "cpu")
        one_line(done, pattern)


def test_output_folder_that_cannot_be_created(tmp_path, synthetic_dir):
    # A regular file where a folder is needed: refused even for root, for whom chmod changes nothing.
    (tmp_path / "file").write_text("keep me")
    images, masks = synthetic_dir
    done = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "file" / "run", *FAST_ARGS)
    one_line(done, r"--out .*run: cannot write here \(.*file is a file, not a folder\); choose another path")
    assert (tmp_path / "file").read_text() == "keep me"


def _predict_argv(model: Path, images: Path, out: Path, *more: str) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(images), "--output", str(out), "--device", "cpu",
            "--tile", "32", *more]


def test_unwritable_output_folder_is_reported(tmp_path, monkeypatch, capsys, synthetic_dir):
    import napari_unet_seg.image_io as image_io

    save_model(tmp_path / "m.pt", _model())

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(image_io.tempfile, "mkstemp", refuse)  # as a read-only folder does for a normal user
    assert cli_module.main(_predict_argv(tmp_path / "m.pt", synthetic_dir[0], tmp_path / "out")) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "cannot write here (Permission denied); choose another output folder" in line


def _full_disk(monkeypatch, fails) -> None:
    """Atomic writes to a ``path`` for which ``fails(path)`` end as on a full disk (ENOSPC)."""
    import napari_unet_seg.image_io as image_io

    real = os.replace

    def replace(tmp, target):
        if fails(Path(target)):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, target)

    monkeypatch.setattr(image_io.os, "replace", replace)


def test_full_disk_while_predicting_keeps_earlier_masks(tmp_path, monkeypatch, capsys, synthetic_dir):
    save_model(tmp_path / "m.pt", _model())
    out = tmp_path / "out"
    assert cli_module.main(_predict_argv(tmp_path / "m.pt", synthetic_dir[0], out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    first = min(before)
    _full_disk(monkeypatch, lambda target: target.name != first)  # the first mask fits, the second does not
    assert cli_module.main(_predict_argv(tmp_path / "m.pt", synthetic_dir[0], out, "--overwrite")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "writing failed (No space left on device); check free disk space" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, none half-written
    assert all(read_image(out / name).shape == (64, 64) for name in before)


@pytest.mark.parametrize("failing", ["every file", "history.csv"])
def test_full_disk_while_training_keeps_the_last_good_epoch(tmp_path, monkeypatch, synthetic_dir, failing):
    images, masks = synthetic_dir
    run = tmp_path / "run"
    steps = train_steps(images=images, masks=masks, out=run, **{**FAST, "epochs": 3, "patch_size": 32})
    for event in steps:
        if isinstance(event, Epoch):
            break
    kept = {name: (run / name).read_bytes() for name in RUN_FILES}
    _full_disk(monkeypatch, lambda target: failing == "every file" or target.name == failing)
    with pytest.raises(UserError, match=r"(best.pt|last.pt|history.csv): writing failed \(No space left on "
                                        r"device\); check free disk space"):
        for event in steps:
            assert not isinstance(event, Epoch)
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)  # no temporary left behind
    assert (run / "history.csv").read_bytes() == kept["history.csv"]
    if failing == "every file":
        assert {name: (run / name).read_bytes() for name in RUN_FILES} == kept
        assert load_model(run / "last.pt").metrics["epoch"] == 1
    else:  # the model files of epoch 2 were complete; resuming rewrites the history from last.pt
        assert load_model(run / "last.pt").metrics["epoch"] == 2
        monkeypatch.undo()
        train(out=run, resume=True, epochs=3)
        assert [row["epoch"] for row in read_history(run / "history.csv")] == [1, 2, 3]

