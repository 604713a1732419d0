import threading

import numpy as np
import pytest

from napari_unet_seg.errors import UserError
from napari_unet_seg.events import Batch, Checkpoint, Epoch, Message
from napari_unet_seg.model_file import load_model
from napari_unet_seg.reporting import HISTORY_COLUMNS, read_history
from napari_unet_seg.training import train, train_steps

FAST = dict(batch_size=4, patch_size=32, width=0.25, lr=1e-2, augment="none", device="cpu")


def test_training_learns_and_writes_the_run(tmp_path, synthetic_dir):
    images, masks = synthetic_dir
    events = []
    result = train(images=images, masks=masks, out=tmp_path / "run", epochs=8, on_event=events.append, **FAST)
    history = result.history
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.best_metrics["val_dice"] > history[0]["val_dice"] + 0.2
    assert result.best_metrics["val_dice"] > 0.7
    # files: history.csv consistent with the result, curves, loadable best/last
    assert read_history(tmp_path / "run" / "history.csv")[-1]["epoch"] == 8
    assert list(read_history(tmp_path / "run" / "history.csv")[0]) == list(HISTORY_COLUMNS)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    best = load_model(result.best)
    assert best.metrics["epoch"] == result.best_epoch and best.config["epochs"] == 8
    assert best.normalization["method"] == "percentile" and best.in_channels == 1
    # events: batches, then epoch metrics, and checkpoints
    kinds = {type(e) for e in events}
    assert {Batch, Epoch, Checkpoint, Message} <= kinds
    epochs = [e for e in events if isinstance(e, Epoch)]
    assert epochs[0].metrics.keys() >= {"train_loss", "val_loss", "val_dice", "val_iou", "val_accuracy", "lr"}
    # after the last epoch: the threshold and post-processing chosen on the validation images, in best.pt
    chosen = best.postprocess
    assert chosen.keys() >= {"threshold", "tta", "keep_largest", "fill_holes", "evidence"}
    assert chosen["evidence"]["images"] == 1 and chosen["keep_largest"] is False  # no plan proposed it
    assert chosen["evidence"]["plain_dice"] == pytest.approx(result.best_metrics["val_dice"], abs=1e-4)
    assert chosen["evidence"]["chosen_dice"] >= chosen["evidence"]["plain_dice"]
    texts = [e.text for e in events if isinstance(e, Message)]
    assert texts[-1].startswith("post-processing stored in best.pt: threshold ")
    assert load_model(result.last).postprocess == {}  # the run's state, as the epochs left it


def test_existing_run_is_not_overwritten(tmp_path, synthetic_dir):
    images, masks = synthetic_dir
    train(images=images, masks=masks, out=tmp_path / "run", epochs=1, **FAST)
    before = (tmp_path / "run" / "best.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run.*--overwrite"):
        train(images=images, masks=masks, out=tmp_path / "run", epochs=1, **FAST)
    assert (tmp_path / "run" / "best.pt").read_bytes() == before
    train(images=images, masks=masks, out=tmp_path / "run", epochs=1, overwrite=True, seed=5, **FAST)


def test_cancel_keeps_last_completed_epoch(tmp_path, synthetic_dir):
    images, masks = synthetic_dir
    cancel = threading.Event()
    steps = train_steps(images=images, masks=masks, out=tmp_path / "run", epochs=10, cancel=cancel, **FAST)
    for event in steps:
        if isinstance(event, Epoch) and event.epoch == 2:
            cancel.set()
    # the generator ended: the run holds exactly epochs 1-2
    assert len(read_history(tmp_path / "run" / "history.csv")) == 2
    last = load_model(tmp_path / "run" / "last.pt")
    assert last.metrics["epoch"] == 2
    assert load_model(tmp_path / "run" / "best.pt").postprocess == {}  # a cancelled run is not tuned


