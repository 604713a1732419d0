"""Sweep files: settings, grids and run names, the errors a bad file gets, the experiments/ files."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import data_lines, write_sweep

from napari_unet_seg.errors import UserError
from napari_unet_seg.sweep_spec import load_sweep, parse_sweep, split_lists

ROOT = Path(__file__).resolve().parents[1]
#: Where the experiments' relative paths (``../../shared/data/<name>``) lead.
SHARED_DATA = ROOT.parent / "shared" / "data"


def test_settings_and_names(tmp_path, synthetic_dir):
    spec = parse_sweep({"images": "i", "masks": "m", "lr": "1e-4", "epochs": [1, 2], "model": "segnet",
                        "grids": [{"losses": ["dice"]}, {"loss": "bce", "resize": 64}]},
                       base=tmp_path, check_data=False)
    assert spec.images == (tmp_path / "i").resolve()
    assert [r.name for r in spec.runs] == ["01-segnet-dice-adamw-lr0.0001-e1", "02-segnet-dice-adamw-lr0.0001-e2",
                                           "03-segnet-bce-adamw-lr0.0001-e1", "04-segnet-bce-adamw-lr0.0001-e2"]
    assert spec.columns[-1] == "resize" and spec.runs[0].config.lr == 1e-4  # "1e-4" is a string in YAML 1.1
    assert [r.settings["resize"] for r in spec.runs] == [None, None, 64, 64]
    assert spec.runs[3].describe().startswith("model=segnet loss=bce optimizer=adamw lr=0.0001 epochs=2")


@pytest.mark.parametrize("text, message", [
    ("modle: unet\n", r"unknown key 'modle'; did you mean 'model'\? \(all keys: docs/sweeps.md\)"),
    ("lr: fast\n", r"lr must be a number, got 'fast'"),
    ("models: [unet, resnet]\n", r"model 'resnet' is unknown; use one of unet"),
    ("epochs: 0\n", r"epochs must be > 0"),
    ("epochs: 1.5\n", r"epochs must be a whole number"),
    ("augment: yes\n", r"augment must be a name, got True"),
    ("losses: []\n", r"losses is an empty list"),
    ("models: unet\nmodel: unet\n", r"give models or model, not both"),
    ("test_images: somewhere\n", r"give both test_images and test_masks"),
    ("grids:\n  - {lr: 0.1, colour: red}\n", r"grids\[1\]: unknown key 'colour'"),
    ("grids: [{}, {}]\n", r"appears twice"),
    ("split: {test_fraction: 0.2, test_count: 2}\n", r"exactly one of test_fraction"),
    ("split: {test_fraction: 1.5}\n", r"test_fraction must be between 0 and 1"),
    ("split: {colour_map: 0.2}\n", r"split: unknown key 'colour_map'; allowed keys: seed, test_fraction, test_count"),
    ("split: {test_stems: [img001, nope]}\n", r"test_stems nope are not among the 8 pairs"),
    ("split: {test_range: [6, 9]}\n", r"test_range \[6, 9\] goes past the 8 pairs"),
    ("split: {test_count: 1}\ntest_images: a\ntest_masks: b\n", r"test_images/test_masks or split, not both"),
    ("models: [unet\n", r"is not valid YAML at line"),
])
def test_sweep_file_errors(tmp_path, synthetic_dir, text, message):
    path = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + text)
    with pytest.raises(UserError, match=message):
        load_sweep(path)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_experiments_parse(path):
    present = SHARED_DATA.is_dir()
    spec = load_sweep(path, check_data=present)  # with ../shared: the data folders and split stems exist
    assert spec.runs and spec.split is not None and spec.description
    assert len({r.name for r in spec.runs}) == len(spec.runs)
    defaults = [r for r in spec.runs if (r.config.loss, r.config.lr, r.config.scheduler) == ("dicece", 1e-3,
                                                                                                "cosine")]
    assert defaults, "each experiment has a row of our default settings"
    if present:
        lists = split_lists(spec)
        assert not set(lists["test"]) & set(lists["trainval"])
        if path.stem == "ph2":
            assert (len(lists["trainval"]), len(lists["test"])) == (160, 20)
        if path.stem == "isbi2012-em":
            assert lists["test"] == ["27", "28", "29"]


def test_a_yaml_alias_bomb_gets_one_short_line(tmp_path):
    """A 490-byte file whose nested aliases expand to 9**9 values (repr'd: hundreds of MB) is refused early."""
    text = "grids:\n  - {lr: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]}\n" + "".join(
        f"  - {{lr: &{n} [{', '.join(['*' + p] * 9)}]}}\n" for p, n in zip("abcdefgh", "bcdefghi")) + \
        "images: *i\nmasks: masks\n"
    path = write_sweep(tmp_path, text)
    with pytest.raises(UserError, match=r"aliases \(\*name\) expand to more than 100000 values") as info:
        load_sweep(path, check_data=False)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
    import yaml

    with pytest.raises(UserError) as info:  # the same mapping given in memory: the messages stay short
        parse_sweep(yaml.safe_load(text), check_data=False)
    assert "images must be a folder path" in str(info.value) and len(str(info.value)) < 300


def test_plain_aliases_still_work_and_big_files_are_refused(tmp_path, synthetic_dir):
    path = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + "lr: &rate 0.01\ngrids:\n  - {lr: *rate}\n")
    assert load_sweep(path).runs[0].config.lr == 0.01
    big = write_sweep(tmp_path, data_lines(tmp_path, synthetic_dir) + "#" * 1_100_000 + "\n", name="big.yaml")
    with pytest.raises(UserError, match=r"big.yaml: is 1.1 MB; a sweep file is a few KB"):
        load_sweep(big)
