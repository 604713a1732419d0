from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet_seg.errors import UserError
from napari_unet_seg.pairing import MASK_SUFFIXES, mask_key, pair_files


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


@pytest.mark.parametrize("image, mask", [
    ("ISIC_0000000.jpg", "ISIC_0000000_Segmentation.png"),   # ISIC 2016/2017
    ("ISIC_0000000.jpg", "ISIC_0000000_segmentation.png"),   # ISIC 2018
    ("IMD002.bmp", "IMD002_lesion.bmp"),                     # PH2
    ("07.png", "07.png"),                                     # ISBI 2012: same name in both folders
    ("cell.tif", "cell_mask.tif"), ("cell.tif", "cell_masks.png"), ("cell.tif", "cell_seg.png"),
    ("cell.tif", "cell_label.png"), ("cell.tif", "cell_labels.tif"), ("cell.tif", "cell_gt.png"),
    ("a.JPEG", "a_MASK.PNG"),
    ("cell.ome.tif", "cell_mask.ome.tif"), ("cell.ome.tiff", "cell_labels.tif"),   # OME-TIFF
    ("vol.ome.zarr", "vol_mask.zarr"), ("vol.zarr", "vol.ome.zarr"), ("vol.ome.zarr", "vol_seg.tif"),  # zarr stores
])
def test_naming_schemes_pair(tmp_path, image, mask):
    for folder, name in (("i", image), ("m", mask)):
        if name.endswith(".zarr"):
            (tmp_path / folder / name).mkdir(parents=True)  # a store is a folder
        else:
            _touch(tmp_path / folder, name)
    pairs = pair_files(tmp_path / "i", tmp_path / "m")
    assert [(p.image.name, p.mask.name) for p in pairs] == [(image, mask)]


def test_exact_stem_wins_over_suffix(tmp_path):
    # An image whose own stem ends like a mask suffix still pairs with the same-named mask.
    _touch(tmp_path / "i", "slice_seg.png", "slice.png")
    _touch(tmp_path / "m", "slice_seg.png", "slice.png")
    pairs = pair_files(tmp_path / "i", tmp_path / "m")
    assert {(p.image.name, p.mask.name) for p in pairs} == {("slice_seg.png", "slice_seg.png"),
                                                           ("slice.png", "slice.png")}


def test_unpaired_files_are_listed(tmp_path):
    _touch(tmp_path / "i", "a.png", "b.png", "c.png")
    _touch(tmp_path / "m", "a_mask.png", "z_mask.png")
    with pytest.raises(UserError, match=r"2 image\(s\) without mask: b.png, c.png.*1 mask\(s\) without image: "
                                        r"z_mask.png.*--skip-unpaired"):
        pair_files(tmp_path / "i", tmp_path / "m")
    with pytest.warns(UserWarning, match="skipping unpaired"):
        pairs = pair_files(tmp_path / "i", tmp_path / "m", skip_unpaired=True)
    assert [p.name for p in pairs] == ["a"]


def test_no_pair_at_all_is_an_error_even_when_skipping(tmp_path):
    _touch(tmp_path / "i", "a.png")
    _touch(tmp_path / "m", "b.png")
    for skip in (False, True):  # skipping cannot help: no advice to skip
        with pytest.raises(UserError, match=r"images .*i, masks .*m: 1 image\(s\) without mask: a.png; 1 mask\(s\) "
                                            r"without image: b.png \(no pair at all") as info:
            pair_files(tmp_path / "i", tmp_path / "m", skip_unpaired=skip)
        assert "--skip-unpaired" not in str(info.value)


def test_duplicate_stems_and_bad_folders(tmp_path):
    _touch(tmp_path / "i", "a.png", "a.tif")
    _touch(tmp_path / "m", "a.png")
    with pytest.raises(UserError, match="same stem 'a'"):
        pair_files(tmp_path / "i", tmp_path / "m")
    with pytest.raises(UserError, match="does not exist"):
        pair_files(tmp_path / "nope", tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no image file"):
        pair_files(tmp_path / "empty", tmp_path / "m")
    with pytest.raises(UserError, match="is a file"):
        pair_files(tmp_path / "i" / "a.png", tmp_path / "m")


def test_two_masks_for_one_image(tmp_path):
    _touch(tmp_path / "i", "a.png")
    _touch(tmp_path / "m", "a_mask.png", "a_seg.png")
    with pytest.raises(UserError, match="both belong to image 'a'"):
        pair_files(tmp_path / "i", tmp_path / "m")


def test_folder_named_like_an_image_and_other_files_are_ignored(tmp_path):
    _touch(tmp_path / "i", "a.png", "notes.txt", ".hidden.png")
    (tmp_path / "i" / "b.png").mkdir()
    _touch(tmp_path / "i", "c.zarr")  # a file named like a store is not one
    _touch(tmp_path / "m", "a.png")
    assert [p.name for p in pair_files(tmp_path / "i", tmp_path / "m")] == ["a"]


stems = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(stem=stems, suffix=st.sampled_from(MASK_SUFFIXES), upper=st.booleans())
def test_mask_key_strips_exactly_one_suffix(stem, suffix, upper):
    suffix = suffix.upper() if upper else suffix
    assert mask_key(stem + suffix) == stem
    assert mask_key(stem) == stem or any(stem.lower().endswith(s) for s in MASK_SUFFIXES)


@settings(max_examples=30, deadline=None)
@given(names=st.sets(stems, min_size=1, max_size=8), suffix=st.sampled_from(MASK_SUFFIXES + ("",)),
       ext=st.sampled_from([".png", ".tif", ".jpg"]))
def test_generated_folders_pair_one_to_one(tmp_path_factory, names, suffix, ext):
    names = {n for n in names if mask_key(n) == n}  # stems that are themselves mask-like are ambiguous
    if not names:
        return
    root = tmp_path_factory.mktemp("pairs")
    _touch(root / "i", *[n + ".png" for n in names])
    _touch(root / "m", *[n + suffix + ext for n in names])
    pairs = pair_files(root / "i", root / "m")
    assert sorted(p.name for p in pairs) == sorted(names)
    assert all(p.mask.name.startswith(p.name) for p in pairs)
