"""Resume is the run it claims to be: last.pt is the TrainingRun's state, schedules re-planned, state restored."""

import math
import os
import threading

import numpy as np
import pytest
import torch

from napari_unet_seg.errors import UserError
from napari_unet_seg.events import Epoch
from napari_unet_seg.model_file import load_model, load_training_state
from napari_unet_seg.run_lock import LOCK_NAME, clean_stale_files, run_lock
from napari_unet_seg.sample_data import synthetic_pair
from napari_unet_seg.training import train, train_steps
from napari_unet_seg.training_run import cosine_factor, read_run_state

FAST = dict(batch_size=4, patch_size=32, width=0.25, lr=1e-2, augment="none", device="cpu")


@pytest.fixture(scope="module")
def pairs():
    return [synthetic_pair((48, 48), seed=i) for i in range(4)]


def _cancel_after(steps, epoch: int, cancel: threading.Event) -> None:
    for event in steps:
        if isinstance(event, Epoch) and event.epoch == epoch:
            cancel.set()


def _weights(path) -> dict:
    return load_model(path).network.state_dict()


def test_last_pt_is_the_training_runs_state(tmp_path, pairs, monkeypatch):
    import napari_unet_seg.training_run as training_run

    held = {}
    real_save = training_run.TrainingRun.save

    def save(self, run_dir, improved):
        yield from real_save(self, run_dir, improved)
        held.update(self.state_dict())

    monkeypatch.setattr(training_run.TrainingRun, "save", save)
    train(arrays=pairs, out=tmp_path / "r", epochs=2, scheduler="plateau", **FAST)
    stored = read_run_state(tmp_path / "r" / "last.pt")
    assert stored.keys() == held.keys() >= {"network", "optimizer", "scheduler", "scaler", "waited", "rng",
                                            "history", "best_score", "best_epoch", "epoch"}
    for key, value in held["network"].items():
        assert torch.equal(stored["network"][key], value), key
    assert stored["epoch"] == 2 and stored["history"] == held["history"]
    assert stored["scheduler"] == held["scheduler"] and stored["waited"] == held["waited"]
    assert torch.equal(stored["rng"]["torch"], held["rng"]["torch"])


def test_extending_a_run_follows_the_schedule_of_the_longer_run(tmp_path, pairs):
    """docs/reliability.md: epochs resumed with a new --epochs take the lr a fresh run of that length has."""
    two = train(arrays=pairs, out=tmp_path / "ext", epochs=2, **FAST)
    assert [r["lr"] for r in two.history] == pytest.approx([1e-2, 1e-2 * cosine_factor(1, 2)])
    extended = train(arrays=pairs, out=tmp_path / "ext", resume=True, epochs=4)
    fresh = train(arrays=pairs, out=tmp_path / "fresh", epochs=4, **FAST)
    lrs = [r["lr"] for r in extended.history]
    assert lrs[:2] == pytest.approx([r["lr"] for r in two.history])
    assert lrs[2:] == pytest.approx([r["lr"] for r in fresh.history][2:])
    assert lrs == pytest.approx([1e-2, 5.05e-3, 5.05e-3, 1.5498e-3], rel=1e-4)  # issue 14's figures, lr 1e-2
    # weights: epochs 3-4 ran from epoch 2's state with the larger lr of epoch 2 behind them, so they differ
    # from the fresh run; with a constant lr the extended run is the fresh run, weight for weight
    assert not all(torch.equal(a, b) for a, b in zip(_weights(extended.last).values(),
                                                       _weights(fresh.last).values()))
    train(arrays=pairs, out=tmp_path / "c2", epochs=2, scheduler="none", **FAST)
    constant = train(arrays=pairs, out=tmp_path / "c2", resume=True, epochs=4)
    straight = train(arrays=pairs, out=tmp_path / "c4", epochs=4, scheduler="none", **FAST)
    for (key, a), b in zip(_weights(constant.last).items(), _weights(straight.last).values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), key
    assert [r["lr"] for r in constant.history] == [1e-2] * 4


def test_changed_lr_and_weight_decay_apply_on_resume(tmp_path, pairs):
    train(arrays=pairs, out=tmp_path / "r", epochs=2, **FAST)
    resumed = train(arrays=pairs, out=tmp_path / "r", resume=True, epochs=3, lr=1e-3, weight_decay=0.0)
    assert resumed.history[2]["lr"] == pytest.approx(1e-3 * cosine_factor(2, 3))
    groups = load_training_state(tmp_path / "r" / "last.pt")["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == 0.0
    assert load_model(tmp_path / "r" / "last.pt").config["lr"] == 1e-3


def _enabled_cpu_scaler(monkeypatch):
    """A GradScaler that runs on the CPU and changes its scale often, so that its state matters."""
    import napari_unet_seg.training_run as training_run

    monkeypatch.setattr(training_run, "_grad_scaler",
                        lambda enabled: torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=3))


