"""Training speed: an epoch from the image/mask folder against steps on a batch already on the device.

Runs ``train_steps`` on a folder (cropping, augmentation, host-to-device copies included) twice: with
the batches made on the device (the default, ``--workers 0``) and with a DataLoader of ``--workers``
processes (MONAI transforms per patch); and, in the same run, the same network, loss and optimizer on
one resident batch. Prints the step rates and the ratios to the resident rate (the speed issue's
target: >= 0.85, i.e. data loading is never the bottleneck).

    python benchmarks/bench_train.py                                  # synthetic folder, auto device
    python benchmarks/bench_train.py --images ../shared/data/isbi2012-em/images \\
        --masks ../shared/data/isbi2012-em/masks_membrane --augment strong --workers 4 --device cuda

``--spatial-dims 3`` times the batch making alone for volumes: milliseconds per batch of ``--batch-size``
crops of ``--patch-size``^3 (foreground oversampling 0.33) from synthetic volumes, made on the device
(``DeviceBatches``) against ``PatchDataset`` + ``DataLoader`` (in-process, MONAI 3D dictionary transforms),
for each augmentation preset, beside one training step of a 3D U-Net on a resident batch.

    python benchmarks/bench_train.py --spatial-dims 3 --batch-size 2 --patch-size 64 --width 0.5

``--precision`` trains the same folder three times for ``--epochs`` epochs from the same seed (the same
batches, so the same number of steps): plain fp32 as training ran before (contiguous tensors, freed memory
given back to the system), the default (fp32, channels-last, the heap kept: :mod:`napari_unet_seg.heap`)
and, for comparison only, the default under bfloat16 autocast (not used for training: see
``training_run.training_precision``). It prints each variant's training steps per second, the ratio to plain
fp32 and the validation Dice after the last epoch.

    python benchmarks/bench_train.py --precision --images ../shared/data/isbi2012-em/images \
        --masks ../shared/data/isbi2012-em/masks_membrane --epochs 12
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import platform
import tempfile
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def folder_rate(args, images: str, masks: str, out: str, workers: int) -> tuple[float, int]:
    """Training steps per second over epochs 2.. of ``train_steps`` (epoch 1 warms up); and the batch count."""
    from napari_unet_seg.events import Batch, Epoch
    from napari_unet_seg.training import train_steps

    steps = train_steps(images=images, masks=masks, out=out, model=args.model, width=args.width,
                        epochs=args.epochs, batch_size=args.batch_size, patch_size=args.patch_size,
                        augment=args.augment, workers=workers, device=args.device, val_fraction=0.1,
                        curves_every=0, overwrite=True)
    # An epoch's clock starts when the previous epoch's validation is done (its Epoch event) and stops at
    # its last batch: loader start, decoding, cropping, augmentation and copies all count.
    started, timed, batches = None, 0.0, 0
    for event in steps:
        if isinstance(event, Epoch):
            started = time.perf_counter()
        elif isinstance(event, Batch) and started is not None and event.batch == event.batches:
            timed += time.perf_counter() - started
            batches += event.batches
            started = None
    return batches / timed, batches


@contextlib.contextmanager
def _training_with(precision: tuple, heap: bool = True):
    """Training steps under ``precision`` (``training_run.training_precision``'s answer), the heap kept or not."""
    from napari_unet_seg import training, training_run

    saved = training_run.training_precision, training.retained_heap
    training_run.training_precision = lambda device, amp: precision
    if not heap:
        training.retained_heap = lambda enabled=True: contextlib.nullcontext()
    try:
        yield
    finally:
        training_run.training_precision, training.retained_heap = saved


def precision_comparison(args, images: str, masks: str, out: str) -> None:
    """Print steps/s and the final validation Dice of plain fp32, fp32 channels-last and the default."""
    from napari_unet_seg.events import Batch, Epoch
    from napari_unet_seg.training import train_steps

    variants = {"plain fp32 (contiguous, heap given back)": lambda: _training_with((None, False), heap=False),
                "default (fp32, channels-last, heap kept)": contextlib.nullcontext,
                "bf16 autocast, channels-last, heap kept": lambda: _training_with((torch.bfloat16, True))}
    results = {}
    for name, context in variants.items():
        seconds, steps, dice = 0.0, 0, None
        with context():
            events = train_steps(images=images, masks=masks, out=out, model=args.model, width=args.width,
                                 epochs=args.epochs, batch_size=args.batch_size, patch_size=args.patch_size,
                                 augment=args.augment, device=args.device, val_fraction=0.1, curves_every=0,
                                 overwrite=True, seed=0)
            started = None
            for event in events:  # an epoch's steps: from the previous validation's end to its last batch
                if isinstance(event, Epoch):
                    started, dice = time.perf_counter(), event.metrics["val_dice"]
                elif isinstance(event, Batch) and started is not None and event.batch == event.batches:
                    seconds, steps, started = seconds + time.perf_counter() - started, steps + event.batches, None
        results[name] = (steps / seconds, steps, dice)
        print(f"{name:48s} {steps / seconds:6.2f} steps/s  ({steps} timed steps)  val Dice {dice:.4f}", flush=True)
    base_rate, _, base_dice = next(iter(results.values()))
    for name, (rate, _, dice) in list(results.items())[1:]:
        print(f"{name}: {rate / base_rate:.2f}x plain fp32, val Dice {dice - base_dice:+.4f} (target: within 0.01)")


def resident_rate(args, channels: int, steps: int, spatial_dims: int = 2) -> float:
    """Steps per second of the same network, loss and optimizer on one batch already on the device."""
    from napari_unet_seg.device import resolve_device
    from napari_unet_seg.fusion import channels_last_format
    from napari_unet_seg.losses import build_loss
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.training_run import training_precision

    device = resolve_device(args.device)
    torch.manual_seed(0)
    kwargs = network_kwargs(args.model, width=args.width, spatial_dims=spatial_dims)
    network = build_network(args.model, channels, 1, **kwargs).to(device)
    network.train()
    loss_fn = build_loss("dicece", 2).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    dtype, channels_last = training_precision(device, amp=True)  # as train_steps runs by default
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    patch = (args.patch_size,) * spatial_dims
    images = torch.rand(args.batch_size, channels, *patch, device=device)
    masks = (torch.rand(args.batch_size, 1, *patch, device=device) > 0.5).float()
    if channels_last:
        network = network.to(memory_format=channels_last_format(network))
        images = images.contiguous(memory_format=channels_last_format(network))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = network(images)
        loss = loss_fn(logits.float(), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())  # the training loop reads the loss each step too

    for _ in range(3):
        step()
    _sync(device)
    began = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - began)


