"""3D training: the 2D-or-3D rule, spacing, patch shapes, bad volumes, and ``train`` on volumes."""

import pytest
import tifffile

from cli_helpers import cli, one_line, snapshot
from volume_helpers import blobs, write_volumes
from napari_unet_seg.errors import UserError
from napari_unet_seg.events import Message
from napari_unet_seg.planning import (ANISOTROPY, MIN_DEPTH, choose_spatial_dims, common_spacing, patch_shape,
                                      resolve_spatial_dims)
from napari_unet_seg.training import train_steps

TINY = {"width": 0.125, "epochs": 1, "batch_size": 2, "augment": "none", "device": "cpu", "val_fraction": 0}


def _until_patches(steps) -> list[str]:
    """The messages of a training run up to the one that tells its 3D patches (data read and checked,
    dims chosen, network built), then the run is closed."""
    texts = []
    for event in steps:
        if isinstance(event, Message):
            texts.append(event.text)
            if event.text.startswith("3D patches"):
                break
    steps.close()
    return texts


@pytest.mark.parametrize("shapes, spacing, dims, why", [
    ([(64, 64)], None, 2, "2D images"),
    ([(32, 64, 64)], [1.0, 1.0, 1.0], 3, "3D volumes"),
    ([(32, 64, 64)], [1.75, 0.8, 0.8], 3, "anisotropy 2.19"),
    ([(30, 512, 512)], [0.05, 0.004, 0.004], 2, "anisotropy 12.5 >= 3"),  # ISBI 2012: 50 nm / 4 nm
    ([(MIN_DEPTH - 1, 64, 64)], [1.0, 1.0, 1.0], 2, "thinner than the 16"),
    ([(32, 64, 64), (64, 64)], None, 2, "some images are 2D"),
])
def test_auto_rule(shapes, spacing, dims, why):
    chosen, reason = choose_spatial_dims(shapes, spacing)
    assert chosen == dims and why in reason


def test_auto_rule_needs_the_spacing_of_stacks():
    for spacing in (None, [0.5, 0.5]):  # unknown, or no Z step
        with pytest.raises(UserError, match="state no voxel spacing .* give --spacing Z,Y,X or --spatial-dims"):
            choose_spatial_dims([(32, 64, 64)], spacing)
    dims, spacing, warnings, _ = resolve_spatial_dims(3, [(32, 64, 64)], None)
    assert dims == 3 and spacing == [1.0, 1.0, 1.0] and "isotropic voxels assumed" in warnings[0]
    assert resolve_spatial_dims(2, [(32, 64, 64)], None)[:3] == (2, None, [])
    assert ANISOTROPY == 3.0


def test_spacings_must_agree():
    assert common_spacing([None, [1, 2, 2], [1, 2, 2.0001]], ["a", "b", "c"]) == [1, 2, 2]
    assert common_spacing([None, None], ["a", "b"]) is None
    with pytest.raises(UserError, match=r"^c.tif: voxel spacing 2, 2, 2 differs from 1, 2, 2 of a.tif"):
        common_spacing([[1, 2, 2], [1, 2, 2], [2, 2, 2]], ["a.tif", "b.tif", "c.tif"])


def test_patch_shape_is_physical_and_fits_the_network():
    assert patch_shape(64, [1, 1, 1], [16], (100, 100, 100)) == (64, 64, 64)
    # 4x coarser Z: a quarter of the voxels along Z, rounded up to the network's Z multiple
    assert patch_shape(64, [4.0, 1.0, 1.0], [4, 16, 16], (100, 100, 100)) == (16, 64, 64)
    assert patch_shape(64, [1, 1, 1], [16], (20, 200, 40)) == (16, 64, 32)  # clipped to the volume


def test_volumes_train_in_3d_with_their_spacing(tmp_path):
    images, masks = write_volumes(tmp_path, [blobs(0), blobs(1)], spacing=(1.0, 0.5, 0.5))
    texts = _until_patches(train_steps(images=str(images), masks=str(masks), out=str(tmp_path / "run"), **TINY))
    assert any("training in 3D" in t and "anisotropy 2 < 3" in t for t in texts), texts
    # 64 voxels along the finest axis (CPU default): Z 32 at twice the step, clipped to the 16 slices
    assert texts[-1].startswith("3D patches of 16x48x48 voxels (Z x Y x X), spacing 1, 0.5, 0.5"), texts


