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
    assert model.config["command"].startswith("napari-unet-seg sweep isic2018-cpu")
    assert model.info["train_command"].startswith("napari-unet-seg train ")
    assert model.metrics["test_count"] == 117 and model.metrics["test_dice"] >= 0.88


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
                                                       ("dermoscopy-lesions", "CC BY-NC 4.0", "dermoscopy")])
def test_shipped_models_carry_their_datas_terms_and_citations(name, terms, sample):
    from napari_unet_seg.model_file import read_metadata
    from napari_unet_seg.pretrained import TERMS

    info = read_metadata(shipped_models()[name])["info"]
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