def _volumes(count: int, shape: tuple[int, int, int], seed: int = 0):
    """Synthetic samples: noisy volumes of bright balls (about 2 % foreground) and their masks."""
    import numpy as np

    from napari_unet_seg.dataset import Sample

    rng = np.random.default_rng(seed)
    grid = np.mgrid[:shape[0], :shape[1], :shape[2]]
    samples = []
    for i in range(count):
        mask = np.zeros(shape, bool)
        for _ in range(6):
            centre = [rng.uniform(8, s - 8) for s in shape]
            mask |= sum((g - c) ** 2 for g, c in zip(grid, centre)) < rng.uniform(4, 8) ** 2
        image = mask * 0.5 + rng.normal(0, 0.1, shape)
        samples.append(Sample(f"volume {i}", image[None].astype(np.float16), mask.astype(np.uint8)))
    return samples


def _ms_per_batch(batches, count: int, device: torch.device) -> float:
    """Milliseconds per batch of the endless iterator ``batches`` over ``count`` batches after a first one."""
    next(batches)
    _sync(device)
    began = time.perf_counter()
    for _ in range(count):
        next(batches)
    _sync(device)
    return (time.perf_counter() - began) / count * 1000


def batch_times_3d(args, device: torch.device) -> None:
    """Print ms per 3D batch made on the device and by the DataLoader path, per preset, and a resident step."""
    from napari_unet_seg.dataset import PatchDataset, build_augmentation
    from napari_unet_seg.device_batches import DeviceBatches

    samples = _volumes(4, (96, 128, 128))
    patch, count = args.patch_size, 12
    print(f"device: {device}; {torch.get_num_threads()} threads; batches of {args.batch_size} x {patch}^3 from "
          f"4 volumes of 96x128x128, foreground 0.33")
    for preset in ("none", "light", "strong"):
        batches = DeviceBatches(samples, patch, preset, device, foreground=0.33)
        dataset = PatchDataset(samples, patch, build_augmentation(preset, patch, spatial_dims=3), seed=0,
                               foreground=0.33)

        def on_device():
            for seed in itertools.count():
                yield from batches.epoch(args.batch_size, seed)

        def from_loader():
            while True:
                for images, masks in torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True):
                    yield images.to(device), masks.to(device)

        host, made = (_ms_per_batch(source(), count, device) for source in (from_loader, on_device))
        print(f"augment {preset:6s}  DataLoader + MONAI 3D: {host:8.1f} ms   on the device: {made:8.1f} ms   "
              f"ratio {host / made:5.1f}")
    print(f"resident 3D training step (unet width {args.width}): {1000 / resident_rate(args, 1, 4, 3):8.1f} ms")


