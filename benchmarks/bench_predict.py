"""Prediction speed: ``predict`` against MONAI's ``sliding_window_inference`` defaults and the network alone.

Prints Mpixel/s for each, measured side by side in one run on the same device (the variants take turns,
each repeat, so a busy machine slows them alike; the best of the repeats counts), and the ratios the
speed issues target (CPU: predict >= 3x MONAI defaults; CUDA: >= 15x defaults and >= 0.8x network alone),
plus the Dice between our masks and the fp32 defaults' masks (reduced precision must not change them).
``predict`` runs the network as :func:`napari_unet_seg.fusion.inference_network` prepares it (batch norm
folded into the convolutions, a copy made inside each call); ``--fused`` adds that network alone, beside
the unfused one, to show what folding gives. ``predict`` without ``on_event`` runs the network in the
calling thread, where glibc keeps its freed activations for reuse (:mod:`napari_unet_seg.heap`); with
``on_event`` (the widgets, a terminal's progress) it runs in a thread of its own: both are timed.

    python benchmarks/bench_predict.py                       # CPU or CUDA (auto), 2048x2048, U-Net
    python benchmarks/bench_predict.py --fused --repeats 3   # + the fused network alone
    python benchmarks/bench_predict.py --fused --threads 1   # steadier ratios on a busy machine
    python benchmarks/bench_predict.py --size 4096 --model segnet --device cuda

``--spatial-dims 3`` times a 3D network (random weights, ``--width``) on a volume (``--shape``, default
165x384x512: a block of ../shared/data/lucchi-mito-em3d when present, else synthetic blobs): ``predict``
against MONAI ``sliding_window_inference`` defaults for 3D (roi 96³, sw_batch 4, overlap 0.25, fp32, the
unfolded network), in turns, after a warm-up on a small crop (target: >= 2x on the CPU).

    python benchmarks/bench_predict.py --spatial-dims 3 --width 0.5 --repeats 1
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch


#: What MONAI's defaults do after the network: a 0.5 threshold, nothing else (a trained model's own choice of
#: test-time augmentation or post-processing would time other work).
PLAIN = {"threshold": 0.5, "tta": False, "keep_largest": False, "fill_holes": False}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_in_turns(variants: dict, repeats: int, warm_up=None) -> dict[str, tuple[float, object]]:
    """``{name: (best seconds, last result)}``; after one warm-up each (cudnn autotuning, allocator; by
    ``warm_up()`` instead when given), the variants run in turns ``repeats`` times."""
    best = {name: float("inf") for name in variants}
    if warm_up is None:
        results = {name: function() for name, function in variants.items()}
    else:
        warm_up()
        results = {}
    for _ in range(repeats):
        for name, function in variants.items():
            _sync()
            began = time.perf_counter()
            results[name] = function()
            _sync()
            best[name] = min(best[name], time.perf_counter() - began)
    return {name: (best[name], results[name]) for name in variants}


def main() -> None:
    from monai.inferers import sliding_window_inference

    from napari_unet_seg.device import resolve_device
    from napari_unet_seg.fusion import inference_network
    from napari_unet_seg.inference import autocast_dtype, predict
    from napari_unet_seg.metrics import segmentation_metrics
    from napari_unet_seg.model_file import load_model
    from napari_unet_seg.normalization import normalize
    from napari_unet_seg.sample_data import synthetic_pair, write_synthetic_folder
    from napari_unet_seg.training import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, the physical cores); "
                        "1 keeps the ratios steady on a machine busy with other jobs")
    parser.add_argument("--fused", action="store_true", help="also time the fused network (fusion.inference_network)")
    parser.add_argument("--model-file", help="a trained model; default: a few epochs on synthetic discs, so that "
                        "the mask comparison means something")
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--shape", default="165,384,512", help="3D: the volume's shape Z,Y,X")
    parser.add_argument("--width", type=float, default=1.0, help="3D: the U-Net's width (random weights)")
    parser.add_argument("--precision", default="auto", help="3D: predict's precision")
    args = parser.parse_args()
    if args.spatial_dims == 3:
        return main_3d(args)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    if args.model_file:
        model = load_model(args.model_file)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            images, masks = write_synthetic_folder(tmp, 8, (128, 128))
            result = train(images=images, masks=masks, out=f"{tmp}/run", model=args.model, epochs=4,
                           batch_size=4, patch_size=64, lr=3e-3, augment="none", device=str(device))
            model = load_model(result.best)
    network = model.network.eval()
    image, _ = synthetic_pair((args.size, args.size), seed=0, objects=60)
    pixels = image.size / 1e6

    def monai_defaults() -> np.ndarray:
        net = network.to(device, memory_format=torch.contiguous_format)
        x = torch.from_numpy(normalize(image[None], model.normalization)).to(device)[None]
        with torch.inference_mode():
            out = sliding_window_inference(x, (256, 256), 4, net, overlap=0.25)
        return (torch.sigmoid(out[0, 0]) > 0.5).cpu().numpy()

    tile = 512 if device.type == "cuda" else args.size
    batch = 32 if device.type == "cuda" else 1
    dtype = autocast_dtype(device, "auto")
    tiles = torch.rand(batch, 1, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    fused = inference_network(network, device)

    def alone(net: torch.nn.Module) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            net(tiles)

    def network_alone() -> None:
        alone(network.to(device, memory_format=torch.channels_last))

    def ours() -> np.ndarray:  # the defaults' work: no test-time augmentation or post-processing
        return predict(model, image, device=str(device), **PLAIN)

    def ours_with_progress() -> np.ndarray:  # the widgets' and a terminal's path: the network in a thread
        return predict(model, image, device=str(device), on_event=lambda event: None, **PLAIN)

    variants = {"monai": monai_defaults, "alone": network_alone, "ours": ours, "ours progress": ours_with_progress}
    if args.fused:
        variants["alone fused"] = lambda: alone(fused)
    timed = _timed_in_turns(variants, args.repeats)
    rates = {name: (batch * tile * tile if name.startswith("alone") else image.size) / 1e6 / seconds
             for name, (seconds, _) in timed.items()}
    reference = timed["monai"][1]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    import monai

    print(f"device: {device} ({name}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
          f"monai {monai.__version__}; model {args.model}; image {args.size}x{args.size} ({pixels:.1f} Mpixel); "
          f"autocast {dtype}; network alone: {batch} x {tile}^2 tiles; best of {args.repeats} turns")
    print(f"MONAI sliding_window_inference defaults (fp32, roi 256, sw_batch 4, overlap 0.25): "
          f"{rates['monai']:8.2f} Mpixel/s")
    print(f"network alone (channels_last, {dtype or 'fp32'}):                                   "
          f"{rates['alone']:8.2f} Mpixel/s")
    print(f"napari_unet_seg.predict (numpy in, uint8 labels out):                            "
          f"{rates['ours']:8.2f} Mpixel/s")
    print(f"predict with progress events (network in a thread: widgets, a terminal):         "
          f"{rates['ours progress']:8.2f} Mpixel/s")
    if args.fused:
        print(f"network alone, fused (inference_network: batch norm folded, channels_last):      "
              f"{rates['alone fused']:8.2f} Mpixel/s")
    target = 15 if device.type == "cuda" else 3
    print(f"ratio predict / MONAI defaults: {rates['ours'] / rates['monai']:.2f}  (target >= {target})")
    print(f"ratio predict with progress events / MONAI defaults: {rates['ours progress'] / rates['monai']:.2f}")
    print(f"ratio predict / network alone:  {rates['ours'] / rates['alone']:.2f}  (target >= 0.8 on CUDA)")
    if args.fused:
        print(f"ratio network alone fused / unfused: {rates['alone fused'] / rates['alone']:.2f}")
    agreement = segmentation_metrics(timed["ours"][1], reference)
    print(f"masks vs fp32 defaults: Dice {agreement['dice']:.4f}, pixel agreement {agreement['accuracy']:.4f}")


def _volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """A Lucchi block cropped to ``shape`` when the shared data is there, else smooth random blobs."""
    from pathlib import Path

    import tifffile

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi-mito-em3d" / "images"
    files = sorted(folder.glob("*.tif*")) if folder.is_dir() else []
    if files:
        volume = tifffile.imread(files[0])
        if all(v >= s for v, s in zip(volume.shape, shape)):
            return np.ascontiguousarray(volume[tuple(slice(0, s) for s in shape)]), files[0].name
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(np.random.default_rng(0).random(shape, np.float32), 3)
    return ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8), "synthetic blobs"


def main_3d(args: argparse.Namespace) -> None:
    """``--spatial-dims 3``: predict vs MONAI 3D defaults on one volume (see the module's docstring)."""
    import monai
    from monai.inferers import sliding_window_inference

    from napari_unet_seg.device import resolve_device
    from napari_unet_seg.inference import autocast_dtype, predict
    from napari_unet_seg.model_file import SegmentationModel
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization, normalize

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    kwargs = network_kwargs(args.model, args.width, spatial_dims=3)
    network = build_network(args.model, 1, 1, **kwargs).eval()
    model = SegmentationModel(network, {"name": args.model, "kwargs": kwargs}, 1, 2,
                              default_normalization("percentile"), {"patch_size": 96, "spatial_dims": 3})
    shape = tuple(int(v) for v in args.shape.split(","))
    volume, source = _volume(shape)

    def monai_defaults(image: np.ndarray) -> np.ndarray:
        net = network.to(device, memory_format=torch.contiguous_format)
        x = torch.from_numpy(normalize(image[None], model.normalization)).to(device)[None]
        with torch.inference_mode():
            out = sliding_window_inference(x, (96, 96, 96), 4, net, overlap=0.25)
        return torch.sigmoid(out[0, 0]).cpu().numpy()

    def ours(image: np.ndarray) -> np.ndarray:
        return predict(model, image, device=str(device), precision=args.precision, return_probabilities=True,
                       **PLAIN)[1]

    crop = volume[:32, :64, :64]
    variants = {"monai": lambda: monai_defaults(volume), "ours": lambda: ours(volume)}
    timed = _timed_in_turns(variants, max(1, args.repeats), warm_up=lambda: (monai_defaults(crop), ours(crop)))
    best, results = {k: v[0] for k, v in timed.items()}, {k: v[1] for k, v in timed.items()}
    rates = {name: volume.size / 1e6 / seconds for name, seconds in best.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    dtype = autocast_dtype(device, args.precision)
    print(f"device: {device} ({name}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
          f"monai {monai.__version__}; 3D {args.model} width {args.width} (random weights); volume "
          f"{'x'.join(map(str, shape))} ({volume.size / 1e6:.1f} Mvoxel, {source}); predict precision "
          f"{args.precision} ({dtype or 'fp32'}); best of {max(1, args.repeats)} turns")
    print(f"MONAI sliding_window_inference defaults (fp32, roi 96^3, sw_batch 4, overlap 0.25): "
          f"{rates['monai']:6.3f} Mvoxel/s ({best['monai']:.1f} s)")
    print(f"napari_unet_seg.predict (numpy in, uint8 labels + probabilities out):        "
          f"{rates['ours']:6.3f} Mvoxel/s ({best['ours']:.1f} s)")
    print(f"ratio predict / MONAI defaults: {rates['ours'] / rates['monai']:.2f}  (target >= 2 on the CPU)")
    reference, got = results["monai"], results["ours"]
    masks = (reference > 0.5), (got > 0.5)
    agree = float((masks[0] == masks[1]).mean())
    print(f"probabilities vs fp32 defaults: mean abs difference {np.abs(reference - got).mean():.2e}, "
          f"max {np.abs(reference - got).max():.2e}; masks agree on {agree:.4f} of the voxels")


if __name__ == "__main__":
    main()
