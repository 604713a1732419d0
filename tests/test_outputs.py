"""Output-path checks: inputs are never replaced, existing files only with overwrite, no two sources share a target."""

import os
from pathlib import Path

import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.outputs import check_distinct, check_output, inside, same_file


def test_an_input_is_refused_even_with_overwrite_through_links(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    os.link(source, tmp_path / "hard.pt")
    (tmp_path / "soft.pt").symlink_to(source)
    for alias in (source, tmp_path / "hard.pt", tmp_path / "soft.pt", tmp_path / "sub" / ".." / "model.pt"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(UserError, match="is the input .* would be replaced"):
            check_output(alias, inputs=[source], overwrite=True)
    assert source.read_bytes() == b"weights"


def test_existing_files_need_overwrite_and_folders_are_refused(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(UserError, match="exists already; pass --overwrite"):
        check_output(tmp_path / "a.json", what="--json")
    assert check_output(tmp_path / "a.json", overwrite=True) == tmp_path / "a.json"
    assert check_output(tmp_path / "new.json") == tmp_path / "new.json"
    with pytest.raises(UserError, match="is a folder"):
        check_output(tmp_path, overwrite=True)


def test_two_sources_writing_one_target_are_refused(tmp_path):
    a, b = Path("a.png"), Path("a.jpg")
    check_distinct([(a, tmp_path / "a.png"), (a, tmp_path / "a_uncertainty.tif"), (b, tmp_path / "b.png")])
    with pytest.raises(UserError, match="a.png and a.jpg would both write a.png"):
        check_distinct([(a, tmp_path / "a.png"), (b, tmp_path / "x" / ".." / "a.png")])


def test_same_file_and_inside(tmp_path):
    assert not same_file(tmp_path / "missing", tmp_path / "other")
    assert same_file(tmp_path / "missing", tmp_path / "." / "missing")
    assert inside(tmp_path / "pkg" / "best.pt", tmp_path / "pkg") and inside(tmp_path, tmp_path)
    assert not inside(tmp_path / "pkg2" / "best.pt", tmp_path / "pkg")
