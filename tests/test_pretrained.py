"""The models that ship with the package load by name and segment the package's sample data."""

import pytest

from napari_unet_seg.image_io import read_image
from napari_unet_seg.inference import predict
from napari_unet_seg.metrics import segmentation_metrics
from napari_unet_seg.model_file import load_model
from napari_unet_seg.pretrained import display_name, shipped_models
from napari_unet_seg.sample_data import sample_folders


def test_em_model_ships_small_with_its_provenance():
    assert "em-membranes" in shipped_models()
    model = load_model("em-membranes")
    assert model.path.stat().st_size < 10e6
    assert display_name("em-membranes") == "EM membranes (U-Net)" == model.info["display_name"]
    assert model.config["command"].startswith("napari-unet-seg train ")
    assert {"test_dice", "test_iou", "test_accuracy"} <= set(model.metrics)


def test_em_model_segments_the_held_out_sample():
    # em_28 is a crop of ISBI slice 28, one of the test slices the model never saw (trained on 0-23).
    images, masks = sample_folders("em")
    labels = predict("em-membranes", read_image(images / "em_28.png"), device="cpu")
    scores = segmentation_metrics(labels, read_image(masks / "em_28.png") > 0)
    assert scores["dice"] > 0.8 and scores["accuracy"] > 0.9


def test_dermoscopy_model_ships_small_with_its_provenance():
    assert "dermoscopy-lesions" in shipped_models()
    model = load_model("dermoscopy-lesions")
    assert model.path.stat().st_size < 10e6 and model.in_channels == 3 and model.config["resize"] == 256
    assert display_name("dermoscopy-lesions") == "Dermoscopy lesions (U-Net)" == model.info["display_name"]
    assert model.config["command"].startswith("napari-unet-seg train --images ")  # train's plan, nothing else
    assert model.config["extra"]["plan"]["settings"]["resize"] == 256
    assert model.info["train_command"].startswith("napari-unet-seg train ") and "PH2" in model.info["data"]
    assert model.metrics["test_count"] == 117 and model.metrics["test_dice"] >= 0.88
    # its threshold and post-processing, chosen on its 121 validation images, are what predict applies
    assert model.postprocess["evidence"]["images"] == 121 and 0 < model.postprocess["threshold"] < 1


@pytest.mark.parametrize("name", ["ISIC_0000013", "ISIC_0000086", "ISIC_0000139"])
def test_dermoscopy_model_segments_the_held_out_samples(name):
    # the three shipped ISIC images are from the test split the model never saw
    images, masks = sample_folders("dermoscopy")
    image = read_image(images / f"{name}.jpg")
    labels = predict("dermoscopy-lesions", image, device="cpu")
    assert labels.shape == image.shape[:2]
    scores = segmentation_metrics(labels, read_image(masks / f"{name}_segmentation.png") > 0)
    assert scores["dice"] > 0.9 and scores["accuracy"] > 0.95


@pytest.mark.slow
def test_cli_predicts_with_a_shipped_model_by_name(tmp_path):
    import subprocess
    import sys

    images, _ = sample_folders("em")
    done = subprocess.run([sys.executable, "-m", "napari_unet_seg", "predict", "--model", "em-membranes",
                           "--input", str(images / "em_28.png"), "--output", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_image(tmp_path / "em_28.png").shape == (256, 256)


@pytest.mark.parametrize(("name", "terms", "sample"), [("em-membranes", "ISBI 2012", "em"),
                                                       ("dermoscopy-lesions", "CC BY-NC 4.0", "dermoscopy"),
                                                       ("mitochondria-em3d", "Lucchi", "em3d")])
def test_shipped_models_carry_their_datas_terms_and_citations(name, terms, sample):
    from napari_unet_seg.model_file import read_metadata
    from napari_unet_seg.pretrained import TERMS

    info = read_metadata(_installed(name))["info"]
    assert {k: info[k] for k in TERMS[name]} == TERMS[name]  # the file and the table agree
    assert info["license"] == "CC-BY-NC-4.0" and terms in info["data_license"] and info["sample"] == sample
    assert info["cite"] and all(c["text"] and c["doi"] for c in info["cite"])
    readme = (sample_folders(sample)[0].parents[1] / "README.md").read_text()
    assert all(f"doi:{c['doi']}" in readme for c in info["cite"])  # the samples cite the same


def test_cli_info_states_terms_and_citations():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "napari_unet_seg", "info", "dermoscopy-lesions"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "data terms: CC BY-NC 4.0 (International Skin Imaging Collaboration" in out.stdout
    assert "licence: CC-BY-NC-4.0 (exports default to it)" in out.stdout
    assert "cite: Codella et al. (2019)" in out.stdout and "doi:10.1038/sdata.2018.161" in out.stdout


def _installed(name):
    """Skip the file-based checks of a registered model whose file this build does not ship yet (only
    ``mitochondria-em3d``: the other two must ship)."""
    if name == "mitochondria-em3d" and name not in shipped_models():
        pytest.skip("pretrained/mitochondria-em3d.pt is not in this build yet")
    return shipped_models()[name]


def test_mitochondria_em3d_is_registered_with_its_datas_terms():
    from napari_unet_seg.pretrained import TERMS

    assert display_name("mitochondria-em3d") == "EM mitochondria (3D U-Net)"
    terms = TERMS["mitochondria-em3d"]
    assert terms["license"] == "CC-BY-NC-4.0" and terms["sample"] == "em3d" and terms["spacing_unit"] == "µm"
    assert "non-commercial research" in terms["data_license"] and "Lucchi" in terms["data_license"]
    readme = (sample_folders("em3d")[0].parents[1] / "README.md").read_text()
    assert all(c["text"] and f"doi:{c['doi']}" in readme for c in terms["cite"])


def test_a_registered_model_missing_from_the_build_is_named_in_one_line(monkeypatch, tmp_path):
    import subprocess
    import sys

    from napari_unet_seg import pretrained
    from napari_unet_seg.errors import UserError

    monkeypatch.setattr(pretrained, "_folder", lambda: tmp_path)  # a build without any model file
    message = "shipped model mitochondria-em3d (EM mitochondria (3D U-Net)) is not installed in this build"
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model("mitochondria-em3d")
    assert pretrained.pretrained_path("no-such-model") is None  # an unregistered name is just not shipped
    monkeypatch.undo()
    if "mitochondria-em3d" in shipped_models():
        return  # the CLI check below needs a build without the file
    out = subprocess.run([sys.executable, "-m", "napari_unet_seg", "info", "mitochondria-em3d"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].endswith(
        "is not installed in this build; install a release that ships it, or pass a model file")
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_mitochondria_em3d_ships_small_and_segments_the_sample_volume():
    from napari_unet_seg.image_io import read_mask
    from napari_unet_seg.model_file import read_metadata
    from napari_unet_seg.pretrained import TERMS
    from napari_unet_seg.sample_data import em3d_sample_layers

    path = _installed("mitochondria-em3d")
    assert path.stat().st_size < 20e6
    info = read_metadata(path)["info"]
    assert {k: info[k] for k in TERMS["mitochondria-em3d"]} == TERMS["mitochondria-em3d"]
    model = load_model("mitochondria-em3d")
    assert model.spatial_dims == 3 and model.config["command"].startswith("napari-unet-seg train ")
    (volume, _, _), _ = em3d_sample_layers()
    labels = predict("mitochondria-em3d", volume, device="cpu")
    images, masks = sample_folders("em3d")
    truth = read_mask(next(masks.iterdir())) > 0
    assert labels.shape == truth.shape
    assert segmentation_metrics(labels, truth)["dice"] > 0.85
