"""Choosing the torch device from ``auto``, ``cuda``, ``cuda:N`` or ``cpu``."""

from __future__ import annotations

import torch

from .errors import UserError

__all__ = ["DEVICES", "resolve_device", "is_out_of_memory", "free_cuda_memory"]

from .config import DEVICES  # noqa: E402  (the choice lists live in config)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without it is a :class:`UserError`."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: no CUDA GPU is available here; use --device cpu or auto")
        return torch.device(name)
    raise UserError(f"device {device!r} is unknown; use auto, cuda or cpu")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU running out of memory (the jobs then retry with smaller batches)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error))


def free_cuda_memory() -> None:
    """Give cached GPU memory back (after an out-of-memory error, or when a job ends)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
