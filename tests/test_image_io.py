import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_unet_seg.errors import UserError
from napari_unet_seg.image_io import atomic_write, read_image, write_mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_keeps_dtype_and_values(tmp_path, dtype):
    data = (np.arange(30 * 20).reshape(30, 20) % 250).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", data)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == dtype and np.array_equal(out, data)


def test_tiff_stack(tmp_path):
    data = np.random.default_rng(0).integers(0, 60000, (3, 16, 16), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tiff", data, photometric="minisblack")
    assert np.array_equal(read_image(tmp_path / "s.tiff"), data)


@pytest.mark.parametrize("ext", [".png", ".bmp"])
@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3), (20, 30, 4)])
def test_lossless_formats(tmp_path, ext, shape):
    if ext == ".bmp" and shape[-1:] == (4,):
        pytest.skip("BMP holds no alpha here")
    data = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    iio.imwrite(tmp_path / f"a{ext}", data)
    assert np.array_equal(read_image(tmp_path / f"a{ext}"), data)


def test_jpeg_is_close(tmp_path):
    data = np.full((32, 32, 3), 128, np.uint8)
    iio.imwrite(tmp_path / "a.jpg", data)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - 128).max() <= 2


def test_sixteen_bit_png(tmp_path):
    data = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    iio.imwrite(tmp_path / "a.png", data)
    assert np.array_equal(read_image(tmp_path / "a.png"), data)


def test_bad_files_give_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        read_image(tmp_path / "dir.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(UserError, match="unsupported file type .gif"):
        read_image(tmp_path / "a.gif")
    iio.imwrite(tmp_path / "full.png", np.zeros((64, 64), np.uint8))
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:40])
    with pytest.raises(UserError, match="truncated or corrupt") as info:
        read_image(tmp_path / "cut.png")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(UserError, match="junk.tif"):
        read_image(tmp_path / "junk.tif")


def test_write_mask_png_and_tiff(tmp_path):
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    assert write_mask(tmp_path / "m.png", labels).suffix == ".png"
    assert np.array_equal(read_image(tmp_path / "m.png"), labels)
    stack = np.zeros((2, 4, 4), np.uint8)
    path = write_mask(tmp_path / "s.png", stack)
    assert path.suffix == ".tif" and read_image(path).shape == (2, 4, 4)
    many = np.array([[0, 300]], np.int32)  # instance ids: a 16-bit PNG up to 65535, then a 32-bit TIFF
    path = write_mask(tmp_path / "many", many)
    assert path.suffix == ".png" and read_image(path).dtype == np.uint16 and read_image(path).max() == 300
    path = write_mask(tmp_path / "more", np.array([[0, 70_000]], np.int32))
    assert path.suffix == ".tif" and read_image(path).dtype == np.uint32 and read_image(path).max() == 70_000


def test_a_named_mask_keeps_its_name_and_tiffs_state_the_spacing(tmp_path):
    from napari_unet_seg.image_io import read_spacing

    plane = np.array([[0, 1], [1, 0]], np.uint8)
    assert write_mask(tmp_path / "p.tif", plane, [0.5, 0.25], named=True) == tmp_path / "p.tif"
    assert read_spacing(tmp_path / "p.tif") == [0.5, 0.25] and np.array_equal(read_image(tmp_path / "p.tif"), plane)
    ids = np.array([[0, 70_000]], np.int32)  # more ids than a PNG holds: the TIFF beside the named PNG
    assert write_mask(tmp_path / "q.png", ids, named=True) == tmp_path / "q.tif"
    stack = write_mask(tmp_path / "s", np.zeros((3, 4, 4), np.uint32) + 70_000, [2.0, 0.5, 0.5])
    assert read_spacing(stack) == [2.0, 0.5, 0.5] and read_image(stack).dtype == np.uint32
    assert read_spacing(write_mask(tmp_path / "z", np.zeros((3, 4, 4), np.uint8), [0.5, 0.5])) == [0.5, 0.5]


