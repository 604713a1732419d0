"""A rough memory estimate of a training batch, checked before anything is allocated.

``--patch-size 40000`` or ``--resize 50000`` would otherwise die in numpy's ``MemoryError`` (or the
machine's out-of-memory killer) after the data are read. The estimate counts the batch (up to RGB
input, normalized copy and mask) and the network's layer outputs, kept for the backward pass; it is
compared with the memory free now: RAM from ``/proc/meminfo`` (or ``os.sysconf``), and GPU memory when
training on CUDA and torch is loaded already (it is never imported just for this check).
"""

from __future__ import annotations

import math
import os
import sys

from .errors import UserError

__all__ = ["ACTIVATION_BYTES", "ACTIVATION_BYTES_3D", "training_bytes", "available_ram", "available_gpu", "check_training_memory",
           "format_bytes"]

#: Bytes of layer outputs per input pixel of one sample at width 1, in training mode: the sum over the
#: leaf modules' outputs, measured with forward hooks (tests/test_config.py measures them again). Peak
#: memory of a CPU training step (forward, backward, AdamW; RGB, 256 px, batch 4) measured 0.83x to 1.3x of these.
ACTIVATION_BYTES = {"unet": 582, "basic_unet": 3210, "attention_unet": 2272, "segnet": 6636}
#: The same per input voxel of the 3D networks (isotropic spacing, a 32³ input; tests/test_memory.py).
ACTIVATION_BYTES_3D = {"unet": 240, "basic_unet": 2562, "attention_unet": 1610, "segnet": 35452}
#: Per pixel of one sample besides the network: RGB float32 input and its normalized copy, an int64 mask.
_BATCH_BYTES = 3 * 4 * 2 + 8
#: Shares of the free memory a job may plan to use.
_RAM_SHARE, _GPU_SHARE = 0.8, 0.9


def _activation_bytes(model: str, width: float, dims: int = 2) -> float:
    table = ACTIVATION_BYTES_3D if dims == 3 else ACTIVATION_BYTES
    return 1.3 * table.get(model, max(table.values())) * max(width, 0.25)


def training_bytes(model: str, width: float, size: int, batch_size: int, shape=None) -> tuple[int, int]:
    """``(batch, network)``: the estimated bytes of one batch of ``size x size`` samples (or of patches of
    ``shape``, e.g. 3D ``(Z, Y, X)``: counted per voxel as per pixel) and of the network's activations for it."""
    pixels = batch_size * (math.prod(shape) if shape else size * size)
    return int(pixels * _BATCH_BYTES), int(pixels * _activation_bytes(model, width, len(shape) if shape else 2))


def available_ram() -> int | None:
    """Bytes of RAM available now (``MemAvailable``), or None when this system does not say."""
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def available_gpu(device: str) -> int | None:
    """Free bytes of the CUDA device that ``device`` names (``auto``: the current one), or None when not
    training on CUDA or torch is not loaded yet."""
    torch = sys.modules.get("torch")
    if torch is None or str(device).lower() == "cpu":
        return None
    try:
        if not torch.cuda.is_available():
            return None
        name = str(device).lower()
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        return int(torch.cuda.mem_get_info(index)[0])
    except Exception:  # noqa: BLE001 - a device we cannot ask is left to the training's own checks
        return None


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def _fitting_size(per_pixel: float, batch_size: int, budget: float, dims: int = 2) -> int:
    """The largest multiple of 16 whose batch of ``batch_size`` squares (``dims`` 3: cubes) takes at most
    ``budget`` bytes (0: none)."""
    return int((max(budget, 0) / (per_pixel * batch_size)) ** (1 / dims) // 16 * 16)


def _on_cpu(device: str) -> bool | None:
    """Whether training runs on the CPU; None while torch is not loaded and the device is ``auto``/``cuda``."""
    if str(device).lower() == "cpu":
        return True
    torch = sys.modules.get("torch")
    return None if torch is None else not torch.cuda.is_available()


def check_training_memory(config, ram: int | None = None, gpu: int | None = None, shape=None) -> None:
    """Refuse a patch/resize size and batch whose estimate exceeds the free memory, in one line with the
    estimate and a size that fits. ``ram``/``gpu``: free bytes (default: measured now); ``shape``: the
    patch shape when it is not ``patch_size`` squared (3D patches)."""
    size = config.resize or config.patch_size
    flag = "--resize" if config.resize else "--patch-size"
    shape = None if config.resize else shape
    batch, network = training_bytes(config.model, config.width, size, config.batch_size, shape)
    pixels = math.prod(shape) if shape else size**2
    on_cpu = _on_cpu(config.device) if gpu is None else False
    ram = available_ram() if ram is None else ram
    gpu = available_gpu(config.device) if gpu is None and on_cpu is False else gpu
    # On the CPU everything takes RAM; on a GPU the network's activations take GPU memory; while the device
    # is not known yet (torch not loaded: planning a sweep) the batch alone is checked, training checks again.
    checks = [("RAM", batch + network, ram, "batch and network activations") if on_cpu else
              ("RAM", batch, ram, "the batch")]
    if gpu is not None and not on_cpu:
        checks.append(("GPU memory", network, gpu, "network activations"))
    for what, need, free, parts in checks:
        share = _GPU_SHARE if what == "GPU memory" else _RAM_SHARE
        if free is None or need <= share * free:
            continue
        fits = _fitting_size(need / (config.batch_size * pixels), config.batch_size, share * free,
                             len(shape) if shape else 2)
        hint = (f"use {flag} {fits} or less, or a smaller --batch-size" if fits >= 16
                else "use a much smaller size and --batch-size 1")
        patch = f"{flag} {size}" + (f" ({'x'.join(map(str, shape))} voxels)" if shape else "")
        raise UserError(f"{patch} with --batch-size {config.batch_size} needs about {format_bytes(need)} "
                        f"of {what} ({parts}, estimated for {config.model} width {config.width:g}) but "
                        f"{format_bytes(free)} are free; {hint}")