@pytest.mark.parametrize("volumes, options, message", [
    ([blobs(0), (blobs(1)[0], blobs(1)[1][:, :40])], {}, r"v1.tif: image volume is 16x48x48 .* mask is 16x40x48"),
    ([(blobs(0)[0][0], blobs(0)[1][0])], {"spatial_dims": 3}, r"v0.tif: image shape \(48, 48\) is a 2D image"),
    ([blobs(0)], {"spatial_dims": "auto", "spacing_of_files": None}, r"state no voxel spacing .* --spacing Z,Y,X"),
    ([blobs(0), blobs(1)], {"spacing_of_files": [(1, 1, 1), (2, 1, 1)]}, r"v1.tif: voxel spacing 2, 1, 1 differs"),
])
def test_bad_volumes_are_one_line_and_write_nothing(tmp_path, volumes, options, message):
    options = dict(options)
    files = options.pop("spacing_of_files", (1.0, 1.0, 1.0))
    if files is None:  # no spacing stated: plain TIFFs
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
        for index, (image, mask) in enumerate(volumes):
            tifffile.imwrite(tmp_path / "images" / f"v{index}.tif", image, photometric="minisblack")
            tifffile.imwrite(tmp_path / "masks" / f"v{index}.tif", mask, photometric="minisblack")
        images, masks = tmp_path / "images", tmp_path / "masks"
    else:
        images, masks = write_volumes(tmp_path, volumes, spacing=files)
    before = snapshot(tmp_path)
    args = ["train", "--images", images, "--masks", masks, "--out", tmp_path / "run", "--no-plan", "--device", "cpu"]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", value]
    one_line(cli(*args), message)
    assert snapshot(tmp_path) == before and not (tmp_path / "run" / "last.pt").exists()


def test_plan_only_shows_the_3d_plan(tmp_path):
    images, masks = write_volumes(tmp_path, [blobs(0, (32, 48, 48)), blobs(1, (32, 48, 48))], spacing=(1.0, 0.5, 0.5))
    done = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "run", "--plan-only",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "--spatial-dims 3: stacks of 32+ slices, voxel spacing 1, 0.5, 0.5: anisotropy 2 < 3" in done.stdout
    assert "--spacing 1,0.5,0.5: as the files state it" in done.stdout
    assert "patches of 32x48x48 (Z x Y x X)" in done.stdout, done.stdout
    slices = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "run", "--plan-only",
                 "--device", "cpu", "--spacing", "4,0.5,0.5")
    assert "--spatial-dims 2: voxel spacing 4, 0.5, 0.5: anisotropy 8 >= 3" in slices.stdout, slices.stdout
    assert not (tmp_path / "run").exists()


def test_anisotropic_stacks_train_on_their_slices(tmp_path):
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.training import train

    image, mask = blobs(3, (16, 32, 32))
    images, masks = write_volumes(tmp_path, [(image, mask)], spacing=(4.0, 0.5, 0.5))
    events = []
    result = train(images=str(images), masks=str(masks), out=str(tmp_path / "run"), patch_size=32,
                   **{**TINY, "batch_size": 8}, on_event=events.append)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any(t.startswith("training in 2D: voxel spacing 4, 0.5, 0.5: anisotropy 8 >= 3") for t in texts), texts
    model = load_model(result.best)
    assert model.spatial_dims == 2 and model.config["spatial_dims"] == 2 and model.spacing == [4.0, 0.5, 0.5]
    assert 0 <= result.history[0]["val_dice"] <= 1  # validated on the whole stack, slice by slice
    with pytest.raises(UserError, match="image stack is 16x32x32 .* mask is 15x32x32"):
        train(arrays=[(image, mask[1:])], out=str(tmp_path / "bad"), spatial_dims=2, **TINY)


def test_a_2d_model_does_not_fine_tune_on_volumes(tmp_path, tiny_model):
    images, masks = write_volumes(tmp_path, [blobs(0)])
    with pytest.raises(UserError, match="^the model to fine-tune is 2D but training here is 3D; pick a 3D model or "
                                        "give --spatial-dims 2$"):
        _until_patches(train_steps(images=str(images), masks=str(masks), out=str(tmp_path / "run"), spatial_dims=3,
                                   initial_model=tiny_model, **TINY))