@pytest.mark.parametrize("depth", [3, 4])
def test_a_stack_of_3_or_4_slices_is_written_as_a_stack_not_as_colour(tmp_path, depth):
    from napari_unet_seg.image_io import read_image_layout, write_map

    stack = np.arange(depth * 8 * 8).reshape(depth, 8, 8) % 2
    for path in (write_mask(tmp_path / "m", stack), write_map(tmp_path / "u", stack)):
        image, colour = read_image_layout(path)
        assert image.shape == (depth, 8, 8) and not colour, path.name
        assert np.array_equal(image, stack)


def test_write_map_keeps_float32(tmp_path):
    from napari_unet_seg.image_io import write_map

    values = np.array([[0.0, 0.25], [0.5, 1e-7]], np.float64)
    path = write_map(tmp_path / "u.png", values)
    assert path.name == "u.tif" and read_image(path).dtype == np.float32
    np.testing.assert_array_equal(read_image(path), values.astype(np.float32))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="free disk space"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(UserError, match="cannot write here"):
        atomic_write(folder / "x.txt", lambda tmp: open(tmp, "w").write("x"))


@settings(max_examples=25, deadline=None)
@given(data=arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))),
       ext=st.sampled_from([".png", ".tif", ".bmp"]))
def test_roundtrip_any_gray_image(tmp_path_factory, data, ext):
    path = tmp_path_factory.mktemp("rt") / f"a{ext}"
    if ext == ".tif":
        tifffile.imwrite(path, data)
    else:
        iio.imwrite(path, data)
    assert np.array_equal(read_image(path), data)


shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=30, deadline=None)
@given(data=st.one_of(arrays(np.uint16, shapes),
                      arrays(np.float32, shapes, elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
                      arrays(np.uint8, st.tuples(st.integers(5, 12), st.integers(5, 12), st.just(3)))))
def test_tiff_roundtrip_any_16bit_float_or_rgb_image(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rt") / "a.tif"
    tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack")
    out = read_image(path)
    assert out.dtype == data.dtype and out.shape == data.shape
    assert np.array_equal(out, data, equal_nan=data.dtype.kind == "f")


def test_spacing_from_imagej_and_ome_tiff(tmp_path):
    from napari_unet_seg.image_io import read_spacing, stated_spacing

    volume = np.zeros((4, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", volume, imagej=True, resolution=(1 / 4, 1 / 4),
                     metadata={"spacing": 50, "unit": "nm", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "o.ome.tif", volume, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 1.75, "PhysicalSizeY": 0.8, "PhysicalSizeX": 0.8})
    tifffile.imwrite(tmp_path / "plain.tif", volume, photometric="minisblack")
    iio.imwrite(tmp_path / "a.png", volume[0])
    assert read_spacing(tmp_path / "ij.tif") == [0.05, 0.004, 0.004]  # micrometres
    assert read_spacing(tmp_path / "o.ome.tif") == [1.75, 0.8, 0.8]
    assert read_spacing(tmp_path / "plain.tif") == [1.0, 1.0]  # no Z step stated
    assert read_spacing(tmp_path / "a.png") is None
    # stated_spacing: only where the file names the unit (a bare resolution tag is often a scanner's dpi)
    assert stated_spacing(tmp_path / "ij.tif") == [0.05, 0.004, 0.004]
    assert stated_spacing(tmp_path / "o.ome.tif") == [1.75, 0.8, 0.8]
    assert stated_spacing(tmp_path / "plain.tif") is None and stated_spacing(tmp_path / "a.png") is None
    tifffile.imwrite(tmp_path / "dpi.tif", volume[0], resolution=(300, 300), resolutionunit="INCH")
    assert read_spacing(tmp_path / "dpi.tif") == [84.6667, 84.6667] and stated_spacing(tmp_path / "dpi.tif") is None
