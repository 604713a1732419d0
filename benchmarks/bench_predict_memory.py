"""Memory of ``predict`` on a very large image: block by block (the default) against the whole plane at once.

Each variant runs in a fresh process: a uint8 SIZE x SIZE image is predicted to uint8 labels, and the
process's peak resident memory above what it held before the image existed is compared with the
input plus output bytes (the speed issue's target: under 3x), and, on CUDA, the peak GPU memory
(target: under 4 GB for 16384²).

    python benchmarks/bench_predict_memory.py                    # 8192², CPU or CUDA (auto)
    python benchmarks/bench_predict_memory.py --size 16384 --device cuda

``--spatial-dims 3`` predicts a uint8 volume (``--shape``, default 512x2048x2048) stored on disk as a
zarr array (written slab by slab, never whole in memory) with a 3D U-Net (random weights, ``--width``),
its labels written block by block into a zarr array on disk (``predict(..., out=)``); the job's peak
resident memory is compared with input plus output bytes (target: under 3x).

    python benchmarks/bench_predict_memory.py --spatial-dims 3 --shape 128,1024,1024 --width 0.25
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


def child_3d(folder: str, width: float, device: str) -> None:
    """Predict the zarr volume in ``folder`` into a zarr labels array there; print one JSON line."""
    import numpy as np
    import torch
    import zarr

    from napari_unet_seg.inference import predict_steps
    from napari_unet_seg.events import drain
    from napari_unet_seg.model_file import SegmentationModel
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization

    torch.manual_seed(0)
    kwargs = network_kwargs("unet", width, spatial_dims=3)
    network = build_network("unet", 1, 1, **kwargs).eval()
    model = SegmentationModel(network, {"name": "unet", "kwargs": kwargs}, 1, 2, default_normalization("percentile"),
                              {"patch_size": 64, "spatial_dims": 3})
    volume = zarr.open_array(f"{folder}/image.zarr", mode="r")
    drain(predict_steps(model, np.asarray(volume[:16, :64, :64]), device=device))  # warm-up
    labels = zarr.create_array(f"{folder}/labels.zarr", shape=volume.shape, chunks=volume.chunks, dtype=np.uint8)
    before = rss_mib()
    began = time.perf_counter()
    result = drain(predict_steps(model, volume, device=device, out=labels))
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert result.labels is labels
    in_out = volume.size * 2 / 2**20  # uint8 in, uint8 out
    print(json.dumps({"job_mib": peak - before, "peak_mib": peak, "in_out_mib": in_out, "seconds": seconds,
                      "foreground": float(np.asarray(labels[::8, ::8, ::8]).mean())}))


def main_3d(args: argparse.Namespace) -> None:
    import numpy as np
    import zarr
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        chunks = (64, 256, 256)
        image = zarr.create_array(f"{tmp}/image.zarr", shape=shape, chunks=chunks, dtype=np.uint8)
        pattern = gaussian_filter(np.random.default_rng(0).random((64, 256, 256), np.float32), 3, mode="wrap")
        pattern = ((pattern - pattern.min()) / np.ptp(pattern) * 255).astype(np.uint8)
        for z in range(0, shape[0], 64):  # slab by slab: the volume is never whole in memory
            slab = np.tile(pattern, (1, -(-shape[1] // 256), -(-shape[2] // 256)))[:, :shape[1], :shape[2]]
            image[z:z + 64] = slab[:min(64, shape[0] - z)]
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--width", str(args.width),
                              "--child-3d", tmp], capture_output=True, text=True)
    if out.returncode:
        print(f"failed ({out.returncode}): {out.stderr.strip().splitlines()[-3:]}")
        return
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"3D unet width {args.width} (random weights); device {args.device}; volume {'x'.join(map(str, shape))} "
          f"uint8 zarr on disk -> uint8 labels zarr on disk (out=)")
    print(f"job memory {r['job_mib']:.0f} MiB = {r['job_mib'] / r['in_out_mib']:.2f} x (input + output = "
          f"{r['in_out_mib']:.0f} MiB; target < 3); process peak {r['peak_mib']:.0f} MiB; {r['seconds']:.1f} s "
          f"({np.prod(shape) / 1e6 / r['seconds']:.2f} Mvoxel/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="image edge (a multiple of 1024)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--shape", default="512,2048,2048", help="3D: the volume's shape Z,Y,X")
    parser.add_argument("--width", type=float, default=0.25, help="3D: the U-Net's width")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-3d", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_3d:
        child_3d(args.child_3d, args.width, args.device)
        return
    if args.spatial_dims == 3:
        main_3d(args)
        return
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
