"""bioimage.io model packages: they validate, reproduce PyTorch through the pre- and postprocessing, and carry
the model's metadata (authors, license, citations, channels); 3D packages have z, y, x axes with the spacing."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from export_helpers import assert_close, model_3d, odd_inputs, odd_volumes

from napari_unet_seg.bioimageio import export_bioimageio
from napari_unet_seg.export import export_model
from napari_unet_seg.model_file import SegmentationModel, load_model
from napari_unet_seg.models import build_network, network_kwargs
from napari_unet_seg.normalization import default_normalization

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


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
    for x, reference in odd_inputs(load_model(tiny_model)):  # the packaged ONNX graph at two more odd sizes
        assert_close(session.run(None, {"input": x})[0], reference)
    assert "## Validation" in (out / "README.md").read_text()


def test_bioimageio_zip_with_metadata(segnet_model, tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    out = export_bioimageio(segnet_model, tmp_path / "segnet.zip", weights=("torchscript",), authors=["Grace Hopper"])
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
    out = export_bioimageio(model, tmp_path / "rgb", weights=("torchscript",), test_image=image)
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


@pytest.mark.slow
@pytest.mark.parametrize(("name", "sample", "cited"), [("em-membranes", "em", "10.1371/journal.pbio.1000502"),
                                                       ("dermoscopy-lesions", "dermoscopy", "10.1038/sdata.2018.161")])
def test_shipped_model_exports_with_real_tensors_and_its_datas_terms(name, sample, cited, tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    import yaml

    from napari_unet_seg.image_io import read_image
    from napari_unet_seg.normalization import to_channels_first
    from napari_unet_seg.pairing import list_images
    from napari_unet_seg.sample_data import sample_folders

    messages = []
    out = export_bioimageio(name, tmp_path / name, weights=("torchscript",), on_message=messages.append)
    description = spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert rdf["license"] == "CC-BY-NC-4.0"  # the model's, not CC-BY-4.0
    assert [a["name"] for a in rdf["authors"]] == ["napari-unet-seg developers"]
    assert cited in [c.get("doi") for c in rdf["cite"]]
    # the training folder is not on this machine: the test input is the first shipped sample, centre-cropped
    image = to_channels_first(read_image(list_images(sample_folders(sample)[0])[0]), 3 if sample == "dermoscopy" else 1)
    raw = np.load(out / "test_input.npy")[0]
    assert raw.shape[-2:] == (255, 255)
    np.testing.assert_array_equal(raw, image[:, :255, :255].astype(np.float32))
    readme = (out / "README.md").read_text()
    assert "## Training data, terms and citations" in readme and "licence of this package: CC-BY-NC-4.0" in readme
    assert not any(m.startswith("warning") for m in messages)


def test_export_warns_when_the_licence_is_freer_than_the_data(segnet_model, tmp_path):
    pytest.importorskip("bioimageio.spec")
    model = load_model(segnet_model)
    model.info = {**model.info, "license": "CC-BY-NC-4.0", "data_license": "non-commercial use only"}
    messages = []
    export_bioimageio(model, tmp_path / "p", weights=("torchscript",), license="CC-BY-4.0", check=False,
                      on_message=messages.append)
    assert any("licence CC-BY-4.0 allows commercial use, but the training data's terms do not" in m for m in messages)
    model.info = {}
    messages.clear()
    export_bioimageio(model, tmp_path / "q", weights=("torchscript",), check=False, on_message=messages.append)
    assert any("no author in the model file" in m and "--author" in m for m in messages)


def _em3d_sample_crop(shape):
    """The centre crop of the shipped EM volume of ``shape``: what a 3D package's test input must be."""
    from napari_unet_seg.sample_data import em3d_sample_layers

    (volume, _, _), _ = em3d_sample_layers()
    corner = [(n - k) // 2 for n, k in zip(volume.shape, shape)]
    return volume[tuple(slice(c, c + k) for c, k in zip(corner, shape))].astype(np.float32)


def test_bioimageio_3d_package_has_zyx_axes_with_the_spacing(tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    import yaml

    model = model_3d("unet", spacing=(10.0, 5.0, 5.0))  # z pooled once less: multiples 8, 16, 16
    model.info = {"spacing_unit": "nm", "authors": ["Rosalind Franklin"]}
    out = export_bioimageio(model, tmp_path / "pkg", weights=("torchscript",))
    description = spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    (tensor_in,), (tensor_out,) = rdf["inputs"], rdf["outputs"]
    for tensor in (tensor_in, tensor_out):
        assert [a.get("id", a["type"]) for a in tensor["axes"]] == ["batch", "channel", "z", "y", "x"]
        assert [(a["scale"], a["unit"]) for a in tensor["axes"][2:]] == [(10.0, "nanometer"), (5.0, "nanometer"),
                                                                         (5.0, "nanometer")]
    assert [a["size"]["min"] for a in tensor_in["axes"][2:]] == [9, 17, 17]
    assert tensor_in["preprocessing"][0]["kwargs"]["axes"] == ["channel", "z", "y", "x"]
    assert "3d" in rdf["tags"] and "3D volumes" in rdf["description"]
    assert rdf["config"]["napari_unet_seg"]["min_size"] == [9, 17, 17]
    assert rdf["config"]["napari_unet_seg"]["spacing"] == [10.0, 5.0, 5.0]

    # no training data here: the test input is the shipped EM volume, centre-cropped to odd sizes of at most 63
    raw, expected = np.load(out / "test_input.npy"), np.load(out / "test_output.npy")
    assert raw.shape == (1, 1, 63, 63, 63) and expected.shape == raw.shape
    np.testing.assert_array_equal(raw[0, 0], _em3d_sample_crop(raw.shape[2:]))
    low, high = np.percentile(raw, [1.0, 99.8])  # what a bioimage.io tool does: scale_range, weights, sigmoid
    normalized = ((raw - low) / (high - low + 1e-6)).astype(np.float32)
    with torch.inference_mode():
        logits = torch.jit.load(str(out / "weights_torchscript.pt"))(torch.from_numpy(normalized)).numpy()
    assert expected.std() > 1e-3
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), expected, atol=1e-3)
    readme = (out / "README.md").read_text()
    assert "`(batch, channel, z, y, x)`" in readme and "(10, 5, 5) nanometer" in readme


