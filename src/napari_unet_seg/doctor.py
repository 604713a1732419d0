"""``napari-unet-seg doctor``: what this machine offers the jobs (Python, torch build, GPUs, precisions,
threads, Qt) and, for each common install problem found, one line saying what to install or set."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys

import torch

from .device import (TORCH_INSTALL, auto_device, cuda_problem, describe_device, gpu_summary, mps_problem,
                     physical_cores, torch_build)

__all__ = ["diagnose", "problems"]


def _nvidia_smi(field: str) -> list[str]:
    """``nvidia-smi --query-gpu=FIELD`` per GPU (empty without the tool or a driver)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _gpu_lines() -> list[str]:
    drivers = _nvidia_smi("driver_version")
    lines = []
    for index in range(torch.cuda.device_count()):
        driver = f", driver {drivers[index]}" if index < len(drivers) else ""
        lines.append(f"gpu {index}:      {gpu_summary(index)}{driver}")
    return lines


def _cpu_precision() -> str:
    try:
        bf16, fp16 = torch.ops.mkldnn._is_mkldnn_bf16_supported(), torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):
        bf16 = fp16 = False
    return f"bf16 {'native' if bf16 else 'emulated (slow)'}, fp16 {'native' if fp16 else 'emulated (slow)'}"


def _precision(device: torch.device) -> str:
    """Whether bf16 and fp16 run natively on ``device`` (mixed precision is worth it only then)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        try:
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = torch.cuda.is_bf16_supported()
        return f"bf16 {'native' if bf16 else 'not native'}, fp16 {'tensor cores' if major >= 7 else 'no tensor cores'}"
    if device.type == "mps":
        macos = tuple(int(p) for p in (platform.mac_ver()[0] or "0").split(".")[:1])
        return f"bf16 {'native' if macos >= (14,) else 'needs macOS 14'}, fp16 native"
    return _cpu_precision()


def _qt_binding() -> str | None:
    return next((b for b in ("PyQt6", "PyQt5", "PySide6", "PySide2") if importlib.util.find_spec(b)), None)


def diagnose() -> list[str]:
    """The report, one fact per line."""
    picked, why = auto_device()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    threads = (f"torch {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op; "
               f"{os.cpu_count()} logical CPUs, {physical_cores() or '?'} physical cores")
    omp = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    lines = [f"python:     {sys.version.split()[0]} ({sys.executable}) on {platform.platform()}",
             f"torch:      {torch.__version__}, build {torch_build()}",
             f"cuda:       {'available' if torch.cuda.is_available() else 'no: ' + cuda_problem()}",
             *_gpu_lines(),
             f"cudnn:      {cudnn if cudnn else 'not available'}",
             f"mps:        {'available' if torch.backends.mps.is_available() else 'no: ' + mps_problem()}",
             f"auto:       {describe_device(picked)}, because {why}",
             f"precision:  {picked.type}: {_precision(picked)}",
             f"threads:    {threads}" + "".join(f", {k}={v}" for k, v in omp.items()),
             f"qt:         {_qt_binding() or 'no Qt binding'}"]
    return lines


def problems() -> list[str]:
    """One line per common install problem found here: what is wrong and what to install or set."""
    found = []
    gpus_on_machine = _nvidia_smi("name")
    if gpus_on_machine and not torch.version.cuda:
        found.append(f"an NVIDIA GPU is present ({gpus_on_machine[0]}) but torch {torch.__version__} is built "
                     f"without CUDA: pip install torch --index-url https://download.pytorch.org/whl/cu128 "
                     f"(pick the CUDA version your driver supports at {TORCH_INSTALL})")
    elif torch.version.cuda and not torch.cuda.is_available():
        found.append(cuda_problem())
    if platform.system() == "Darwin" and platform.machine() == "arm64" and not torch.backends.mps.is_available():
        found.append(mps_problem())
    if platform.system() == "Darwin" and platform.machine() == "x86_64" and "arm" in platform.processor().lower():
        found.append("this Python runs under Rosetta (x86_64): install an arm64 Python to use the Apple GPU")
    if os.environ.get("OMP_NUM_THREADS") == "1" and (os.cpu_count() or 1) > 2:
        found.append(f"OMP_NUM_THREADS=1 limits torch to one of {os.cpu_count()} CPUs: unset it for faster CPU jobs")
    if not _qt_binding():
        found.append("no Qt binding: napari's widgets need one: pip install 'napari-unet-seg[qt]'")
    return found