def test_train_predict_evaluate_on_synthetic_volumes(tmp_path):
    from napari_unet_seg.evaluation import evaluate
    from napari_unet_seg.inference import predict
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.training import train

    train_dir, val_dir, test_dir = (write_volumes(tmp_path / name, [blobs(seed + k) for k in range(count)],
                                                  spacing=(1.0, 1.0, 1.0))
                                    for name, seed, count in (("train", 0, 4), ("val", 9, 1), ("test", 20, 1)))
    result = train(images=str(train_dir[0]), masks=str(train_dir[1]), val_images=str(val_dir[0]),
                   val_masks=str(val_dir[1]), out=str(tmp_path / "run"), patch_size=48, lr=0.03, scheduler="none",
                   **{**TINY, "epochs": 12, "width": 0.25})
    model = load_model(result.best)
    assert model.spatial_dims == 3 and model.spacing == [1.0, 1.0, 1.0]
    assert model.config["spatial_dims"] == 3 and model.config["patch_shape"] == [16, 48, 48]
    assert result.best_metrics["val_dice"] > 0.8, result.history
    image, mask = blobs(20)
    labels = predict(model, image, device="cpu")
    assert labels.shape == image.shape
    scores = evaluate(model, *test_dir, device="cpu")
    assert scores["volumes"] == 1 and scores["dice"] > 0.8, scores
    assert scores["dice"] == pytest.approx(2 * (labels & mask).sum() / (labels.sum() + mask.sum()), abs=1e-6)


def test_a_3d_run_resumes_as_if_uninterrupted(tmp_path):
    from napari_unet_seg.training import train

    volumes = [blobs(k, (16, 32, 32)) for k in range(3)]
    options = {**TINY, "spatial_dims": 3, "patch_size": 32, "augment": "light", "val_fraction": 0.3}
    whole = train(arrays=volumes, out=str(tmp_path / "whole"), **{**options, "epochs": 2})
    train(arrays=volumes, out=str(tmp_path / "part"), **{**options, "epochs": 1})
    resumed = train(arrays=volumes, out=str(tmp_path / "part"), resume=True, epochs=2)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    for key in ("train_loss", "val_loss", "val_dice"):
        assert resumed.history[1][key] == pytest.approx(whole.history[1][key], rel=1e-5), key
    with pytest.raises(UserError, match="--spatial-dims 2: the run in .* was trained with --spatial-dims 3"):
        train(arrays=volumes, out=str(tmp_path / "part"), resume=True, epochs=3, spatial_dims=2)


@pytest.mark.slow
@pytest.mark.shared_data
def test_qcanet_nuclei_volume_trains_in_3d(tmp_path, shared_data):
    """The anisotropic (1.75 x 0.8 x 0.8 um) nuclei volume: auto picks 3D, and a few epochs segment it."""
    from napari_unet_seg.evaluation import evaluate
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.training import train

    root = shared_data / "qcanet-embryo-nuclei"
    if not root.exists():
        pytest.skip("qcanet-embryo-nuclei is not in ../shared/data")
    events = []
    result = train(images=str(root / "images"), masks=str(root / "masks"), out=str(tmp_path / "run"), lr=0.03,
                   scheduler="none", on_event=events.append, **{**TINY, "epochs": 8, "width": 0.25})
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any("training in 3D" in t and "anisotropy 2.19 < 3" in t for t in texts), texts
    model = load_model(result.best)
    assert model.spacing == [1.75, 0.8, 0.8] and model.config["patch_shape"] == [32, 64, 64]
    scores = evaluate(model, root / "images", root / "masks", device="cpu")  # its one volume trains and validates
    assert scores["volumes"] == 1 and scores["dice"] > 0.7, (scores["dice"], result.history)


def test_cli_trains_volumes_with_the_spacing_given(tmp_path):
    from napari_unet_seg.model_file import load_model

    images, masks = write_volumes(tmp_path, [blobs(0), blobs(1)], spacing=(1.0, 0.5, 0.5))
    done = cli("train", "--images", images, "--masks", masks, "--out", tmp_path / "run", "--epochs", 1,
               "--batch-size", 2, "--patch-size", 32, "--width", 0.125, "--device", "cpu", "--augment", "none",
               "--spacing", "2,1,1", "--spatial-dims", "3")
    assert done.returncode == 0, done.stderr
    assert "--spatial-dims 3 (yours kept" in done.stderr and "3D patches of 16x32x32 voxels" in done.stderr
    model = load_model(tmp_path / "run" / "best.pt")
    assert model.spatial_dims == 3 and model.spacing == [2.0, 1.0, 1.0]  # given, not the files' 1, 0.5, 0.5
    from napari_unet_seg.config import TrainConfig

    again = TrainConfig.from_dict(model.config).as_command()  # the command that repeats the run
    assert " --spatial-dims 3 " in again and " --spacing 2,1,1 " in f"{again} ", again