def test_resume_after_a_kill_in_the_early_stop_phase_repeats_the_run(tmp_path, pairs, monkeypatch):
    _enabled_cpu_scaler(monkeypatch)
    # lr 1e-9: val Dice never improves after epoch 1, so the early-stop counter runs 1, 2, 3: stop at epoch 4
    options = dict(arrays=pairs, epochs=10, early_stop=3, **{**FAST, "lr": 1e-9})
    straight = train(out=tmp_path / "a", **options)
    assert straight.status == "early_stopped" and len(straight.history) == 4
    cancel = threading.Event()
    _cancel_after(train_steps(out=tmp_path / "b", cancel=cancel, **options), 2, cancel)
    state = load_training_state(tmp_path / "b" / "last.pt")
    assert state["epoch"] == 2 and state["waited"] == 1 and state["scaler"]["scale"] != 2.0**4
    resumed = train(arrays=pairs, out=tmp_path / "b", resume=True)
    assert resumed.status == "early_stopped" and [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    a, b = (load_training_state(tmp_path / name / "last.pt") for name in "ab")
    assert a["scaler"] == b["scaler"] and a["waited"] == b["waited"] == 3
    for x, y in zip(straight.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_dice", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), key
    for (key, x), y in zip(_weights(straight.last).items(), _weights(resumed.last).values()):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7), key


@pytest.mark.parametrize("option, value", [("optimizer", "sgd"), ("model", "segnet"), ("width", 0.5),
                                           ("classes", 3), ("seed", 4)])
def test_resume_refuses_settings_that_cannot_change(tmp_path, pairs, option, value):
    train(arrays=pairs, out=tmp_path / "r", epochs=1, **FAST)
    before = (tmp_path / "r" / "last.pt").read_bytes()
    flag = "--" + option.replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} {value}: the run in .* was trained with {flag} .*cannot change"):
        train(arrays=pairs, out=tmp_path / "r", resume=True, epochs=2, **{option: value})
    assert (tmp_path / "r" / "last.pt").read_bytes() == before


def test_resume_refuses_another_kind_of_images(tmp_path, pairs):
    train(arrays=pairs, out=tmp_path / "r", epochs=1, **FAST)
    colour = [(np.stack([image] * 3, axis=-1), mask) for image, mask in pairs]
    with pytest.raises(UserError, match="trained on gray images but these are colour"):
        train(arrays=colour, out=tmp_path / "r", resume=True, epochs=2)


def test_a_second_run_on_a_locked_folder_gets_one_line(tmp_path, pairs):
    cancel = threading.Event()
    first = train_steps(arrays=pairs, out=tmp_path / "r", epochs=3, cancel=cancel, **FAST)
    next(first)  # the first run holds the folder
    assert (tmp_path / "r" / LOCK_NAME).read_text() == str(os.getpid())
    with pytest.raises(UserError, match=r"--out .*r: another training run \(process \d+\) is writing to this "
                                        "folder; wait for it to end or choose another --out"):
        train(arrays=pairs, out=tmp_path / "r", epochs=1, overwrite=True, **FAST)
    first.close()  # any exit releases the lock
    assert not (tmp_path / "r" / LOCK_NAME).exists()
    train(arrays=pairs, out=tmp_path / "r", epochs=1, overwrite=True, **FAST)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["best.pt", "curves.png", "history.csv", "last.pt"]


def test_lock_is_released_on_error_and_a_dead_processes_lock_is_taken_over(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text("999999999")  # left by a killed run: no process holds it
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())


def test_stale_temporary_files_of_killed_saves_are_removed(tmp_path, pairs):
    run = tmp_path / "r"
    train(arrays=pairs, out=run, epochs=1, **FAST)
    stale = [run / ".last.abc123.pt.tmp", run / ".best.x9.pt.tmp", run / ".history.q.csv.tmp", run / ".write-test"]
    for path in stale:
        path.write_bytes(b"half a file")
    mine = run / "notes.tmp"
    mine.write_text("the user's")
    train(arrays=pairs, out=run, resume=True, epochs=2)
    assert not any(path.exists() for path in stale) and mine.read_text() == "the user's"
    assert clean_stale_files(run, ["last.pt"]) == []


def test_cosine_factor_spans_lr_to_a_hundredth():
    assert cosine_factor(0, 4) == 1.0 and cosine_factor(4, 4) == pytest.approx(0.01)
    assert cosine_factor(2, 4) == pytest.approx(0.505) and not math.isnan(cosine_factor(9, 4))


def test_cli_refuses_a_second_run_and_a_killed_runs_lock_is_taken_over(tmp_path, synthetic_dir):
    import signal
    import subprocess
    import sys
    import time

    from napari_unet_seg.reporting import read_history

    images, masks = synthetic_dir
    run = tmp_path / "r"
    args = [sys.executable, "-m", "napari_unet_seg", "train", "--images", str(images), "--masks", str(masks),
            "--width", "0.25", "--patch-size", "32", "--batch-size", "4", "--augment", "none", "--device", "cpu"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen([*args, "--out", str(run), "--epochs", "500"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (run / "history.csv").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert (run / "history.csv").exists(), "the first run wrote no epoch"
        second = subprocess.run([*args, "--out", str(run), "--epochs", "1", "--overwrite"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # the first run was writing all along
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another training run (process {first.pid}) is writing" in lines[0], lines
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run / LOCK_NAME).exists()  # left behind by the killed run; the kernel released its flock
    done_epochs = load_training_state(run / "last.pt")["epoch"]  # history.csv is written after last.pt
    resumed = subprocess.run([*args[:3], "train", "--out", str(run), "--resume", "--epochs", str(done_epochs + 1)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_history(run / "history.csv")) == done_epochs + 1 and not (run / LOCK_NAME).exists()
