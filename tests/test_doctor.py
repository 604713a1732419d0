"""``napari-unet-seg doctor``: the report and the fixes, with CUDA and MPS availability mocked, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from device_mocks import apple_mps, cpu_only, cuda_gpus
from napari_unet_seg import doctor


def line(report: list[str], key: str) -> str:
    return next(entry for entry in report if entry.startswith(key + ":"))


def test_cpu_only_report(monkeypatch):
    cpu_only(monkeypatch)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: [])
    report = doctor.diagnose()
    assert "build CPU-only" in line(report, "torch")
    assert "has no CUDA support; install a CUDA build of torch" in line(report, "cuda")
    assert not any(entry.startswith("gpu ") for entry in report)
    assert line(report, "auto").startswith("auto:       cpu (")
    assert "no CUDA GPU (CPU-only torch build) and no MPS" in line(report, "auto")
    assert line(report, "precision").startswith("precision:  cpu: bf16 ")
    assert f"torch {torch.get_num_threads()} intra-op" in line(report, "threads")


def test_gpu_present_but_torch_cpu_only_says_what_to_install(monkeypatch):
    cpu_only(monkeypatch)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: ["NVIDIA RTX 4090"])
    fixes = doctor.problems()
    assert any("NVIDIA GPU is present (NVIDIA RTX 4090) but torch" in fix and "built without CUDA" in fix
               and "pip install torch --index-url https://download.pytorch.org/whl/cu128" in fix for fix in fixes)


def test_cuda_report_lists_each_gpu(monkeypatch):
    cuda_gpus(monkeypatch, count=2, major=9)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: ["580.65", "580.65"])
    report = doctor.diagnose()
    assert "build CUDA 12.8" in line(report, "torch")
    gpus = [entry for entry in report if entry.startswith("gpu ")]
    assert gpus == [f"gpu {i}:      NVIDIA Fake, 80.0 GiB, compute capability 9.0, driver 580.65" for i in (0, 1)]
    assert line(report, "cudnn").endswith("91000")
    assert "torch sees 2 CUDA GPU(s)" in line(report, "auto")
    assert line(report, "precision") == "precision:  cuda: bf16 native, fp16 tensor cores"
    assert not any("CUDA" in fix for fix in doctor.problems())


def test_old_gpu_has_no_native_bf16(monkeypatch):
    cuda_gpus(monkeypatch, count=1, major=6)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: [])
    assert line(doctor.diagnose(), "precision") == "precision:  cuda: bf16 not native, fp16 no tensor cores"


def test_cuda_build_that_sees_no_gpu_is_a_problem(monkeypatch):
    cpu_only(monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: [])
    assert any("built for CUDA 12.8 but finds no GPU" in fix for fix in doctor.problems())


def test_mps_report(monkeypatch):
    apple_mps(monkeypatch, macos="15.1")
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: [])
    report = doctor.diagnose()
    assert line(report, "mps") == "mps:        available"
    assert line(report, "auto").startswith("auto:       mps (Apple GPU), because no CUDA GPU")
    assert line(report, "precision") == "precision:  mps: bf16 native, fp16 native"
    apple_mps(monkeypatch, macos="13.6")
    assert line(doctor.diagnose(), "precision") == "precision:  mps: bf16 needs macOS 14, fp16 native"


def test_mac_without_mps_is_a_problem(monkeypatch):
    apple_mps(monkeypatch)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda field: [])
    assert any("no MPS support" in fix for fix in doctor.problems())


def test_one_omp_thread_on_many_cores_is_a_problem(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(doctor.os, "cpu_count", lambda: 8)
    assert any(fix.startswith("OMP_NUM_THREADS=1 limits torch to one of 8 CPUs") for fix in doctor.problems())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_unet_seg", "doctor", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_doctor():
    out = run_cli()
    assert out.returncode == 0, out.stderr
    keys = [entry.split(":")[0] for entry in out.stdout.splitlines()]
    for key in ("python", "torch", "cuda", "cudnn", "mps", "auto", "precision", "threads", "qt", "fix"):
        assert key in keys


@pytest.mark.skipif(torch.cuda.is_available() or torch.version.cuda, reason="needs a CPU-only torch build")
def test_cli_doctor_device_cuda_on_cpu_only_build():
    out = run_cli("--device", "cuda")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "has no CUDA support; install a CUDA build of torch" in out.stderr


def test_cli_doctor_device_cpu():
    out = run_cli("--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "--device cpu: usable, cpu (" in out.stdout


def test_cli_doctor_unknown_device_fails_before_the_report():
    out = run_cli("--device", "tpu")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "napari-unet-seg: error: device 'tpu' is unknown; use auto, cuda, cuda:N, mps or cpu"
