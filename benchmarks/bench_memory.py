"""Host memory over a long training run: does RSS grow from epoch to epoch?

Trains a tiny U-Net for many short epochs on four 32x32 synthetic pairs; every epoch writes
``last.pt`` (and ``best.pt`` when better), ``history.csv`` and ``curves.png`` as a real run does.
Prints the resident set size after epoch ``--mark`` and after the last epoch, their difference and
ratio, and the mean seconds per epoch.

    python benchmarks/bench_memory.py --epochs 300
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
from pathlib import Path


def rss_mib() -> float:
    """Resident set size of this process in MiB (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(out: str | Path, epochs: int = 300, mark: int = 10, also: tuple[int, ...] = ()) -> dict:
    """Train ``epochs`` epochs into ``out``; RSS (MiB) after epoch ``mark`` and after the last one (and after
    the epochs ``also``: ``rss_at`` holds them all)."""
    from napari_unet_seg.events import Epoch
    from napari_unet_seg.sample_data import synthetic_pair
    from napari_unet_seg.training import train_steps

    pairs = [synthetic_pair((32, 32), seed=i, objects=2) for i in range(4)]
    steps = train_steps(arrays=pairs, out=Path(out), epochs=epochs, batch_size=4, patch_size=16, width=0.125,
                        augment="none", device="cpu", scheduler="none", val_fraction=0.25, overwrite=True)
    marks: dict[int, float] = {}
    began = time.perf_counter()
    for event in steps:
        if isinstance(event, Epoch) and event.epoch in (mark, epochs, *also):
            gc.collect()
            marks[event.epoch] = rss_mib()
    seconds = time.perf_counter() - began
    return {"epochs": epochs, "mark": mark, "rss_mark": marks[mark], "rss_end": marks[epochs],
            "growth": marks[epochs] - marks[mark], "ratio": marks[epochs] / marks[mark], "rss_at": marks,
            "seconds_per_epoch": seconds / epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--mark", type=int, default=10, help="the epoch after which the first RSS is taken")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as out:
        r = measure(Path(out) / "run", args.epochs, args.mark)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
          f"{platform.python_version()}, torch {torch.__version__}")
    print(f"RSS after epoch {r['mark']}: {r['rss_mark']:.1f} MiB; after epoch {r['epochs']}: {r['rss_end']:.1f} MiB")
    print(f"growth {r['growth']:+.1f} MiB over {r['epochs'] - r['mark']} epochs "
          f"({1024 * r['growth'] / (r['epochs'] - r['mark']):+.1f} KiB/epoch), ratio {r['ratio']:.3f}; "
          f"{r['seconds_per_epoch']:.2f} s/epoch")


if __name__ == "__main__":
    main()
