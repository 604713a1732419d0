"""Issue 14, classes 1, 2, 5 and 6: files, readers and model files, as a careful user meets them.

Every case asserts the exit status (the command line through a subprocess where it matters) or the
``UserError``, a single message line with no traceback, and that every file the user had is
byte-identical afterwards (the whole tmp folder is hashed before and after).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_unet_seg.errors import UserError
from napari_unet_seg.image_io import atomic_write, read_image, read_image_layout, read_mask
from napari_unet_seg.model_file import load_model, save_model
from napari_unet_seg.pairing import pair_files
from napari_unet_seg.sample_data import synthetic_pair

from cli_helpers import cli, one_line, snapshot

IMAGE, MASK = synthetic_pair((48, 48), seed=3, objects=2)




def assert_kept(before: dict[str, str], root: Path) -> None:
    after = snapshot(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or lost: {changed}"



def raises_one_line(pattern: str, call, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=pattern) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "pip install" not in text and "weights_only" not in text
    return text


@pytest.fixture
def work(tmp_path, tiny_model) -> Path:
    """A folder with the model, three images and their masks (copies: the test may hash all of it)."""
    shutil.copy(tiny_model, tmp_path / "model.pt")
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for index in range(2):
        image, mask = synthetic_pair((48, 48), seed=index, objects=2)
        iio.imwrite(tmp_path / "images" / f"im{index}.png", image)
        iio.imwrite(tmp_path / "masks" / f"im{index}.png", (mask > 0).astype(np.uint8) * 255)
    return tmp_path


# ------------------------------------------------------------------------------------ 1. data loss


@pytest.mark.parametrize("target", ["model.pt", "images/im0.png", "masks/im1.png"])
def test_evaluate_json_never_replaces_an_input_even_with_overwrite(work, target):
    before = snapshot(work)
    done = cli("evaluate", "--model", work / "model.pt", "--images", work / "images", "--masks", work / "masks",
               "--json", work / target, "--overwrite", "--device", "cpu")
    one_line(done, r"--json .*: is the input .* would be replaced")
    assert_kept(before, work)


def test_evaluate_json_refuses_an_existing_file_and_keeps_its_mode_with_overwrite(work):
    (work / "scores.json").write_text("{}")
    os.chmod(work / "scores.json", 0o640)
    before = snapshot(work)
    args = ("evaluate", "--model", work / "model.pt", "--images", work / "images", "--masks", work / "masks",
            "--json", work / "scores.json", "--device", "cpu")
    one_line(cli(*args), r"--json .*scores.json: exists already; pass --overwrite")
    assert_kept(before, work)
    done = cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "scores.json").read_text())["count"] == 2
    assert stat.S_IMODE((work / "scores.json").stat().st_mode) == 0o640


@pytest.mark.parametrize("other", ["a.jpg", "a.tif"])
def test_predict_refuses_two_inputs_that_would_write_one_mask(work, other):
    folder = work / "mixed"
    folder.mkdir()
    iio.imwrite(folder / "a.png", IMAGE)
    if other.endswith(".tif"):
        tifffile.imwrite(folder / other, IMAGE)
    else:
        iio.imwrite(folder / other, IMAGE)
    before = snapshot(work)
    done = cli("predict", "--model", work / "model.pt", "--input", folder, "--output", work / "out", "--device", "cpu")
    pair = " and ".join(sorted(["a.png", other]))
    one_line(done, rf"{pair} would both write a.png; rename one")
    assert not (work / "out").exists()
    assert_kept(before, work)


def test_export_onto_the_model_is_refused_even_with_overwrite(work):
    before = snapshot(work)
    done = cli("export", "--model", work / "model.pt", "--format", "torchscript", "--out", work / "model.pt",
               "--overwrite", "--no-check")
    one_line(done, r"--out .*model.pt: is the input .* would be replaced")
    done = cli("export", "--model", work / "model.pt", "--format", "torchscript", "--out", work / "images/im0.png",
               "--test-image", work / "images/im0.png", "--overwrite", "--no-check")
    one_line(done, r"is the --test-image and would be replaced")
    assert_kept(before, work)


def test_export_python_api_refuses_the_model_as_out(work):
    from napari_unet_seg.export import export_model

    before = snapshot(work)
    raises_one_line("is the input", export_model, work / "model.pt", "torchscript", work / "model.pt",
                    overwrite=True, check=False)
    assert_kept(before, work)


def test_files_are_written_with_the_umask_and_overwrite_keeps_the_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        written = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("one"))
        assert stat.S_IMODE(written.stat().st_mode) == 0o644
        os.chmod(written, 0o600)
        atomic_write(written, lambda tmp: Path(tmp).write_text("two"))
        assert stat.S_IMODE(written.stat().st_mode) == 0o600 and written.read_text() == "two"
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write(tmp_path / "b.txt", lambda t: Path(t).write_text("x")).stat().st_mode) \
            == 0o600
    finally:
        os.umask(previous)


def test_disk_full_while_saving_a_model_is_one_line_and_keeps_the_old_file(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "model.pt"
    shutil.copy(tiny_model, path)
    model = load_model(path)
    before = snapshot(tmp_path)

    def full(*args, **kwargs):  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 512 vs 448; "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    text = raises_one_line(r"model.pt: writing failed .*free disk space", save_model, path, model)
    assert "previous file there is unchanged" in text
    assert_kept(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left


def test_a_bug_in_a_writer_is_not_called_a_disk_problem(tmp_path):
    def broken(tmp):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- 2. image layouts


def _png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit colour or gray+alpha PNG (Pillow cannot write one): IHDR, one zlib IDAT of unfiltered rows, IEND."""
    height, width, channels = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_gray_plus_alpha_png_reads_as_gray(tmp_path):
    gray = IMAGE
    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), mode="LA").save(tmp_path / "la.png")
    array, colour = read_image_layout(tmp_path / "la.png")
    assert array.shape == gray.shape and not colour
    assert np.array_equal(array, gray)


