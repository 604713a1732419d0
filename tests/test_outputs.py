"""Output-path checks: inputs are never replaced, existing files only with overwrite, no two sources share a target."""

import os
from pathlib import Path

import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.outputs import (check_distinct, check_folder, check_output, check_place, inside,
                                     removed_if_left_empty, same_file)


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


def test_a_file_in_the_way_is_named_before_any_work(tmp_path):
    (tmp_path / "f.txt").write_text("keep")
    for check, path in [(check_output, tmp_path / "f.txt" / "s.json"), (check_folder, tmp_path / "f.txt" / "run"),
                        (check_place, tmp_path / "f.txt" / "a" / "m.pt")]:
        with pytest.raises(UserError, match=r"cannot write here \(.*f.txt is a file, not a folder\); choose another"):
            check(path)
    with pytest.raises(UserError, match=r"--out .*f.txt: is a file; give a folder"):
        check_folder(tmp_path / "f.txt")
    assert check_folder(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"] and (tmp_path / "f.txt").read_text() == "keep"


def test_an_output_folder_is_no_input_folder_and_adds_nothing_its_listing_takes(tmp_path):
    images, store = tmp_path / "images", tmp_path / "a.zarr"
    images.mkdir()
    store.mkdir()
    with pytest.raises(UserError, match="is the input folder .*images of this job"):
        check_folder(tmp_path / "x" / ".." / "images", folders=[None, images])
    for name in ("run.zarr", "run.zarr/sub"):  # listed as a zarr image of the folder
        with pytest.raises(UserError, match="would take run.zarr for one of its images"):
            check_folder(images / name, folders=[images])
    with pytest.raises(UserError, match="lies in the input .*a.zarr of this job"):
        check_folder(store / "pred", inputs=[store])
    with pytest.raises(UserError, match="would take s.png for one of its images"):
        check_output(images / "s.png", folders=[images], what="--json")
    # not listed (the listing takes the folder's own files, not those of its subfolders), so harmless
    for path in (images / "run", images / ".run.zarr", tmp_path):
        assert check_folder(path, folders=[images]) == path
    for path in (images / "s.json", images / "run" / "s.png", images / ".s.png"):
        assert check_output(path, folders=[images]) == path


def test_a_failed_job_removes_only_the_empty_folders_it_created(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(UserError), removed_if_left_empty(tmp_path / "new" / "deeper" / "run"):
        (tmp_path / "new" / "deeper" / "run").mkdir(parents=True)
        raise UserError("bad data")
    assert sorted(os.listdir(tmp_path)) == ["kept"]
    with pytest.raises(UserError), removed_if_left_empty(tmp_path / "kept" / "run"):
        (tmp_path / "kept" / "run").mkdir()
        (tmp_path / "kept" / "run" / "best.pt").write_bytes(b"work")
        raise UserError("later error")
    assert (tmp_path / "kept" / "run" / "best.pt").exists()  # a folder that holds anything stays
    with pytest.raises(UserError), removed_if_left_empty(tmp_path / "kept"):
        raise UserError("error")
    assert (tmp_path / "kept").is_dir()  # it existed before
    with removed_if_left_empty(tmp_path / "ok"):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()  # no error: nothing removed
