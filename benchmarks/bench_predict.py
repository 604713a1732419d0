"""Prediction speed: ``predict`` against MONAI's ``sliding_window_inference`` defaults and the network alone.

Prints Mpixel/s for each, measured side by side in one run on the same device (the variants take turns,
each repeat, so a busy machine slows them alike; the best of the repeats counts), and the ratios the
speed issues target (CPU: predict >= 3x MONAI defaults; CUDA: >= 15x defaults and >= 0.8x network alone),
plus the Dice between our masks and the fp32 defaults' masks (reduced precision must not change them).
``predict`` runs the network as :func:`napari_unet_seg.fusion.inference_network` prepares it (batch norm
folded into the convolutions, a copy made inside each call); ``--fused`` adds that network alone, beside
the unfused one, to show what folding gives.

    python benchmarks/bench_predict.py                       # CPU or CUDA (auto), 2048x2048, U-Net
    python benchmarks/bench_predict.py --fused --repeats 3   # + the fused network alone
    python benchmarks/bench_predict.py --fused --threads 1   # steadier ratios on a busy machine
    python benchmarks/bench_predict.py --size 4096 --model segnet --device cuda
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_in_turns(variants: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """``{name: (best seconds, last result)}``; after one warm-up each (cudnn autotuning, allocator), the
    variants run in turns ``repeats`` times."""
    best = {name: float("inf") for name in variants}
    results = {name: function() for name, function in variants.items()}
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
    args = parser.parse_args()

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

    def ours() -> np.ndarray:
        return predict(model, image, device=str(device))

    variants = {"monai": monai_defaults, "alone": network_alone, "ours": ours}
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
    if args.fused:
        print(f"network alone, fused (inference_network: batch norm folded, channels_last):      "
              f"{rates['alone fused']:8.2f} Mpixel/s")
    target = 15 if device.type == "cuda" else 3
    print(f"ratio predict / MONAI defaults: {rates['ours'] / rates['monai']:.2f}  (target >= {target})")
    print(f"ratio predict / network alone:  {rates['ours'] / rates['alone']:.2f}  (target >= 0.8 on CUDA)")
    if args.fused:
        print(f"ratio network alone fused / unfused: {rates['alone fused'] / rates['alone']:.2f}")
    agreement = segmentation_metrics(timed["ours"][1], reference)
    print(f"masks vs fp32 defaults: Dice {agreement['dice']:.4f}, pixel agreement {agreement['accuracy']:.4f}")


if __name__ == "__main__":
    main()