def test_bioimageio_3d_without_known_spacing_or_unit_states_none():
    from napari_unet_seg.bioimageio import _scales

    model = model_3d("unet")
    assert _scales(model) == {}  # no spacing in the model file: no scale is made up
    model.config = {"spacing": [2.0, 1.0, 1.0]}
    assert _scales(model) == {"z": {"scale": 2.0}, "y": {"scale": 1.0}, "x": {"scale": 1.0}}  # no unit known
    model.info = {"spacing_unit": "µm"}
    assert _scales(model)["z"] == {"scale": 2.0, "unit": "micrometer"}


@pytest.mark.slow
def test_bioimageio_3d_segnet_with_onnx_weights(tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = model_3d("segnet", spacing=(3.0, 1.0, 1.0))
    volume = np.random.default_rng(0).integers(0, 255, (21, 37, 35), dtype=np.uint8)
    out = export_bioimageio(model, tmp_path / "segnet3d.zip", test_image=volume)
    description = spec.load_description(out, perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    with zipfile.ZipFile(out) as archive:
        archive.extract("weights.onnx", tmp_path)
    session = onnxruntime.InferenceSession(str(tmp_path / "weights.onnx"), providers=["CPUExecutionProvider"])
    for x, reference in odd_volumes(model):
        assert_close(session.run(None, {"input": x})[0], reference)


@pytest.mark.slow
def test_shipped_3d_model_exports_with_the_sample_volume_and_its_datas_terms(tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    import yaml

    from napari_unet_seg.pretrained import shipped_models

    if "mitochondria-em3d" not in shipped_models():
        pytest.skip("pretrained/mitochondria-em3d.pt is not in this build yet")
    out = export_bioimageio("mitochondria-em3d", tmp_path / "em3d", weights=("torchscript",))
    description = spec.load_description(out / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(description, spec.InvalidDescr), description.validation_summary.format()
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert rdf["license"] == "CC-BY-NC-4.0" and "10.1109/TMI.2011.2171705" in [c.get("doi") for c in rdf["cite"]]
    assert [(a["id"], a["unit"]) for a in rdf["inputs"][0]["axes"][2:]] == [
        ("z", "micrometer"), ("y", "micrometer"), ("x", "micrometer")]  # the readers give µm
    raw = np.load(out / "test_input.npy")[0, 0]
    np.testing.assert_array_equal(raw, _em3d_sample_crop(raw.shape))
