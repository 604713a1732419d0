"""Multi-process training under ``torchrun``: the process group, ranks, and agreement across ranks.

``torchrun --nproc_per_node N -m napari_unet_seg train ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set; :func:`process_group` joins them (NCCL on GPUs, gloo on CPU) and
``train_steps`` then trains with DistributedDataParallel. Outside torchrun (or with one process) every
helper here is a no-op: rank 0 of a world of 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import ReportedElsewhere, UserError

__all__ = ["launched", "active", "world_size", "rank", "is_main", "local_device", "check_joined", "process_group",
           "on_main", "sum_across", "any_rank", "barrier", "share_buffers", "wrap", "sampler"]

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of several that torchrun started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of training processes (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes files and prints progress (rank 0, or the only process)."""
    return rank() == 0


def local_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when ``device`` is CUDA under torchrun."""
    resolved = resolve_device(device)
    if resolved.type != "cuda" or not launched():
        return resolved
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise UserError(f"process {local} on this node has no GPU of its own ({torch.cuda.device_count()} "
                        "visible); give torchrun --nproc_per_node at most the number of GPUs")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def check_joined() -> None:
    """Refuse to train as one of several torchrun processes outside a process group (each would train alone
    and write the same files)."""
    if launched() and not active():
        raise UserError(f"this is one of {os.environ['WORLD_SIZE']} processes started by torchrun but they are not "
                        "joined; train with `napari-unet-seg train`, or call train() inside "
                        "napari_unet_seg.distributed.process_group()")


def _backend(device: str | torch.device) -> str:
    # The device is checked (once, on rank 0) by the job; an unusable one here just means gloo.
    name = str(device).lower()
    return "nccl" if torch.cuda.is_available() and name != "cpu" and dist.is_nccl_available() else "gloo"


@contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[None]:
    """Join torchrun's process group for the block (NCCL for CUDA, gloo for CPU); nothing outside torchrun.

    Example (a script started with ``torchrun --nproc_per_node 2 script.py``):
        >>> with process_group("auto"):                                  # doctest: +SKIP
        ...     train(images="data/images", masks="data/masks", out="runs/ddp")
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    backend = _backend(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl" and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def on_main(function: Callable[..., T], *args: Any) -> T:
    """Run ``function(*args)`` on rank 0 only and give every rank its result (it must pickle).

    A :class:`UserError` there is raised on every rank: as itself on rank 0, which reports it, and as
    :class:`ReportedElsewhere` on the others, so that all exit with the same error and none waits. (Any
    other error ends rank 0 alone; torchrun then stops the others.)
    """
    if not active():
        return function(*args)
    outcome: list = [None]
    if is_main():
        try:
            outcome = [("ok", function(*args))]
        except UserError as error:
            dist.broadcast_object_list([("error", str(error))], src=0, device=_collective_device())
            raise
    dist.broadcast_object_list(outcome, src=0, device=_collective_device())
    kind, value = outcome[0]
    if kind == "error":
        raise ReportedElsewhere(value)
    return value


def sum_across(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over all ranks (the same result on every rank); ``values`` itself when alone."""
    if not active():
        return dict(values)
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(values, tensor.tolist()))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (e.g. a cancel request), so that all ranks act on it together."""
    return sum_across({"flag": float(bool(flag))})["flag"] > 0 if active() else bool(flag)


def barrier() -> None:
    """Wait for every rank (nothing when not distributed)."""
    if active():
        dist.barrier()


def share_buffers(network: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics), those of the saved model.

    Without SyncBatchNorm (CPU) each rank's last training batch moved its own statistics a little.
    """
    if active():
        for buffer in network.buffers():
            dist.broadcast(buffer.data, src=0)


def wrap(network: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(network, trained)``: the module to validate and save, and the one to train.

    Distributed, ``trained`` is a DistributedDataParallel wrapper (gradients averaged over ranks) and,
    on GPUs, batch norm becomes SyncBatchNorm (statistics of the global batch). SyncBatchNorm does not
    run on CPU, so gloo runs keep each process's own batch statistics. Alone: ``(network, network)``.
    """
    if not active():
        return network, network
    if device.type != "cuda":
        return network, torch.nn.parallel.DistributedDataParallel(network)
    network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    return network, torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index])


def sampler(dataset: torch.utils.data.Dataset, seed: int) -> torch.utils.data.DistributedSampler | None:
    """This rank's share of a shuffled epoch (call ``set_epoch(epoch)``); None when not distributed."""
    if not active():
        return None
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                               seed=seed, drop_last=False)
