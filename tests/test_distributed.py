"""Distributed training: the helpers in a single process, and two gloo processes started by torchrun."""

import os
import subprocess
import sys

import pytest
import torch

from napari_unet_seg import distributed
from napari_unet_seg.cli import main
from napari_unet_seg.errors import ReportedElsewhere, UserError
from napari_unet_seg.reporting import read_history
from napari_unet_seg.training import RUN_FILES


@pytest.fixture
def alone(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_helpers_alone_are_a_world_of_one(alone):
    assert not distributed.launched() and not distributed.active()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.local_device("cpu") == torch.device("cpu")
    with distributed.process_group("cpu"):  # outside torchrun: no process group
        assert not torch.distributed.is_initialized()
    assert distributed.on_main(lambda a, b: a + b, 2, 3) == 5

    def refuse():
        raise UserError("bad --out")

    with pytest.raises(UserError) as raised:
        distributed.on_main(refuse)
    assert not isinstance(raised.value, ReportedElsewhere)  # the one process reports it itself
    assert distributed.sum_across({"loss": 1.5, "count": 2.0}) == {"loss": 1.5, "count": 2.0}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    distributed.barrier()
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    before = [b.clone() for b in network.buffers()]
    distributed.share_buffers(network)
    assert all(torch.equal(a, b) for a, b in zip(before, network.buffers()))
    assert distributed.wrap(network, torch.device("cpu")) == (network, network)
    assert distributed.sampler(list(range(8)), seed=0) is None


def test_torchrun_processes_that_are_not_joined_refuse_to_train(tmp_path, monkeypatch, synthetic_dir):
    from napari_unet_seg.training import train

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.launched() and not distributed.active()
    images, masks = synthetic_dir
    with pytest.raises(UserError, match="4 processes started by torchrun but they are not joined"):
        train(images=images, masks=masks, out=tmp_path / "run", epochs=1, device="cpu")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    distributed.check_joined()


def torchrun(*args, tee=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               *(["--tee", "3"] if tee else []), "-m", "napari_unet_seg", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, capsys):
    from napari_unet_seg.sample_data import write_synthetic_folder

    # 16 training images of exactly one patch each (so no random crops) and no augmentation: the processes
    # see the same data as one process would. 3 validation images: 2 on rank 0, 1 on rank 1.
    images, masks = write_synthetic_folder(tmp_path / "train", 16, (64, 64))
    val_images, val_masks = write_synthetic_folder(tmp_path / "val", 3, (64, 64), seed=1)
    args = ["train", "--images", images, "--masks", masks, "--val-images", val_images, "--val-masks", val_masks,
            "--width", 0.25, "--patch-size", 64, "--epochs", 6, "--batch-size", 4, "--augment", "none",
            "--lr", 0.01, "--device", "cpu"]
    run = tmp_path / "ddp"
    done = torchrun(*args, "--out", run)
    assert done.returncode == 0, done.stderr[-3000:]
    # one set of files, written by rank 0; progress printed once
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert done.stderr.count("epoch 6/6") == 1 and done.stdout.count("model: ") == 1
    assert "distributed training: 2 processes, 2 patches each per batch" in done.stderr
    two = read_history(run / "history.csv")

    # The metrics of the last epoch are those of its saved model on all validation images (the ranks'
    # shares are summed, not averaged per rank: 2 + 1 images).
    from napari_unet_seg.dataset import mask_to_classes
    from napari_unet_seg.image_io import read_image
    from napari_unet_seg.losses import build_loss
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.pairing import pair_files
    from napari_unet_seg.training import ValPair, validate

    last = load_model(run / "last.pt")
    assert not any(key.startswith("module.") for key in last.network.state_dict())
    pairs = [ValPair(p.image.name, read_image(p.image), mask_to_classes(read_image(p.mask), 2))
             for p in pair_files(val_images, val_masks)]
    again = validate(last, pairs, build_loss("dicece", 2), device=torch.device("cpu"))
    for key in ("val_loss", "val_dice", "val_iou", "val_accuracy"):
        assert two[-1][key] == pytest.approx(again[key], abs=1e-4), key

    # One process, same command. The runs differ only in the shuffling order (DistributedSampler's
    # permutation) and in batch-norm statistics (gloo: each process normalizes its half of the batch).
    # Measured with --seed 0 and 1: last-epoch |delta| of val Dice <= 0.009, val loss <= 0.005, train loss
    # <= 0.004 (every epoch). One process with --seed 0 vs 2 differs by 0.027, 0.017 and 0.034: the
    # tolerances lie between. Both runs must also have learned (Dice well above the 0.22 of an
    # all-foreground guess), so the comparison is not between two untrained models.
    assert main([*map(str, args), "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    one = read_history(tmp_path / "one" / "history.csv")
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == list(range(1, 7))
    assert two[-1]["val_dice"] > 0.6 and one[-1]["val_dice"] > 0.6
    assert two[-1]["val_dice"] == pytest.approx(one[-1]["val_dice"], abs=0.02)
    assert two[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], abs=0.01)
    for a, b in zip(two, one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.01), a["epoch"]

    # A second launch into the same run folder: rank 0 decides, every rank stops, one error line.
    before = (run / "best.pt").read_bytes()
    failed = torchrun(*args, "--out", run, tee=True)
    assert failed.returncode != 0  # torchrun's own status when a process fails
    errors = [line for line in failed.stderr.splitlines() if "napari-unet-seg: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("[default0]:"), failed.stderr[-3000:]
    assert "already holds a run" in errors[0] and "--overwrite" in errors[0]
    assert "exitcode  : 2" in failed.stderr  # rank 0's status in torchrun's report
    assert "napari_unet_seg/" not in failed.stderr  # no traceback from our code on any rank
    assert (run / "best.pt").read_bytes() == before


@pytest.mark.slow
def test_two_processes_train_volumes_in_3d(tmp_path):
    """3D runs under torchrun: one set of files, a 3D model, and the last epoch's figures those of last.pt on
    all three validation volumes (2 on rank 0, 1 on rank 1)."""
    from volume_helpers import blobs, write_volumes

    from napari_unet_seg.dataset import mask_to_classes
    from napari_unet_seg.image_io import read_image
    from napari_unet_seg.losses import build_loss
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.pairing import pair_files
    from napari_unet_seg.training import ValPair, validate

    images, masks = write_volumes(tmp_path / "train", [blobs(k, (16, 32, 32)) for k in range(4)], (1.0, 1.0, 1.0))
    val_images, val_masks = write_volumes(tmp_path / "val", [blobs(10 + k, (16, 32, 32)) for k in range(3)],
                                          (1.0, 1.0, 1.0))
    run = tmp_path / "ddp"
    done = torchrun("train", "--images", images, "--masks", masks, "--val-images", val_images, "--val-masks",
                    val_masks, "--width", 0.125, "--patch-size", 32, "--epochs", 2, "--batch-size", 4, "--augment",
                    "none", "--device", "cpu", "--out", run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
    assert "distributed training: 2 processes, 2 patches each per batch" in done.stderr
    assert done.stderr.count("epoch 2/2") == 1 and "3D patches of 16x32x32 voxels" in done.stderr
    last = load_model(run / "last.pt")
    assert last.spatial_dims == 3
    pairs = [ValPair(p.image.name, read_image(p.image), mask_to_classes(read_image(p.mask), 2, spatial_dims=3))
             for p in pair_files(val_images, val_masks)]
    again = validate(last, pairs, build_loss("dicece", 2), device=torch.device("cpu"))
    for key in ("val_loss", "val_dice", "val_iou", "val_accuracy"):
        assert read_history(run / "history.csv")[-1][key] == pytest.approx(again[key], abs=1e-4), key


@pytest.mark.slow
def test_rank_0_plans_and_every_process_trains_by_its_plan(tmp_path):
    """Without --epochs the plan times training steps, which differ from process to process: rank 0 plans
    alone and every process gets its settings, so all train the same epochs and the run ends."""
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.sample_data import write_synthetic_folder

    images, masks = write_synthetic_folder(tmp_path / "train", 8, (64, 64))
    run = tmp_path / "ddp"
    done = torchrun("train", "--images", images, "--masks", masks, "--width", 0.25, "--budget", 0.05,
                    "--device", "cpu", "--out", run)
    assert done.returncode == 0, done.stderr[-3000:]
    planned = load_model(run / "last.pt").config["epochs"]
    assert done.stderr.count("timed here") == 1 and done.stderr.count(f"epoch {planned}/{planned}") == 1
    assert [r["epoch"] for r in read_history(run / "history.csv")] == list(range(1, planned + 1))


def test_train_plans_through_rank_0(tmp_path, monkeypatch, alone, synthetic_dir):
    planned = []

    def on_main(function, *args):
        planned.append(function.__name__)
        return function(*args)

    monkeypatch.setattr(distributed, "on_main", on_main)
    images, masks = synthetic_dir
    assert main(["train", "--images", str(images), "--masks", str(masks), "--width", "0.25", "--epochs", "1",
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert planned[0] == "_planned_config"  # before the run folder is prepared (also on rank 0)
