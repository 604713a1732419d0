"""Choosing the torch device from ``auto``, ``cuda``, ``cuda:N``, ``mps`` or ``cpu``, and saying why.

``auto`` is CUDA when torch sees a GPU, else Apple's MPS, else the CPU. A device that cannot be used is a
:class:`UserError` naming the cause (a torch build without CUDA, no driver, a hidden GPU) and what to do.
"""

from __future__ import annotations

import os
import platform

import torch

from .config import DEVICES
from .errors import UserError

__all__ = ["DEVICES", "resolve_device", "auto_device", "available_devices", "describe_device", "torch_build",
           "cuda_problem", "mps_problem", "gpu_summary", "is_out_of_memory", "free_cuda_memory", "free_device_memory"]

TORCH_INSTALL = "https://pytorch.org/get-started/locally/"


def torch_build() -> str:
    """What this torch is built for: ``CUDA 12.8``, ``ROCm 6.4``, ``MPS`` or ``CPU-only``."""
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    if torch.backends.mps.is_built():
        return "MPS"
    return "CPU-only"


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, with what to do (None when torch sees a GPU)."""
    if torch.cuda.is_available():
        return None
    if not (torch.version.cuda or getattr(torch.version, "hip", None)):
        return (f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch "
                f"({TORCH_INSTALL}, e.g. pip install torch --index-url https://download.pytorch.org/whl/cu128)")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU; unset it"
    return (f"torch is built for {torch_build()} but finds no GPU; check that `nvidia-smi` lists one and that "
            f"its driver supports {torch_build()} (else update the driver or install torch for an older CUDA)")


def mps_problem() -> str | None:
    """Why Apple's MPS cannot be used here, with what to do (None when it can)."""
    if torch.backends.mps.is_available():
        return None
    if platform.system() != "Darwin":
        return "MPS is Apple's GPU backend and exists only on Macs with Apple Silicon"
    if not torch.backends.mps.is_built():
        return (f"this torch build ({torch.__version__}) has no MPS support; on Apple Silicon install torch for "
                f"macOS arm64 with an arm64 Python (not an x86_64 one under Rosetta)")
    return "MPS is built but not available: it needs an Apple Silicon Mac with macOS 12.3 or later"


def auto_device() -> tuple[torch.device, str]:
    """The device ``auto`` picks and why (in a few words)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), f"torch sees {torch.cuda.device_count()} CUDA GPU(s)"
    no_cuda = "no CUDA GPU" + (" (CPU-only torch build)" if torch_build() in ("CPU-only", "MPS") else "")
    if torch.backends.mps.is_available():
        return torch.device("mps"), f"{no_cuda}; Apple's MPS is available"
    return torch.device("cpu"), f"{no_cuda} and no MPS"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA, else MPS, else CPU; asking for a device that cannot be used is a :class:`UserError`."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return auto_device()[0]
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        problem = mps_problem()
        if problem:
            raise UserError(f"device {device!r}: {problem}; or use --device cpu or auto")
        return torch.device("mps")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        problem = cuda_problem()
        if problem:
            raise UserError(f"device {device!r}: {problem}; or use --device cpu or auto")
        count = torch.cuda.device_count()
        if name != "cuda" and int(name[5:]) >= count:
            raise UserError(f"device {device!r}: torch sees {count} GPU(s), numbered cuda:0 to cuda:{count - 1}")
        return torch.device(name)
    raise UserError(f"device {device!r} is unknown; use auto, cuda, cuda:N, mps or cpu")


def gpu_summary(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}"


def describe_device(device: str | torch.device) -> str:
    """One line naming a resolved device, for job logs and status lines: ``cuda:0 (NVIDIA H200, 139.8 GiB,
    compute capability 9.0)``, ``mps (Apple GPU)``, ``cpu (2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({gpu_summary(index)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def available_devices() -> list[tuple[str, str]]:
    """The devices usable here as ``(name, reason)``, ``auto`` first (its reason says what it picks); for
    device lists and their tooltips."""
    picked, why = auto_device()
    devices = [("auto", f"picks {describe_device(picked)}: {why}")]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        devices += [("cuda" if count == 1 else f"cuda:{i}", gpu_summary(i)) for i in range(count)]
    if torch.backends.mps.is_available():
        devices.append(("mps", "Apple GPU (Metal Performance Shaders)"))
    devices.append(("cpu", f"{torch.get_num_threads()} torch threads"))
    return devices


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU running out of memory (the jobs then retry with smaller batches)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error))


def free_device_memory() -> None:
    """Give cached GPU memory back (CUDA or MPS; after an out-of-memory error, or when a job ends)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


free_cuda_memory = free_device_memory  # the name the jobs already use


def physical_cores() -> int | None:
    """The number of physical CPU cores (not hyper-threads), None when it cannot be told."""
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as info:
            blocks = info.read().split("\n\n")
    except OSError:
        return None
    cores = {tuple(line.split(":")[1].strip() for line in block.splitlines()
                   if line.startswith(("physical id", "core id"))) for block in blocks if "core id" in block}
    return len(cores) or None


#: Environment variables by which a user sets the CPU threads themselves (then they are left alone).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_beside_ui() -> int:
    """Set torch's CPU threads for jobs run beside the napari window: the physical cores less one (at least
    one), so the interface keeps a core; unchanged when ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set.
    Returns the number of threads in use."""
    if not any(os.environ.get(name) for name in THREAD_VARIABLES):
        cores = physical_cores() or os.cpu_count() or 1
        wanted = max(1, cores - 1)
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
    return torch.get_num_threads()
