"""Prediction speed: ``predict`` against MONAI's ``sliding_window_inference`` defaults and the network alone.

Prints Mpixel/s for each, measured side by side in one run on the same device, and the ratios the
speed issue targets (CPU: predict >= 2x MONAI defaults; CUDA: >= 15x defaults and >= 0.8x network alone),
plus the Dice between our masks and the fp32 defaults' masks (reduced precision must not change them).

    python benchmarks/bench_predict.py                       # CPU or CUDA (auto), 2048x2048, U-Net
    python benchmarks/bench_predict.py --size 4096 --model segnet --device cuda
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch


def _timed(function, repeats: int) -> tuple[float, object]:
    function()  # warm-up (cudnn autotuning, allocator)
    best, result = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        began = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return best, result


def main() -> None:
    from monai.inferers import sliding_window_inference

    from napari_unet_seg.device import resolve_device
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
    parser.add_argument("--model-file", help="a trained model; default: a few epochs on synthetic discs, so that "
                        "the mask comparison means something")
    args = parser.parse_args()

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

    def network_alone() -> None:
        net = network.to(device, memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            net(tiles)

    def ours() -> np.ndarray:
        return predict(model, image, device=str(device))

    t_monai, reference = _timed(monai_defaults, args.repeats)
    t_alone, _ = _timed(network_alone, args.repeats)
    t_ours, labels = _timed(ours, args.repeats)
    rate_monai, rate_alone = pixels / t_monai, batch * tile * tile / 1e6 / t_alone
    rate_ours = pixels / t_ours
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    import monai

    print(f"device: {device} ({name}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
          f"monai {monai.__version__}; model {args.model}; image {args.size}x{args.size}; "
          f"autocast {dtype}; network alone: {batch} x {tile}^2 tiles")
    print(f"MONAI sliding_window_inference defaults (fp32, roi 256, sw_batch 4, overlap 0.25): "
          f"{rate_monai:8.2f} Mpixel/s")
    print(f"network alone (channels_last, {dtype or 'fp32'}):                                   "
          f"{rate_alone:8.2f} Mpixel/s")
    print(f"napari_unet_seg.predict (numpy in, uint8 labels out):                            "
          f"{rate_ours:8.2f} Mpixel/s")
    print(f"ratio predict / MONAI defaults: {rate_ours / rate_monai:.2f}  "
          f"(target >= {15 if device.type == 'cuda' else 2})")
    print(f"ratio predict / network alone:  {rate_ours / rate_alone:.2f}  (target >= 0.8 on CUDA)")
    agreement = segmentation_metrics(labels, reference)
    print(f"masks vs fp32 defaults: Dice {agreement['dice']:.4f}, pixel agreement {agreement['accuracy']:.4f}")


if __name__ == "__main__":
    main()