@pytest.mark.parametrize("workers", [0, 1])  # batches made on the device / by a DataLoader process
def test_resume_repeats_an_uninterrupted_run(tmp_path, synthetic_dir, workers):
    images, masks = synthetic_dir
    options = dict(images=images, masks=masks, epochs=4, workers=workers, **{**FAST, "augment": "light"})
    straight = train(out=tmp_path / "a", **options)
    cancel = threading.Event()
    steps = train_steps(out=tmp_path / "b", cancel=cancel, **options)
    for event in steps:
        if isinstance(event, Epoch) and event.epoch == 2:
            cancel.set()
    resumed = train(out=tmp_path / "b", resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_dice", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


def test_train_from_arrays_multiclass_and_segnet(tmp_path):
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        labels = np.zeros((48, 48), np.uint8)
        labels[5:20, 5:20], labels[25:40, 25:45] = 1, 2
        image = (labels * 80 + rng.normal(0, 10, labels.shape)).astype(np.float32)
        pairs.append((image, labels))
    result = train(arrays=pairs, out=tmp_path / "mc", epochs=1, classes=3, loss="ce", **FAST)
    model = load_model(result.best)
    assert model.num_classes == 3
    result = train(arrays=[(p[0], p[1] > 0) for p in pairs], out=tmp_path / "sn", epochs=1, model="segnet",
                   **{**FAST, "width": 0.125})
    assert load_model(result.best).architecture["name"] == "segnet"


def test_warnings_for_blank_masks_and_big_patches(tmp_path):
    pairs = [(np.random.rand(20, 20), np.zeros((20, 20)))] * 2
    events = []
    train(arrays=pairs, out=tmp_path / "r", epochs=1, on_event=events.append,
          **{**FAST, "patch_size": 64, "batch_size": 16})
    texts = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("all background" in t for t in texts)
    assert any("larger than every image" in t for t in texts)
    assert any("--batch-size 16 is larger" in t for t in texts)
    assert not any("blank" in t for t in texts)


def test_blank_images_are_named_in_a_warning(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    pairs = [(np.zeros((32, 32)), mask), (np.random.rand(32, 32), mask), (np.full((32, 32), 7.0), mask)]
    events = []
    train(arrays=pairs, out=tmp_path / "r", epochs=1, on_event=events.append, **FAST)
    texts = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert [t for t in texts if "blank" in t] == [
        "2 of the 3 training images are blank (one value everywhere: array 0, array 2): nothing to learn from "
        "them; check the images folder"]


@pytest.mark.parametrize("option, value, match", [
    ("model", "vnet", "--model 'vnet' is unknown"), ("loss", "l2", "--loss 'l2'"), ("epochs", 0, "--epochs"),
    ("val_fraction", 1.5, "--val-fraction"), ("classes", 1, "--classes"), ("device", "tpu", "device 'tpu'"),
])
def test_bad_options(tmp_path, synthetic_dir, option, value, match):
    images, masks = synthetic_dir
    with pytest.raises(UserError, match=match):
        train(images=images, masks=masks, out=tmp_path / "r", **{**FAST, "epochs": 1, option: value})


def _flaky_network(monkeypatch, fails) -> list[int]:
    """Make the network raise CUDA's out-of-memory error in training whenever ``fails(batch)``; return the
    sizes of the batches it trained on."""
    import torch

    import napari_unet_seg.training as training

    trained, real_build = [], training.build_network

    def build(*args, **kwargs):
        network = real_build(*args, **kwargs)
        forward = network.forward

        def flaky(x):
            if network.training:
                if fails(x.shape[0]):
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                trained.append(x.shape[0])
            return forward(x)

        network.forward = flaky
        return network

    monkeypatch.setattr(training, "build_network", build)
    return trained


def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path, monkeypatch):
    from napari_unet_seg.sample_data import synthetic_pair

    trained = _flaky_network(monkeypatch, lambda batch: batch > 2)
    pairs = [synthetic_pair((64, 64), seed=i) for i in range(3)]  # 2 training images: 8 patches of 32
    events = []
    result = train(arrays=pairs, out=tmp_path / "run", epochs=2, on_event=events.append, **FAST)
    warnings = [e.text for e in events if isinstance(e, Message) and "memory" in e.text]
    assert warnings == ["out of GPU memory: batch size lowered to 2 for the rest of the run"]
    assert [e.level for e in events if isinstance(e, Message) and "memory" in e.text] == ["warning"]
    assert set(trained) == {2} and sum(trained) == 2 * 8  # the failed batch was redone, no patch lost
    batches = {e.epoch: e.batches for e in events if isinstance(e, Batch)}
    assert batches == {1: 2, 2: 4}  # epoch 2's loader was rebuilt with the smaller batch
    assert [row["epoch"] for row in result.history] == [1, 2] and load_model(result.last).metrics["epoch"] == 2


def test_out_of_memory_with_batch_size_one_is_a_user_error(tmp_path, monkeypatch):
    _flaky_network(monkeypatch, lambda batch: True)
    pairs = [(np.random.rand(32, 32), np.random.rand(32, 32) > 0.5)] * 2
    with pytest.raises(UserError, match="out of GPU memory even with batch size 1; use a smaller --patch-size"):
        train(arrays=pairs, out=tmp_path / "run", epochs=1, **FAST)


def test_paths_stored_in_a_model_file_are_never_written_to(tmp_path, synthetic_dir):
    import shutil

    images, masks = synthetic_dir
    train(images=images, masks=masks, out=tmp_path / "a", epochs=1, **FAST)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")  # the `out` stored in b's model files now names a folder that is gone
    assert load_model(tmp_path / "b" / "last.pt").config["out"] == str(tmp_path / "a")
    resumed = train(out=tmp_path / "b", resume=True, epochs=2)
    assert resumed.run_dir == tmp_path / "b" and len(read_history(tmp_path / "b" / "history.csv")) == 2
    tuned = train(images=images, masks=masks, out=tmp_path / "c", epochs=1, initial_model=tmp_path / "b" / "best.pt",
                  **FAST)
    assert tuned.best == tmp_path / "c" / "best.pt" and tuned.best.exists()
    assert not (tmp_path / "a").exists()


def test_fine_tuning_keeps_the_starting_models_architecture_and_classes(tmp_path):
    from napari_unet_seg.events import Message

    rng = np.random.default_rng(0)
    pairs = [(rng.random((48, 48)).astype(np.float32), rng.integers(0, 3, (48, 48))) for _ in range(3)]
    three = train(arrays=pairs, out=tmp_path / "three", epochs=1, classes=3, model="basic_unet",
                  **{**FAST, "width": 0.5})
    events = []
    tuned = train(arrays=pairs, out=tmp_path / "tuned", epochs=1, initial_model=three.best, on_event=events.append,
                  **FAST)  # classes 2, unet, width 0.25 by default: the starting model's win
    model = load_model(tuned.best)
    assert (model.num_classes, model.architecture["name"], model.config["width"]) == (3, "basic_unet", 0.5)
    assert model.config["model"] == "basic_unet" and model.config["classes"] == 3
    assert any(isinstance(e, Message) and "has 3 classes" in e.text for e in events)


@pytest.mark.slow
def test_long_run_does_not_grow_host_memory(tmp_path):
    """The quick form of benchmarks/bench_memory.py: RSS after epochs 10, 20 and 30.

    A leak grows every interval; glibc's heap, kept during a job (heap.py), may step up once while it
    extends and then stays flat (measured: +12 MiB between epochs 10 and 20 of one 80-epoch run, then
    flat to epoch 80; none in a 40-epoch run; +24 MiB in a CI test process). So the smaller of the two
    10-epoch growths must stay small, and the whole growth bounded. Measured in a fresh process, as the
    benchmark runs: inside the test process the heap left by hundreds of earlier tests steps up on its own
    (+4.1 and +5.3 MiB in one CI run, against +12.6 then +0.5 alone)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('bench_memory', sys.argv[1])\n"
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)\n"
            "print(json.dumps(bench.measure(sys.argv[2], epochs=30, mark=10, also=(20,))))")
    done = subprocess.run([sys.executable, "-c", code, str(script), str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rss = {int(epoch): value for epoch, value in result["rss_at"].items()}
    # MiB; a figure kept per epoch (> 0.4 MiB an epoch) would show in both intervals
    assert min(rss[20] - rss[10], rss[30] - rss[20]) < 4 and result["growth"] < 40, result


@pytest.mark.parametrize("extra", [{}, {"resize": 40}])  # patches / whole images resized for the network
def test_val_dice_that_picks_best_is_what_evaluate_reports(tmp_path, extra):
    from napari_unet_seg.evaluation import evaluate
    from napari_unet_seg.sample_data import write_synthetic_folder

    images, masks = write_synthetic_folder(tmp_path / "train", 4, (72, 56))
    val_images, val_masks = write_synthetic_folder(tmp_path / "val", 3, (80, 64), seed=5)
    result = train(images=images, masks=masks, val_images=val_images, val_masks=val_masks, out=tmp_path / "run",
                   epochs=2, **{**FAST, **extra})
    plain = dict(threshold=0.5, tta=False, keep_largest=False, fill_holes=False)  # as validation predicts
    scores = evaluate(result.best, val_images, val_masks, device="cpu", **plain)
    assert 0.05 < scores["dice"] < 1  # a partly trained model: the comparison is between real scores
    assert result.best_metrics["val_dice"] == pytest.approx(scores["dice"], abs=1e-4)
    assert result.best_metrics["val_iou"] == pytest.approx(scores["iou"], abs=1e-4)
    assert result.best_metrics["val_accuracy"] == pytest.approx(scores["accuracy"], abs=1e-4)
    # by default evaluate applies the post-processing chosen on these images: the Dice the choice recorded
    evidence = load_model(result.best).postprocess["evidence"]
    assert evidence["plain_dice"] == pytest.approx(scores["dice"], abs=1e-4)
    assert evaluate(result.best, val_images, val_masks, device="cpu")["dice"] == pytest.approx(
        evidence["chosen_dice"], abs=1e-4)


def test_cancel_ends_in_the_engines_cancelled_branch_and_keeps_the_files(tmp_path, synthetic_dir):
    from napari_unet_seg.events import drain

    images, masks = synthetic_dir
    cancel = threading.Event()
    events = []

    def on_event(event):  # set mid-epoch 3; the generator is drained, so the engine itself ends the run
        events.append(event)
        if isinstance(event, Batch) and event.epoch == 3 and event.batch == 1:
            cancel.set()

    steps = train_steps(images=images, masks=masks, out=tmp_path / "run", epochs=10, cancel=cancel, curves_every=0,
                        **FAST)
    result = drain(steps, on_event)
    assert result.status == "cancelled" and [row["epoch"] for row in result.history] == [1, 2]
    assert "cancelled during epoch 3; the run's files hold epoch 2" in [e.text for e in events
                                                                         if isinstance(e, Message)]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "curves.png", "history.csv", "last.pt"]
    assert len(read_history(run / "history.csv")) == 2 and load_model(run / "last.pt").metrics["epoch"] == 2
    assert (run / "curves.png").stat().st_size > 1000  # curves_every 0: drawn by the cancelled branch


def test_fine_tune_records_its_parent_scores_the_start_and_says_when_it_is_worse(tmp_path, tiny_model, capsys):
    import hashlib
    from argparse import Namespace

    from napari_unet_seg.commands import run_info
    from napari_unet_seg.evaluation import evaluate
    from napari_unet_seg.sample_data import write_synthetic_folder

    images, masks = write_synthetic_folder(tmp_path / "train", 3, (64, 64), seed=11)
    val_images, val_masks = write_synthetic_folder(tmp_path / "val", 2, (64, 64), seed=12)
    events = []
    tuned = train(images=images, masks=masks, val_images=val_images, val_masks=val_masks, out=tmp_path / "run",
                  epochs=1, initial_model=tiny_model, on_event=events.append, **{**FAST, "lr": 5.0})
    start = evaluate(tiny_model, val_images, val_masks, device="cpu")["dice"]
    assert tuned.start_dice == pytest.approx(start, abs=1e-4) and start > 0.5
    assert tuned.best_metrics["val_dice"] < tuned.start_dice  # lr 5 wrecks it
    worse = [e.text for e in events if isinstance(e, Message) and "worse" in e.text]
    assert len(worse) == 1 and str(tiny_model.resolve()) in worse[0] and f"{start:.4f}" in worse[0]
    assert [e for e in events if isinstance(e, Message) and "worse" in e.text][0].level == "warning"
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    parent = load_model(tuned.best).info["parent"]
    assert parent == {"path": str(tiny_model.resolve()), "sha256": sha}
    assert load_model(tuned.last).info["parent"] == parent
    resumed = train(images=images, masks=masks, val_images=val_images, val_masks=val_masks, out=tmp_path / "run",
                    resume=True, epochs=2)
    assert load_model(resumed.last).info["parent"] == parent and resumed.start_dice == tuned.start_dice
    run_info(Namespace(model=str(tuned.best)))
    assert f"fine-tuned from: {tiny_model.resolve()} (sha256 {sha})" in capsys.readouterr().out
    scratch = train(images=images, masks=masks, out=tmp_path / "new", epochs=1, **FAST)
    assert scratch.start_dice is None and "parent" not in load_model(scratch.best).info


def test_fine_tune_from_a_shipped_model_records_its_name(tmp_path):
    import hashlib

    from napari_unet_seg.pretrained import pretrained_path
    from napari_unet_seg.sample_data import synthetic_pair

    pairs = [synthetic_pair((32, 32), seed=i) for i in range(2)]
    tuned = train(arrays=pairs, out=tmp_path / "run", epochs=1, initial_model="em-membranes",
                  **{**FAST, "batch_size": 2})
    sha = hashlib.sha256(pretrained_path("em-membranes").read_bytes()).hexdigest()
    assert load_model(tuned.best).info["parent"] == {"name": "em-membranes", "sha256": sha}
    assert isinstance(tuned.start_dice, float)


def _files(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_run_folder_is_never_an_input_folder(tmp_path, synthetic_dir):
    import shutil

    from napari_unet_seg.pairing import pair_files

    data = tmp_path / "data"
    for kind, source in zip(("images", "masks", "val_images", "val_masks"), synthetic_dir * 2):
        shutil.copytree(source, data / kind)
    before = _files(data)
    folders = {k: data / k for k in ("images", "masks", "val_images", "val_masks")}
    for out in list(folders.values()) + [data / "images" / "x" / ".."]:
        with pytest.raises(UserError, match=rf"--out {out}: is the input folder .* choose another folder"):
            train(**folders, out=out, epochs=1, **FAST)
    with pytest.raises(UserError, match="would take run.zarr for one of its images"):
        train(**folders, out=data / "masks" / "run.zarr", epochs=1, **FAST)
    assert _files(data) == before
    # a run folder inside an input folder, or above one, is harmless: the listing does not look into subfolders
    for out in (data / "masks" / "run", data):
        train(**folders, out=out, epochs=1, **FAST)
        assert len(pair_files(data / "images", data / "masks")) == 8
    assert {k: v for k, v in _files(data).items() if k in before} == before


def test_a_run_never_replaces_the_model_it_starts_from(tmp_path, synthetic_dir, tiny_model):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_model, run / "best.pt")
    before = _files(tmp_path)
    images, masks = synthetic_dir
    for start in (run / "best.pt", load_model(run / "best.pt")):
        with pytest.raises(UserError, match=rf"--out {run}: holds best.pt, the model to start from"):
            train(images=images, masks=masks, out=run, epochs=1, overwrite=True, initial_model=start, **FAST)
    assert _files(tmp_path) == before


def test_a_data_error_leaves_no_run_folder_behind(tmp_path):
    import tifffile

    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "a.tif", np.zeros((1, 32, 32), np.uint8))  # one slice: no volume
    out = tmp_path / "runs" / "new"
    with pytest.raises(UserError, match="a.tif: volume of shape .* has 1 slice; 3D training needs at least 2"):
        train(images=tmp_path / "images", masks=tmp_path / "masks", out=out, spatial_dims="3", epochs=1, **FAST)
    assert not (tmp_path / "runs").exists()
