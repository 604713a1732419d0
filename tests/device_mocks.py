"""Mocked torch device availability for the device and doctor tests: CPU-only, CUDA GPUs, Apple MPS."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import torch


def cpu_only(monkeypatch) -> None:
    """A CPU-only torch build on Linux (no CUDA, no MPS)."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def cuda_gpus(monkeypatch, count: int = 2, major: int = 9) -> None:
    """A CUDA 12.8 build that sees ``count`` 80 GiB GPUs of compute capability ``major``.0."""
    cpu_only(monkeypatch)
    props = SimpleNamespace(name="NVIDIA Fake", total_memory=80 * 2**30, major=major, minor=0)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: major >= 8)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)


def apple_mps(monkeypatch, macos: str = "15.1") -> None:
    """An Apple Silicon Mac with torch's arm64 build: MPS, no CUDA."""
    cpu_only(monkeypatch)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(platform, "mac_ver", lambda: (macos, ("", "", ""), "arm64"))