def main() -> None:
    import monai

    from napari_unet_seg.device import resolve_device
    from napari_unet_seg.sample_data import write_synthetic_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="image folder (default: 24 synthetic 512x512 images)")
    parser.add_argument("--masks", help="mask folder")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--augment", default="light")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes of the second variant")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2,
                        help="3: time the 3D batch making (device vs DataLoader) instead")
    parser.add_argument("--precision", action="store_true",
                        help="compare plain fp32, fp32 channels-last and the default precision instead")
    args = parser.parse_args()
    if args.spatial_dims == 3:
        return batch_times_3d(args, resolve_device(args.device))
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first one warms up)")

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        images, masks = (args.images, args.masks) if args.images else write_synthetic_folder(tmp, 24, (512, 512))
        if args.precision:
            print(f"device: {device} ({_cpu_name() if device.type == 'cpu' else device}, {torch.get_num_threads()} "
                  f"threads); torch {torch.__version__}; model {args.model} width {args.width}; batch "
                  f"{args.batch_size} x {args.patch_size}^2; augment {args.augment}; {args.epochs} epochs; "
                  f"data {images}")
            return precision_comparison(args, images, masks, f"{tmp}/run")
        from napari_unet_seg.pairing import pair_files
        from napari_unet_seg.image_io import read_image

        first = read_image(pair_files(images, masks)[0].image)
        channels = 3 if first.ndim == 3 and first.shape[-1] in (3, 4) else 1
        rate_device, batches = folder_rate(args, images, masks, f"{tmp}/run", workers=0)
        rate_loader, _ = folder_rate(args, images, masks, f"{tmp}/run", workers=args.workers)
    rate_resident = resident_rate(args, channels, steps=max(10, batches // (args.epochs - 1)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"device: {device} ({name}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
          f"monai {monai.__version__}; model {args.model} width {args.width}; batch {args.batch_size} x "
          f"{args.patch_size}^2; augment {args.augment}; data {images}")
    print(f"epoch from the folder, batches made on the device:  {rate_device:8.2f} steps/s  "
          f"ratio to resident {rate_device / rate_resident:.2f} (target >= 0.85)")
    print(f"epoch from the folder, DataLoader with {args.workers} worker(s):   {rate_loader:8.2f} steps/s  "
          f"ratio to resident {rate_loader / rate_resident:.2f}")
    print(f"resident batch (network, loss, optimizer):           {rate_resident:8.2f} steps/s")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


if __name__ == "__main__":
    main()
