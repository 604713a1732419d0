"""Memory of ``predict`` on a very large image: block by block (the default) against the whole plane at once.

Each variant runs in a fresh process: a uint8 SIZE x SIZE image is predicted to uint8 labels, and the
process's peak resident memory above what it held before the image existed is compared with the
input plus output bytes (the speed issue's target: under 3x), and, on CUDA, the peak GPU memory
(target: under 4 GB for 16384²).

    python benchmarks/bench_predict_memory.py                    # 8192², CPU or CUDA (auto)
    python benchmarks/bench_predict_memory.py --size 16384 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def child(model_file: str, size: int, device: str, whole: bool) -> None:
    """Predict in this process and print one JSON line of figures."""
    import numpy as np
    import torch

    from napari_unet_seg import tiling
    from napari_unet_seg.inference import predict
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.sample_data import synthetic_pair

    model = load_model(model_file)
    tile, _ = synthetic_pair((1024, 1024), seed=0, objects=40)  # a real-looking 1024² pattern, repeated
    predict(model, tile[:256, :256], device=device)  # warm-up: allocator, kernels
    if whole:
        tiling.BLOCK.update(cpu=10**9, cuda=10**9)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = rss_mib()
    image = np.tile(tile, (size // 1024, size // 1024))
    began = time.perf_counter()
    labels = predict(model, image, device=device)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"job_mib": peak - before, "in_out_mib": (image.nbytes + labels.nbytes) / 2**20,
                      "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                      "seconds": seconds, "foreground": float(labels.mean())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="image edge (a multiple of 1024)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.size, args.device, args.child[1] == "whole")
        return
    import torch

    from napari_unet_seg.sample_data import write_synthetic_folder
    from napari_unet_seg.training import train

    with tempfile.TemporaryDirectory() as tmp:
        images, masks = write_synthetic_folder(tmp, 8, (128, 128))
        result = train(images=images, masks=masks, out=f"{tmp}/run", epochs=3, batch_size=4, patch_size=64,
                       lr=3e-3, augment="none", device="cpu", curves_every=0)
        rows = {}
        for variant in ("blocks", "whole"):
            out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--device", args.device,
                                  "--child", str(result.best), variant], capture_output=True, text=True)
            if out.returncode:
                print(f"{variant}: failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
                continue
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"torch {torch.__version__}; device {args.device}; image {args.size}x{args.size} uint8 -> uint8 labels")
    for variant, r in rows.items():
        gpu = f", peak GPU memory {r['gpu_mib']:.0f} MiB (target < 4096)" if r["gpu_mib"] is not None else ""
        print(f"{variant:>6}: job memory {r['job_mib']:.0f} MiB = {r['job_mib'] / r['in_out_mib']:.2f} x "
              f"(input + output = {r['in_out_mib']:.0f} MiB; target < 3){gpu}; {r['seconds']:.1f} s")
    if len(rows) == 2:
        print(f"memory whole / blocks: {rows['whole']['job_mib'] / rows['blocks']['job_mib']:.2f}; "
              f"same foreground share: {rows['whole']['foreground']:.4f} vs {rows['blocks']['foreground']:.4f}")


if __name__ == "__main__":
    main()
