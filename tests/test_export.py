"""Export to TorchScript and ONNX: files, outputs equal to PyTorch's at odd sizes, in 2D and 3D (every model,
anisotropic multiples); export_model's user errors (bioimage.io packages: tests/test_bioimageio.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from export_helpers import assert_close, model_3d, odd_inputs, odd_volumes, raw_volume

from napari_unet_seg import export
from napari_unet_seg.errors import UserError
from napari_unet_seg.export import ExportError, export_model
from napari_unet_seg.model_file import load_model
from napari_unet_seg.models import MODEL_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

@pytest.fixture(params=["unet", "segnet"])
def model_file(request, tiny_model, segnet_model):
    return tiny_model if request.param == "unet" else segnet_model


def test_torchscript_matches_pytorch_at_any_size(model_file, tmp_path):
    messages = []
    out = export_model(model_file, "torchscript", tmp_path / "model.pt", on_message=messages.append)
    assert out == tmp_path / "model.pt" and out.is_file()
    assert any("TorchScript output matches" in m for m in messages)
    model = load_model(model_file)
    scripted = torch.jit.load(str(out)).eval()
    for x, expected in odd_inputs(model, batch=2):
        assert_close(scripted(torch.from_numpy(x)).detach().numpy(), expected)
    tiny = torch.rand(1, 1, 5, 7)  # below the multiple: PadToMultiple's replicate padding is kept
    assert_close(scripted(tiny).detach().numpy(), model.network(tiny).detach().numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left


@pytest.mark.slow
def test_onnx_segnet_dynamic_sizes(segnet_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = export_model(segnet_model, "onnx", tmp_path / "segnet.onnx")
    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert "ScatterND" in {node.op_type for node in graph.graph.node}  # how torch.export lowers MaxUnpool2d
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x, expected in odd_inputs(load_model(segnet_model), batch=3):
        assert_close(session.run(None, {"input": x})[0], expected)
    with pytest.raises(Exception, match="Pad"):  # 32 pixels (the multiple): refused, never silently different
        session.run(None, {"input": np.zeros((1, 1, 32, 40), np.float32)})


def test_user_errors(tiny_model, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="format 'keras' is unknown; use one of torchscript, onnx, bioimageio"):
        export_model(tiny_model, "keras", tmp_path / "m.h5")
    existing = tmp_path / "model.pt"
    existing.write_bytes(b"keep me")
    with pytest.raises(UserError, match="exists already; pass --overwrite"):
        export_model(tiny_model, "torchscript", existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(UserError, match="is a folder; give a file name"):
        export_model(tiny_model, "onnx", tmp_path)
    with pytest.raises(UserError, match="not empty; choose another folder or pass --overwrite"):
        export_model(tiny_model, "bioimageio", tmp_path)
    with pytest.raises(UserError, match="no bioimage.io package"):  # never deletes a folder of other files
        export_model(tiny_model, "bioimageio", tmp_path, overwrite=True)
    with pytest.raises(UserError, match="'my license' is not an SPDX license id"):
        export_model(tiny_model, "bioimageio", tmp_path / "pkg", license="my license")
    with pytest.raises(UserError, match="bioimage.io packages only"):
        export_model(tiny_model, "onnx", tmp_path / "m.onnx", authors=["me"])
    with pytest.raises(UserError, match="at least 17 pixels"):
        export_model(tiny_model, "torchscript", tmp_path / "small.pt", test_image=np.zeros((12, 40), np.uint8))
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(UserError, match="cannot write here"):
        export_model(tiny_model, "torchscript", blocked / "model.pt")
    monkeypatch.setattr(export, "_installed", lambda name: not name.startswith(("onnx", "bioimageio")))
    with pytest.raises(UserError, match=r"needs the onnx and onnxscript and onnxruntime .*pip install onnx"):
        export_model(tiny_model, "onnx", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="pip install bioimageio.spec"):
        export_model(tiny_model, "bioimageio", tmp_path / "pkg")


def test_a_failed_check_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # every difference, even 0, is too large
    with pytest.raises(ExportError, match="output differs from PyTorch's by .* nothing was written"):
        export_model(tiny_model, "torchscript", tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(export, "TOLERANCE", 1e-4)
    image = np.random.default_rng(0).integers(0, 255, (40, 41), dtype=np.uint8)
    assert export_model(tiny_model, "torchscript", tmp_path / "model.pt", test_image=image).is_file()


def _cli_has_export() -> bool:
    from napari_unet_seg.cli import build_parser

    return "export" in build_parser()._subparsers._group_actions[0].choices


@pytest.mark.skipif(not _cli_has_export(), reason="the `export` sub-command is not wired into cli.py yet")
def test_cli_export(tiny_model, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = [sys.executable, "-m", "napari_unet_seg", "export", "--model", str(tiny_model)]
    done = subprocess.run([*run, "--format", "torchscript", "--out", str(tmp_path / "m.pt")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "TorchScript output matches" in done.stderr and (tmp_path / "m.pt").is_file()
    again = subprocess.run([*run, "--format", "torchscript", "--out", str(tmp_path / "m.pt")], capture_output=True,
                           text=True, env=env, timeout=600)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr


# --------------------------------------------------------------------------------------------- 3D

#: (z, y, x) voxels three times as long along z: z is pooled once less (multiples 8, 16, 16; SegNet 16, 32, 32).
ANISOTROPIC = (3.0, 1.0, 1.0)


@pytest.mark.parametrize(("name", "spacing"), [*((name, None) for name in MODEL_NAMES), ("unet", ANISOTROPIC),
                                               ("segnet", ANISOTROPIC)])
def test_torchscript_3d_matches_pytorch_at_odd_sizes(name, spacing, tmp_path):
    model = model_3d(name, spacing)
    steps = export.multiples(model)
    assert (steps[0] < steps[1]) == (spacing is not None)  # the anisotropic networks pool z less
    messages = []
    out = export_model(model, "torchscript", tmp_path / "m.pt", test_image=raw_volume(model),
                       on_message=messages.append)
    assert any("TorchScript output matches" in m and "x".join(map(str, [1, 1, *raw_volume(model).shape])) in m
               for m in messages)
    scripted = torch.jit.load(str(out)).eval()
    for x, expected in odd_volumes(model, batch=2):
        assert_close(scripted(torch.from_numpy(x)).detach().numpy(), expected)
    tiny = torch.rand(1, 1, 3, 5, 7)  # below every multiple: PadToMultiple's replicate padding is kept
    assert_close(scripted(tiny).detach().numpy(), model.network(tiny).detach().numpy())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "spacing"), [*((name, None) for name in MODEL_NAMES), ("unet", ANISOTROPIC),
                                               ("segnet", ANISOTROPIC)])
def test_onnx_3d_dynamic_sizes(name, spacing, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = model_3d(name, spacing)
    out = export_model(model, "onnx", tmp_path / "m.onnx", test_image=raw_volume(model))
    graph = onnx.load(str(out))
    for value in (graph.graph.input[0], graph.graph.output[0]):
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "", "depth", "height", "width"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x, expected in odd_volumes(model, batch=3):
        assert_close(session.run(None, {"input": x})[0], expected)
    too_small = [m for m in export.multiples(model)]  # the multiple itself on every axis: refused, never different
    with pytest.raises(Exception, match="Pad"):
        session.run(None, {"input": np.zeros((1, 1, *too_small), np.float32)})


def test_3d_test_image_errors(tmp_path):
    model = model_3d("unet", ANISOTROPIC)
    with pytest.raises(UserError, match=r"test image of shape \(40, 41\): this 3D model takes a volume \(Z, Y, X\)"):
        export_model(model, "torchscript", tmp_path / "m.pt", test_image=np.zeros((40, 41), np.uint8))
    with pytest.raises(UserError, match=r"needs at least \(9, 17, 17\) voxels \(z, y, x\) for this model"):
        export_model(model, "torchscript", tmp_path / "m.pt", test_image=np.zeros((8, 40, 40), np.uint8))
    assert export.min_sizes(model) == [9, 17, 17] and export.min_size(model) == 17
    assert list(tmp_path.iterdir()) == []


def test_3d_test_image_is_the_first_training_volume(tmp_path):
    import tifffile

    model = model_3d("unet")
    (tmp_path / "images").mkdir()
    volume = np.random.default_rng(2).integers(0, 255, (21, 40, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "images" / "a.tif", volume)
    model.config = {"images": str(tmp_path / "images")}
    raw = export._test_image(model, None)
    np.testing.assert_array_equal(raw, volume[None, :, :39, 13:76])  # centred, odd, at most 63 a side
    colour = np.stack([volume, volume // 2, volume // 4], axis=-1)  # (Z, Y, X, 3) for a gray model: the mean
    np.testing.assert_allclose(export._test_image(model, colour)[0], colour[:, :39, 13:76].mean(axis=-1), rtol=1e-6)


class _Unstable(torch.nn.Module):
    """``sin(1e4 x)`` on the first half of the rows, ``x`` on the rest: float32 is far from float64 there."""

    def forward(self, x):
        rows = x.shape[-2] // 2
        return torch.cat([torch.sin(x[..., :rows, :] * 1e4), x[..., rows:, :]], dim=-2)


def test_check_leaves_out_inputs_where_pytorch_itself_is_unstable():
    from napari_unet_seg.model_file import SegmentationModel
    from napari_unet_seg.normalization import default_normalization

    model = SegmentationModel(_Unstable(), {"name": "test", "kwargs": {}}, 1, 2, default_normalization())
    zeros = np.zeros((1, 1, 3, 3), np.float32)  # sin(0) = 0 in float32 and float64 alike: a steady input
    shaky = np.random.default_rng(0).random((1, 1, 6, 5), dtype=np.float32)
    exact = lambda b: _Unstable().double()(torch.from_numpy(b).double()).float().numpy()  # noqa: E731
    messages = []
    export._compare("Test", model, exact, [zeros, shaky], messages.append)
    assert "on inputs 1x1x3x3; input 1x1x6x5 not used: PyTorch's float32 output is" in messages[0]
    with pytest.raises(ExportError, match="PyTorch's own float32 and float64 outputs differ by .* try another test"):
        export._compare("Test", model, exact, [shaky], None)
    with pytest.raises(ExportError, match=r"differs from PyTorch's by 1 on a 1x1x3x3 input .*try another format"):
        export._compare("Test", model, lambda b: b + 1.0, [zeros, shaky], None)  # a real difference: never excused
