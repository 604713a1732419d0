"""Export to TorchScript, ONNX and bioimage.io: files, outputs equal to PyTorch's at odd sizes, user errors."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet_seg import export
from napari_unet_seg.errors import UserError
from napari_unet_seg.export import ExportError, export_model
from napari_unet_seg.model_file import SegmentationModel, load_model, save_model
from napari_unet_seg.models import build_network, network_kwargs
from napari_unet_seg.normalization import default_normalization

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

#: Odd sizes above every network's multiple (16 for the tiny U-Net, 32 for SegNet), never a multiple of it.
SIZES = [(37, 53), (71, 45)]


@pytest.fixture(scope="module")
def segnet_model(tmp_path_factory):
    """A tiny SegNet (width 0.125) saved as a model file; batch-norm statistics set so its output varies."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    network = build_network("segnet", 1, 1, **network_kwargs("segnet", width=0.125)).eval()
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):  # at init the deep activations vanish and the output is constant
            module.running_var.uniform_(0.07, 0.14, generator=generator)
            module.running_mean.normal_(0.0, 0.05, generator=generator)
    model = SegmentationModel(network, {"name": "segnet", "kwargs": network_kwargs("segnet", width=0.125)}, 1, 2,
                              default_normalization(), info={"authors": ["Ada Lovelace"], "license": "MIT"})
    return save_model(tmp_path_factory.mktemp("segnet") / "segnet.pt", model)


@pytest.fixture(params=["unet", "segnet"])
def model_file(request, tiny_model, segnet_model):
    return tiny_model if request.param == "unet" else segnet_model


def _inputs(model, batch=1):
    """Normalized-looking random batches of two odd sizes, and the model's own outputs for them."""
    rng = np.random.default_rng(1)
    batches = [rng.random((batch, model.in_channels, *size), dtype=np.float32) for size in SIZES]
    with torch.inference_mode():
        return [(x, model.network(torch.from_numpy(x)).numpy()) for x in batches]


def _assert_close(got, expected):
    assert got.shape == expected.shape
    assert expected.std() > 1e-3, "the reference output is constant: the comparison would prove nothing"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_torchscript_matches_pytorch_at_any_size(model_file, tmp_path):
    messages = []
    out = export_model(model_file, "torchscript", tmp_path / "model.pt", on_message=messages.append)
    assert out == tmp_path / "model.pt" and out.is_file()
    assert any("TorchScript output matches" in m for m in messages)
    model = load_model(model_file)
    scripted = torch.jit.load(str(out)).eval()
    for x, expected in _inputs(model, batch=2):
        _assert_close(scripted(torch.from_numpy(x)).detach().numpy(), expected)
    tiny = torch.rand(1, 1, 5, 7)  # below the multiple: PadToMultiple's replicate padding is kept
    _assert_close(scripted(tiny).detach().numpy(), model.network(tiny).detach().numpy())
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
    for x, expected in _inputs(load_model(segnet_model), batch=3):
        _assert_close(session.run(None, {"input": x})[0], expected)
    with pytest.raises(Exception, match="Pad"):  # 32 pixels (the multiple): refused, never silently different
        session.run(None, {"input": np.zeros((1, 1, 32, 40), np.float32)})


@pytest.mark.slow
def test_bioimageio_package_validates_and_reproduces(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    spec = pytest.importorskip("bioimageio.spec")
    import onnxruntime
    import yaml

    out = export_model(tiny_model, "bioimageio", tmp_path / "package")
    names = {p.name for p in out.iterdir()}
    assert {"rdf.yaml", "README.md", "cover.png", "weights_torchscript.pt", "weights.onnx", "test_input.npy",
            "test_output.npy", "sample_input.tif", "sample_output.tif"} <= names
    description = spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    assert description.validation_summary.status == "valid-format"
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5.") and rdf["license"] == "CC-BY-4.0"
    assert rdf["inputs"][0]["preprocessing"] == [{"id": "scale_range", "kwargs": {
        "axes": ["channel", "y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}}]
    assert rdf["outputs"][0]["postprocessing"] == [{"id": "sigmoid"}]
    assert rdf["inputs"][0]["axes"][2]["size"] == {"min": 17, "step": 1}
    assert set(rdf["weights"]) == {"torchscript", "onnx"} and rdf["weights"]["onnx"]["opset_version"] >= 17

    # What a bioimage.io tool does: scale_range, the weights, sigmoid; it gives the test output.
    raw, expected = np.load(out / "test_input.npy"), np.load(out / "test_output.npy")
    assert raw.shape[2] % 2 == 1 and expected.shape == raw.shape and 0 <= expected.min() <= expected.max() <= 1
    low, high = np.percentile(raw, [1.0, 99.8])
    normalized = ((raw - low) / (high - low + 1e-6)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(out / "weights.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "weights_torchscript.pt"))
    with torch.inference_mode():
        from_torchscript = scripted(torch.from_numpy(normalized)).numpy()
    for logits in (session.run(None, {"input": normalized})[0], from_torchscript):
        np.testing.assert_allclose(1 / (1 + np.exp(-logits)), expected, atol=1e-3)
    for x, reference in _inputs(load_model(tiny_model)):  # the packaged ONNX graph at two more odd sizes
        _assert_close(session.run(None, {"input": x})[0], reference)
    assert "## Validation" in (out / "README.md").read_text()


def test_bioimageio_zip_with_metadata(segnet_model, tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    out = export.export_bioimageio(segnet_model, tmp_path / "segnet.zip", weights=("torchscript",),
                                   authors=["Grace Hopper"])
    assert zipfile.is_zipfile(out)
    description = spec.load_description(out, perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    assert [a.name for a in description.authors] == ["Grace Hopper"]
    assert description.license == "MIT"  # from the model file's info
    assert any("SegNet" in c.text for c in description.cite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segnet.zip"]  # the staging folder is gone


def test_bioimageio_rgb_multiclass_uses_softmax(tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    torch.manual_seed(0)
    kwargs = network_kwargs("unet", width=0.25)
    model = SegmentationModel(build_network("unet", 3, 3, **kwargs).eval(), {"name": "unet", "kwargs": kwargs}, 3, 3,
                              default_normalization("minmax"))
    image = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    out = export.export_bioimageio(model, tmp_path / "rgb", weights=("torchscript",), test_image=image)
    description = spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    (tensor_in,), (tensor_out,) = description.inputs, description.outputs
    assert tensor_in.axes[1].channel_names == ["red", "green", "blue"]
    assert [p.id for p in tensor_in.preprocessing] == ["ensure_dtype", "scale_range", "ensure_dtype"]
    assert tensor_in.preprocessing[1].kwargs.max_percentile == 100.0  # minmax normalization
    assert [p.id for p in tensor_out.postprocessing] == ["softmax", "ensure_dtype"]
    expected = np.load(out / "test_output.npy")
    assert expected.shape == (1, 3, 49, 59)  # cropped to odd sizes
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)


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
