import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from napari_unet_seg.errors import UserError
from napari_unet_seg.model_file import FORMAT_VERSION, SegmentationModel, load_model, read_metadata, save_model
from napari_unet_seg.models import build_network, network_kwargs


def _model(name="segnet", channels=3, classes=2):
    kwargs = network_kwargs(name, width=0.125)
    net = build_network(name, channels, 1 if classes == 2 else classes, **kwargs).eval()
    return SegmentationModel(net, {"name": name, "kwargs": kwargs}, channels, classes,
                             {"method": "percentile", "low": 1.0, "high": 99.8}, {"patch_size": 64},
                             {"val_dice": 0.5})


@pytest.mark.parametrize("name", ["unet", "segnet", "basic_unet", "attention_unet"])
def test_round_trip_gives_same_outputs(tmp_path, name):
    model = _model(name)
    path = save_model(tmp_path / "m.pt", model)
    loaded = load_model(path)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(model.network(x), loaded.network(x))
    assert loaded.config == {"patch_size": 64} and loaded.metrics == {"val_dice": 0.5}
    assert loaded.in_channels == 3 and loaded.num_classes == 2 and loaded.path == path
    assert read_metadata(path)["architecture"]["name"] == name


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def test_crafted_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "napari-unet-seg", "format_version": 1, "metadata": "{}", "state_dict": {},
                "payload": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()
    # A plain pickle (not a torch zip file) with the same trick.
    (tmp_path / "evil2.pt").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError):
        load_model(tmp_path / "evil2.pt")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_empty_foreign_and_future_files(tmp_path):
    path = save_model(tmp_path / "m.pt", _model())
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.pt")
    (tmp_path / "zero.pt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_model(tmp_path / "zero.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a napari-unet-seg model file"):
        load_model(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(UserError, match="newer than this napari-unet-seg reads"):
        load_model(tmp_path / "future.pt")
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="is a folder"):
        load_model(tmp_path)


def test_a_misspelt_or_missing_model_name_lists_the_shipped_ones(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"em-membrane: no such file; .*did you mean em-membranes\? shipped: .*"
                                        r"dermoscopy-lesions, em-membranes, mitochondria-em3d") as info:
        load_model("em-membrane")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"cells: no such file; .*shipped: ") as info:
        load_model("cells")
    assert "did you mean" not in str(info.value)
    with pytest.raises(UserError, match="no such file; check the path$"):
        load_model("runs/x/best.pt")  # a path, not a name: no list of names
    with pytest.raises(UserError, match="model: got NoneType; give a model file"):
        load_model(None)


def test_mismatched_weights_are_reported(tmp_path):
    path = save_model(tmp_path / "m.pt", _model())
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["metadata"])
    meta["architecture"]["kwargs"]["features"] = [8, 8, 8, 8, 8]
    payload["metadata"] = json.dumps(meta)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="do not fit together"):
        load_model(tmp_path / "bad.pt")


def test_save_is_atomic_against_sigkill(tmp_path):
    """A process killed while writing leaves the previous file intact."""
    path = save_model(tmp_path / "m.pt", _model())
    before = path.read_bytes()
    script = f"""
import os, signal, torch
import napari_unet_seg.model_file as mf
from napari_unet_seg.models import build_network, network_kwargs
real_save = torch.save
def dying_save(obj, f):
    real_save(obj, f)
    with open(f, "r+b") as h:  # leave a half-written temporary behind, then die hard
        h.truncate(100)
    os.kill(os.getpid(), signal.SIGKILL)
mf.torch.save = dying_save
kw = network_kwargs("segnet", width=0.125)
net = build_network("segnet", 3, 1, **kw)
mf.save_model({str(path)!r}, mf.SegmentationModel(net, {{"name": "segnet", "kwargs": kw}}, 3, 2, {{}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert path.read_bytes() == before
    assert load_model(path).in_channels == 3
    assert zipfile.is_zipfile(path)