def test_channel_first_rgb_tiff_reads_as_colour(tmp_path):
    rgb = np.stack([IMAGE, IMAGE // 2, 255 - IMAGE], axis=-1)
    tifffile.imwrite(tmp_path / "cf.tif", np.moveaxis(rgb, -1, 0))  # tifffile stores it as planar RGB
    array, colour = read_image_layout(tmp_path / "cf.tif")
    assert colour and np.array_equal(array, rgb)


def test_two_channel_tiff_is_refused_with_its_shape(tmp_path):
    before = snapshot(tmp_path)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([IMAGE, IMAGE], axis=-1))
    raises_one_line(r"shape \(48, 48, 2\) has 2 channels, neither gray nor RGB; save it as a gray \(Y, X\) or an "
                    r"RGB \(Y, X, 3\) image \(one channel per file", read_image, tmp_path / "two.tif")
    # a two-channel confocal stack (ImageJ ZCYX) is told to split its channels into gray stacks
    stack = np.stack([np.stack([IMAGE, IMAGE // 2])] * 4)
    tifffile.imwrite(tmp_path / "zcyx.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    raises_one_line(r"shape \(4, 48, 48, 2\) has 2 channels, neither gray nor RGB; save it as a gray \(Z, Y, X\) "
                    r"stack or an RGB \(Z, Y, X, 3\) stack \(one channel per file", read_image, tmp_path / "zcyx.tif")
    assert_kept(before, tmp_path)


@pytest.mark.parametrize("mode, space", [("CMYK", "CMYK"), ("LAB", "CIELab")])
def test_tiffs_in_other_colour_spaces_are_refused_not_read_as_rgb(tmp_path, mode, space):
    rgb = np.stack([IMAGE, IMAGE // 2, 255 - IMAGE], axis=-1)
    Image.fromarray(rgb).convert(mode).save(tmp_path / "other.tif")
    assert tifffile.TiffFile(tmp_path / "other.tif").pages[0].photometric != 2
    raises_one_line(rf"other.tif: is a {space} TIFF, not RGB; save it as an RGB or a gray image", read_image,
                    tmp_path / "other.tif")


def test_tiny_rgb_image_is_predicted_as_one_colour_image(work):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(work / "tiny.png")
    assert read_image_layout(work / "tiny.png")[1]
    done = cli("predict", "--model", work / "model.pt", "--input", work / "tiny.png", "--output", work / "out",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert read_image(work / "out" / "tiny.png").shape == (4, 4)


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16_bit_colour_png_keeps_its_values(tmp_path, channels):
    values = np.random.default_rng(0).integers(0, 1000, (8, 9, channels)).astype(np.uint16)
    _png16(tmp_path / "c16.png", values)
    image, colour = read_image_layout(tmp_path / "c16.png")
    expected = values[..., 0] if channels == 2 else values  # gray+alpha: the gray
    assert colour == (channels != 2) and image.dtype == np.uint16 and np.array_equal(image, expected)


def test_16_bit_gray_png_keeps_its_values(tmp_path):
    values = np.random.default_rng(0).integers(0, 1000, (8, 9)).astype(np.uint16)
    iio.imwrite(tmp_path / "g16.png", values)
    assert np.array_equal(read_image(tmp_path / "g16.png"), values)


def test_multipage_tiff_with_pages_of_different_sizes_is_refused(work):
    with tifffile.TiffWriter(work / "pages.tif") as tif:
        tif.write(IMAGE)
        tif.write(IMAGE[:32, :40])
    before = snapshot(work)
    done = cli("predict", "--model", work / "model.pt", "--input", work / "pages.tif", "--output", work / "out",
               "--device", "cpu")
    one_line(done, r"pages.tif: holds 2 images of different sizes \(48x48, 32x40\); .*save each as its own file")
    assert_kept(before, work)


def test_multipage_tiff_of_equal_pages_reads_every_page(tmp_path):
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(IMAGE, metadata=None)
        tif.write(255 - IMAGE, metadata=None)
    array, colour = read_image_layout(tmp_path / "pages.tif")
    assert array.shape == (2, 48, 48) and not colour
    assert np.array_equal(array[1], 255 - IMAGE)


def test_exif_orientation_of_a_jpeg_is_honoured(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255  # a bright band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(wide).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    array = read_image(tmp_path / "turned.jpg")
    assert array.shape == (40, 20, 3)
    assert array[:10].mean() > 200 and array[-10:].mean() < 50  # the band is on top, as a viewer shows it


def test_a_valid_png_above_pillows_bomb_limit_reads(tmp_path, monkeypatch):
    iio.imwrite(tmp_path / "big.png", IMAGE)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48x48 is then "a decompression bomb" to Pillow
    assert np.array_equal(read_image(tmp_path / "big.png"), IMAGE)
    assert Image.MAX_IMAGE_PIXELS == 100  # the limit is lifted for our read only


def test_masks_above_pillows_limit_are_written_as_tiff_and_read_back(tmp_path, monkeypatch):
    from napari_unet_seg import image_io

    labels = (MASK > 0).astype(np.uint8)
    assert image_io.write_mask(tmp_path / "small.png", labels).suffix == ".png"
    monkeypatch.setattr(image_io, "PNG_MAX_PIXELS", 48 * 48 - 1)
    written = image_io.write_mask(tmp_path / "large.png", labels)
    assert written.name == "large.tif" and np.array_equal(read_mask(written), labels)
    assert image_io.mask_suffix(2, 1, 48 * 48) == ".tif" and image_io.mask_suffix(2, 1, 48 * 48 - 1) == ".png"


def test_a_non_image_with_an_image_suffix_gives_no_install_advice(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"\x00\x01not really a picture" * 20)
    raises_one_line(r"fake.jpg: cannot be read as an image .*replace it", read_image, tmp_path / "fake.jpg")


# ----------------------------------------------------------------------------------------- masks


def test_jpeg_mask_noise_is_thresholded_with_a_warning_naming_file_and_fraction(tmp_path):
    binary = (MASK > 0).astype(np.uint8) * 255
    iio.imwrite(tmp_path / "m.jpg", binary, quality=60)
    noisy = iio.imread(tmp_path / "m.jpg")
    assert ((noisy > 0) != (binary > 0)).mean() > 0.01  # the noise ">0" would call foreground
    with pytest.warns(UserWarning, match=r"m.jpg: JPEG mask with compression noise, thresholded at .*% of its pixels"):
        cleaned = read_mask(tmp_path / "m.jpg")
    assert ((cleaned > 0) != (binary > 0)).mean() < 0.01
    tifffile.imwrite(tmp_path / "j.tif", binary, compression="jpeg")  # a TIFF compressed as a JPEG is one too
    assert ((tifffile.imread(tmp_path / "j.tif") > 0) != (binary > 0)).any()
    with pytest.warns(UserWarning, match=r"j.tif: JPEG mask with compression noise"):
        assert ((read_mask(tmp_path / "j.tif") > 0) != (binary > 0)).mean() < 0.01
    tifffile.imwrite(tmp_path / "lzw.tif", binary, compression="zlib")  # lossless: read as it is
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert np.array_equal(read_mask(tmp_path / "lzw.tif"), binary)


def test_continuous_and_image_like_masks_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "prob.tif", (MASK > 0).astype(np.float32) * 0.8 + 0.1)
    raises_one_line(r"prob.tif: holds continuous values \(e.g. 0.1\), not class ids", read_mask, tmp_path / "prob.tif")
    iio.imwrite(tmp_path / "photo.png", IMAGE)
    raises_one_line(r"photo.png: looks like an image, not a mask \(\d+ levels", read_mask, tmp_path / "photo.png")
    rgb = np.stack([IMAGE, 255 - IMAGE, IMAGE // 2], axis=-1)
    iio.imwrite(tmp_path / "colour.png", rgb)
    raises_one_line(r"colour.png: looks like an image, not a mask", read_mask, tmp_path / "colour.png")
    iio.imwrite(tmp_path / "photo.jpg", rgb)
    raises_one_line(r"photo.jpg: a JPEG of \d+ grey levels, not a two-level mask", read_mask, tmp_path / "photo.jpg")


def test_instance_label_masks_are_still_labels(tmp_path):
    from skimage.measure import label

    ids = label(MASK > 0).astype(np.uint16) * 7
    iio.imwrite(tmp_path / "ids.png", ids)
    assert np.array_equal(read_mask(tmp_path / "ids.png"), ids)
    many = (np.arange(64 * 64).reshape(64, 64) // 8 % 300).astype(np.uint16)  # 300 ids in runs of 8 pixels
    iio.imwrite(tmp_path / "many.png", many)
    assert np.array_equal(read_mask(tmp_path / "many.png"), many)
    tiny = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]], np.uint8)  # a few ids, every neighbour differs
    iio.imwrite(tmp_path / "tiny.png", tiny)
    assert np.array_equal(read_mask(tmp_path / "tiny.png"), tiny)


def test_indexed_palette_mask_reads_as_its_ids(tmp_path):
    palette = Image.fromarray((MASK > 0).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # id 1 drawn red
    palette.save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png"), (MASK > 0).astype(np.uint8))
    array, colour = read_image_layout(tmp_path / "p.png")  # as an image it is the colours
    assert colour and array[..., 0].max() == 255


def test_images_and_masks_the_same_folder_is_one_line(work):
    before = snapshot(work)
    raises_one_line(r"are the same folder, so each image would pair with itself", pair_files, work / "images",
                    work / "images")
    done = cli("evaluate", "--model", work / "model.pt", "--images", work / "images", "--masks", work / "images",
               "--device", "cpu")
    one_line(done, r"are the same folder")
    assert_kept(before, work)


def test_images_given_as_masks_are_refused_on_the_command_line(work):
    before = snapshot(work)
    other = work / "copies"
    shutil.copytree(work / "images", other)
    done = cli("evaluate", "--model", work / "model.pt", "--images", work / "images", "--masks", other,
               "--device", "cpu")
    one_line(done, r"im0.png: looks like an image, not a mask")
    assert_kept(before, work)


# ------------------------------------------------------------------------------------ 3. model files


def _torchscript(path: Path, source: Path) -> None:
    from napari_unet_seg.export import export_model

    export_model(source, "torchscript", path, check=False)


def _bioimageio_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", "format_version: 0.5.4\ntype: model\n")
        archive.writestr("weights.onnx", b"\x08\x07")


def _onnx(path: Path) -> None:
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.5.0" + bytes(64))


FOREIGN = [
    ("onnx", "m.onnx", lambda p, src: _onnx(p), r"an ONNX model \(run it with onnxruntime\)"),
    ("torchscript", "ts.pt", _torchscript, r"a TorchScript export \(load it with torch.jit.load\)"),
    ("bioimageio", "pkg.zip", lambda p, src: _bioimageio_zip(p), r"a bioimage.io package"),
    ("json", "m.json", lambda p, src: p.write_text('{"a": 1}'), r"JSON text"),
    ("text", "notes.pt", lambda p, src: p.write_text("hi\n"), r"text; napari-unet-seg loads"),
    ("png", "mask.png", lambda p, src: iio.imwrite(p, np.zeros((8, 8), np.uint8)), r"a PNG image"),
    ("tiff", "model.tif", lambda p, src: tifffile.imwrite(p, np.zeros((8, 8), np.uint8)), r"a TIFF image"),
    ("state dict", "sd.pt", lambda p, src: torch.save(load_model(src).network.state_dict(), p),
     r"a plain state dict \(weights without architecture"),
]


@pytest.mark.parametrize("name, make, pattern", [c[1:] for c in FOREIGN], ids=[c[0] for c in FOREIGN])
def test_files_that_are_not_our_model_are_named_for_what_they_are(tmp_path, tiny_model, name, make, pattern):
    make(tmp_path / name, tiny_model)
    text = raises_one_line(rf"is not a napari-unet-seg model file but {pattern}", load_model, tmp_path / name)
    assert "could run code" not in text and "corrupt" not in text


def test_our_own_torchscript_export_as_model_on_the_command_line(work):
    _torchscript(work / "ts.pt", work / "model.pt")
    before = snapshot(work)
    done = cli("predict", "--model", work / "ts.pt", "--input", work / "images", "--output", work / "out")
    one_line(done, r"ts.pt: is not a napari-unet-seg model file but a TorchScript export")
    assert_kept(before, work)


def _tampered(tmp_path: Path, source: Path, change) -> Path:
    payload = torch.load(source, weights_only=True)
    meta = json.loads(payload["metadata"])
    change(meta)
    payload["metadata"] = json.dumps(meta)
    torch.save(payload, tmp_path / "tampered.pt")
    return tmp_path / "tampered.pt"


TAMPERED = [
    ("no normalization", lambda m: m.pop("normalization"), r"field normalization is None"),
    ("config not a mapping", lambda m: m.update(config=[1, 2]), r"field config is \[1, 2\], expected a mapping"),
    ("resize -5", lambda m: m["config"].update(resize=-5), r"field config.resize is -5, expected a positive"),
    ("resize abc", lambda m: m["config"].update(resize="abc"), r"field config.resize is 'abc'"),
    ("one class", lambda m: m.update(num_classes=1), r"field num_classes is 1, expected a whole number from 2"),
    ("bad method", lambda m: m["normalization"].update(method="zscore"), r"field normalization is .*zscore"),
]


@pytest.mark.parametrize("change, pattern", [c[1:] for c in TAMPERED], ids=[c[0] for c in TAMPERED])
def test_tampered_metadata_names_the_field(tmp_path, tiny_model, change, pattern):
    path = _tampered(tmp_path, tiny_model, change)
    raises_one_line(rf"tampered.pt: {pattern}.*changed or damaged", load_model, path)


def test_tampered_metadata_on_the_command_line(work):
    path = _tampered(work, work / "model.pt", lambda m: m["config"].update(resize="abc"))
    before = snapshot(work)
    one_line(cli("info", path), r"field config.resize is 'abc'")
    assert_kept(before, work)


def test_messages_carry_no_third_party_advice(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": "napari-unet-seg"}, buffer)
    (tmp_path / "cut.pt").write_bytes(buffer.getvalue()[:40])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raises_one_line(r"cut.pt: cannot be read", load_model, tmp_path / "cut.pt")


def test_disk_full_during_export_on_the_command_line_keeps_the_old_export(work):
    (work / "old.pt").write_bytes(b"the previous export")
    before = snapshot(work)
    script = ("import sys, torch\n"
              "def full(*a, **k):\n"
              "    raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')\n"
              "torch.jit.save = full\n"
              "from napari_unet_seg.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "export", "--model", work / "model.pt", "--format",
                           "torchscript", "--out", work / "old.pt", "--overwrite", "--no-check"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    one_line(done, r"old.pt: writing failed \(.*file write failed\); check free disk space")
    assert_kept(before, work)
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []
