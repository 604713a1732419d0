"""What each CLI sub-command does, on top of the engine; progress goes to stderr, results to stdout."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import warnings
from argparse import Namespace
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .events import Batch, Epoch, Message, Tiles

__all__ = ["run_train", "run_predict", "run_evaluate", "run_demo", "run_info", "run_doctor", "run_sweep", "run_export",
           "ConsoleProgress"]


class ConsoleProgress:
    """Prints engine events: a live batch bar on a terminal, one line per epoch, messages as they come."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, event) -> None:
        if isinstance(event, Batch) and self.live:
            filled = int(20 * event.batch / event.batches)
            self.stream.write(f"\repoch {event.epoch} [{'#' * filled}{'.' * (20 - filled)}] "
                              f"{event.batch}/{event.batches} loss {event.loss:.4f}")
            self.stream.flush()
        elif isinstance(event, Epoch):
            m = event.metrics
            self._line(f"epoch {event.epoch}/{event.epochs}  loss {m['train_loss']:.4f}  val loss "
                       f"{m['val_loss']:.4f}  Dice {m['val_dice']:.4f}  IoU {m['val_iou']:.4f}  "
                       f"acc {m['val_accuracy']:.4f}  ({m['seconds']:.1f} s)")
        elif isinstance(event, Message):
            self._line(("warning: " if event.level == "warning" else "") + event.text)
        elif isinstance(event, Tiles) and self.live:
            self.stream.write(f"\r{100 * event.done // max(1, event.total)} %")
            self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
        self.stream.flush()

    def about(self, name: str):
        """The same, with each message's text prefixed by ``name`` (the file a job of many is on)."""
        def show(event) -> None:
            self(Message(f"{name}: {event.text}", event.level) if isinstance(event, Message) else event)
        return show


_PACKAGE = str(Path(__file__).resolve().parent)


def _warnings_to_console() -> None:
    """This package's warnings as one ``warning: ...`` line each. Those of the libraries under it are notices
    to programmers that the user cannot act on (numcodecs shows its deprecation at import whatever the
    filters say; MONAI 1.3 makes torch warn about its indexing), so the console leaves them out."""
    def show(message, category, filename, *args, **kwargs) -> None:
        if str(Path(filename).resolve()).startswith(_PACKAGE):
            print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def _tell(text: str) -> None:
    """Write ``text`` to stderr from a signal handler: to its file descriptor, not through ``sys.stderr``,
    since the handler may run while the main thread is inside a write to it (a reentrant buffered write
    raises RuntimeError)."""
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured or closed): say nothing
        pass


@contextmanager
def _ctrl_c_cancels(cancel: threading.Event):
    """The first Ctrl-C sets ``cancel`` (training stops after the batch, files stay whole); the second stops now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        _tell("\nnapari-unet-seg: stopping after this batch (Ctrl-C again to stop at once)\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_train(args: Namespace) -> int:
    """Train; under torchrun every process runs this and rank 0 alone prints (see docs/distributed.md)."""
    from . import distributed
    from .cli import TRAIN_ONLY
    from .config import TrainConfig
    from .training import train

    for name, value in TRAIN_ONLY.items():
        setattr(args, name, getattr(args, name, value))
    fields = {k: v for k, v in vars(args).items()
              if k not in ("command", "command_line", "resume", "given", *TRAIN_ONLY)}
    start = _starting_model(args)
    if args.plan_only:
        print("\n".join(_planned_config(args, fields, start)[1]))
        return 0
    plan_lines = []
    cancel = threading.Event()
    with distributed.process_group(args.device), _ctrl_c_cancels(cancel):
        if args.plan and not args.resume:  # rank 0 plans (it times steps), every process trains by that plan
            config, plan_lines = distributed.on_main(_planned_config, args, fields, start)
            fields = {k: v for k, v in vars(config).items() if k in fields}
            fields["extra"] = config.extra
        main = distributed.is_main()
        if main:
            _warnings_to_console()
        else:
            warnings.simplefilter("ignore")
        progress = _FirstPrinting(plan_lines, ConsoleProgress()) if main else None
        if args.resume:  # only the options given explicitly override the stored run
            from .cli import build_parser

            defaults = vars(build_parser().parse_args(["train"]))
            fields = {k: v for k, v in fields.items() if k == "out" or v != defaults.get(k)}
            result = train(resume=True, on_event=progress, cancel=cancel, **fields)
        else:
            config = TrainConfig(**{"extra": {}, **fields}, command=args.command_line)
            result = train(config, initial_model=start, on_event=progress, cancel=cancel)
    best = result.best_metrics
    if main and best:
        print(f"best epoch {result.best_epoch}: val Dice {best['val_dice']:.4f}  IoU {best['val_iou']:.4f}  "
              f"accuracy {best['val_accuracy']:.4f}")
    if main:
        print(f"model: {result.best}  ({result.status})")
    return 130 if result.status == "cancelled" else 0


def _starting_model(args: Namespace):
    """The model ``--start-from`` names, loaded (so that a bad one is refused before any planning); else None."""
    if args.start_from is None:
        return None
    if args.resume:
        raise UserError("--start-from starts a new run from a model and --resume continues a run; give one of them")
    from .model_file import load_model

    return load_model(args.start_from)


def _planned_config(args: Namespace, fields: dict, start=None):
    """``(config, lines)``: the settings with the data's plan filled in where ``args`` gave none, and the
    measurements and the plan as printed; fine-tuning ``start`` fixes the network (and dimensions unless given)."""
    from .config import TrainConfig
    from .planning import plan_training

    config = TrainConfig(**fields).validate(memory=False)
    lines = plan_training(config, budget=args.budget, given=getattr(args, "given", ()), start=start)
    return config, lines


class _FirstPrinting:
    """Passes events to ``progress``, printing ``lines`` first (so a refused setting or run folder still
    ends in its one line: training's checks run before its first event)."""

    def __init__(self, lines: list[str], progress: ConsoleProgress) -> None:
        self.lines, self.progress = list(lines), progress

    def __call__(self, event) -> None:
        if self.lines:
            self.progress._line("\n".join(self.lines))
            self.lines = []
        self.progress(event)


def _inputs(source: Path) -> list[Path]:
    from .pairing import list_images
    from .zarr_io import is_zarr

    if source.is_dir() and not is_zarr(source):
        return list_images(source, "input")
    if not source.exists():
        raise UserError(f"--input {source}: no such file or folder; check the path")
    return [source]


def _predict_options(args: Namespace) -> dict:
    return {"device": args.device, "tile": args.tile, "overlap": args.overlap, "threshold": args.threshold,
            "tta": args.tta, "min_size": args.min_size, "keep_largest": args.keep_largest,
            "fill_holes": args.fill_holes}


#: Suffixes that make ``--output`` name the mask file itself (with one input image).
MASK_FILE_SUFFIXES = (".png", ".tif", ".tiff")
#: Image files that masks are not written as (lossy, or without a mask's bit depths).
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _names_one_file(output: Path, source: Path, files: list[Path]) -> bool:
    """Whether ``--output`` names the mask file of a single input image (a mask suffix, not a folder)."""
    if not output.is_dir() and output.suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise UserError(f"--output {output}: masks are written as .png or .tif (a {output.suffix} file would change "
                        f"the labels); name it {output.stem}.png or give a folder")
    if output.is_dir() or output.suffix.lower() not in MASK_FILE_SUFFIXES:
        return False
    if len(files) != 1 or files[0] != source:
        raise UserError(f"--output {output}: names one mask file, but --input {source} is a folder of "
                        f"{len(files)} image(s); give a folder for their masks")
    return True


def _targets(output: Path, source: Path, ndim: int, largest: int, args: Namespace, pixels: int = 0, *,
             named: bool = False) -> list[Path]:
    """The files predicting ``source`` may write: its mask first (instance ids claim both the PNG and the
    TIFF, taken beyond 65535 objects; planes above ``PNG_MAX_PIXELS`` are TIFF), then with ``--uncertainty``
    ``<stem>_uncertainty.tif``; in the folder ``output``, or beside the mask file ``output`` if ``named``."""
    from .image_io import mask_suffix

    counts = (largest,) if args.instances == "none" else (0, 2**31 - 1)
    suffixes = list(dict.fromkeys(mask_suffix(ndim, n, pixels) for n in counts))
    if named:
        if output.suffix.lower() == ".png" and ".png" not in suffixes:
            what = "a stack's labels" if ndim > 2 else f"labels of {pixels / 1e6:.0f} megapixels"
            raise UserError(f"--output {output}: {what} do not fit a PNG; name it {output.stem}.tif")
        stem, folder = output.stem, output.parent
        masks = [output] + ([output.with_suffix(".tif")] if output.suffix.lower() == ".png" and len(suffixes) > 1
                            else [])
    else:
        stem, folder = source.stem, output
        masks = [output / f"{stem}{suffix}" for suffix in suffixes]
    return masks + ([folder / f"{stem}_uncertainty.tif"] if args.uncertainty else [])


def _print_device(device: str) -> None:
    from .device import describe_device, resolve_device

    print(f"running on {describe_device(resolve_device(device))}", flush=True)


def _print_postprocessing(model, options: dict) -> None:
    """The threshold and post-processing a job applies, and which of them are the model's own choice."""
    from .postprocessing import CHOICES, prediction_settings

    applied = prediction_settings(model.postprocess, **{k: options.get(k) for k in CHOICES})
    words = [f"threshold {applied['threshold']:g}"] + [name.replace("_", " ") for name in ("keep_largest",
                                                                                          "fill_holes", "tta")
                                                      if applied[name]]
    mine = [name.replace("_", " ") for name, plain in CHOICES.items()
            if options.get(name) is None and model.postprocess.get(name, plain) != plain]
    source = f" (the model's choice for {', '.join(mine)}, made on its validation images; options override it)" \
        if mine else ""
    print(f"post-processing: {', '.join(words)}{source}", flush=True)


def run_predict(args: Namespace) -> int:
    from .image_io import read_image_layout, read_spacing, stated_spacing, write_map, write_mask
    from .inference import check_input, predict
    from .model_file import load_model
    from .outputs import check_distinct, check_folder, check_place, same_file
    from .zarr_io import is_zarr

    _warnings_to_console()
    model = load_model(args.model)
    files = _inputs(Path(args.input))
    if _check_labels_group(args, files):
        return _predict_labels_group(model, files[0], args)
    output = Path(args.output)
    named = _names_one_file(output, Path(args.input), files)
    if named:
        check_place(output, "--output")
    else:  # never the --input folder (masks there would be taken for images) nor inside a .zarr input
        folder = Path(args.input) if Path(args.input).is_dir() and not is_zarr(args.input) else None
        check_folder(output, inputs=[f for f in files if is_zarr(f)], folders=[folder], what="--output")
    inputs = files + ([model.path] if model.path else [])
    planned = []
    for path in files:
        image, colour = read_image_layout(path)
        try:  # before any work, so that nothing is written for a folder with one file the model refuses
            check_input(model, image, colour)
        except UserError as error:
            raise UserError(f"{path.name}: {error}") from None
        ndim = image.ndim - int(colour)
        plane = image.shape[ndim - 2:ndim]
        targets = _targets(output, path, ndim, model.num_classes - 1, args, plane[0] * plane[1], named=named)
        for target in targets:
            if any(same_file(target, source) for source in inputs):
                what = "model file" if model.path and same_file(target, model.path) else "image"
                raise UserError(f"--output {output}: the output of {path.name} would replace the input {what} "
                                f"{target.name}; choose another output {'name' if named else 'folder'}")
            if target.exists() and not args.overwrite:
                which = "" if target == output else f" {target.name}"
                raise UserError(f"--output {output}:{which} exists already; pass --overwrite to replace it")
        planned.append((path, targets))
    check_distinct(((path, target) for path, targets in planned for target in targets), "--output")
    options = dict(_predict_options(args), instances=args.instances, min_distance=args.min_distance)
    _print_device(args.device)
    _print_postprocessing(model, options)
    progress = ConsoleProgress()  # tile progress on a terminal, warnings as lines
    for index, (path, targets) in enumerate(planned, start=1):
        began = time.perf_counter()
        image, colour = read_image_layout(path)
        result = predict(model, image, uncertainty=args.uncertainty, rgb=colour, on_event=progress.about(path.name),
                         spacing=stated_spacing(path), **options)
        labels, spread = result if args.uncertainty else (result, None)
        spacing = read_spacing(path)  # the input's pixel or voxel size, stated in TIFF masks
        written = [write_mask(targets[0], labels, spacing, named=named)]
        if spread is not None:
            written.append(write_map(targets[-1], spread, spacing))
        print(f"[{index}/{len(planned)}] {path.name} -> {', '.join(map(str, written))}  "
              f"({time.perf_counter() - began:.1f} s)")
    return 0


def _check_labels_group(args: Namespace, files: list[Path]) -> bool:
    """Whether predict writes an OME-Zarr labels group (``--labels-group``) rather than mask files."""
    from .zarr_io import is_zarr

    if not args.labels_group:
        if not args.output:
            raise UserError("give --output DIR for the mask files (or --labels-group NAME with a .zarr --input)")
        return False
    if args.output:
        raise UserError("--output and --labels-group: give one of them (mask files, or a labels group inside "
                        "the .zarr input)")
    if len(files) != 1 or not is_zarr(files[0]):
        raise UserError(f"--labels-group {args.labels_group}: needs an OME-Zarr image (.zarr folder) as --input; "
                        "for other images use --output DIR")
    if args.uncertainty:
        raise UserError("--uncertainty writes a TIFF per image: use it with --output DIR, not --labels-group")
    return True


def _predict_labels_group(model, path: Path, args: Namespace) -> int:
    """Predict an OME-Zarr image into its labels group ``--labels-group``, block by block (slice by slice
    for 2D models on a stack), never holding the whole image or its labels."""
    import numpy as np

    from .image_io import read_image_layout, stated_spacing
    from .inference import predict
    from .zarr_io import labels_writer

    image, colour = read_image_layout(path)
    spatial = tuple(image.shape[:image.ndim - int(colour)])
    options = dict(_predict_options(args), instances=args.instances, min_distance=args.min_distance, rgb=colour)
    dtype = np.uint8 if args.instances == "none" else np.int32
    began = time.perf_counter()
    with labels_writer(path, args.labels_group, spatial, dtype, overwrite=args.overwrite) as out:
        _print_device(args.device)
        predict(model, image, out=out, on_event=ConsoleProgress(), spacing=stated_spacing(path), **options)
    print(f"[1/1] {path.name} -> {path / 'labels' / args.labels_group}  ({time.perf_counter() - began:.1f} s)")
    return 0


def _print_scores(scores: dict) -> None:
    objects = "object_f1" in scores
    volumes = scores["count"] > 0 and scores.get("volumes", 0) == scores["count"]
    unit, cells = ("volumes", "voxels") if volumes else ("images", "pixels")
    for row in scores["per_image"]:
        shape = f"{'x'.join(map(str, row['shape'])):>14}  " if volumes else ""
        print(f"  {row['name']:<32} {shape}Dice {row['dice']:.4f}  IoU {row['iou']:.4f}  "
              f"accuracy {row['accuracy']:.4f}" + (f"  object F1 {row['object_f1']:.4f}" if objects else ""))
    print(f"mean over {scores['count']} {unit} ({scores['kind']}): Dice {scores['dice']:.4f}  IoU {scores['iou']:.4f}  "
          f"accuracy {scores['accuracy']:.4f}  precision {scores['precision']:.4f}  recall {scores['recall']:.4f}")
    print(f"pooled over all {cells}: Dice {scores['pooled_dice']:.4f}  IoU {scores['pooled_iou']:.4f}  "
          f"accuracy {scores['pooled_accuracy']:.4f}")
    print(f"thresholded Jaccard (IoU below 0.65 counts 0): {scores['thresholded_jaccard']:.4f}  "
          f"failed (Dice below 0.5): {scores['failed']} of {scores['count']} ({scores['failed_fraction']:.1%})")
    if objects:
        print(f"objects at IoU 0.5{' (in 3D)' if volumes else ''}: F1 {scores['object_f1']:.4f}  "
              f"precision {scores['object_precision']:.4f}  recall {scores['object_recall']:.4f}  "
              f"({scores['objects_matched']} matched of {scores['objects_true']} true, "
              f"{scores['objects_predicted']} predicted)")


def run_evaluate(args: Namespace) -> int:
    from .evaluation import evaluate
    from .image_io import atomic_write
    from .model_file import resolve_model_path
    from .outputs import check_output
    from .pairing import list_images

    _warnings_to_console()
    if args.json:  # checked before the long job, against every input it reads
        sources = [resolve_model_path(args.model)] + [p for folder in (args.images, args.masks)
                                                       if Path(folder).is_dir() for p in list_images(folder)]
        check_output(args.json, inputs=sources, folders=[args.images, args.masks],
                     overwrite=getattr(args, "overwrite", False), what="--json")
    _print_device(args.device)
    scores = evaluate(args.model, args.images, args.masks, skip_unpaired=args.skip_unpaired,
                      **_predict_options(args))
    _print_scores(scores)
    if args.json:
        text = json.dumps(scores, indent=2, default=str)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"scores: {args.json}")
    return 0


def _plan_line(plan: dict) -> str:
    """The stored training plan in one line: the settings it chose and what it proposed."""
    kept = plan.get("kept", {})
    chosen = [f"--{k.replace('_', '-')} {'none' if v is None else v}" + (" (given instead)" if k in kept else "")
              for k, v in plan.get("settings", {}).items()]
    proposed = [f"{k} {v}" for k, v in plan.get("proposals", {}).items()]
    return ", ".join(chosen) + (f"; proposed: {', '.join(proposed)}" if proposed else "")


def run_info(args: Namespace) -> int:
    from .config import TrainConfig
    from .model_file import read_summary
    from .pretrained import terms_lines
    from .tuning import describe_postprocessing

    path, meta, parameters = read_summary(args.model)
    config, info = meta.get("config", {}), meta.get("info", {})
    print(f"{path}: {meta['architecture']['name']} ({parameters / 1e6:.2f} M parameters), "
          f"{meta['in_channels']} input channel(s), {meta['num_classes']} classes")
    print(f"normalization: {meta['normalization']}")
    print(f"metrics: {json.dumps(meta.get('metrics', {}))}")
    parent = info.get("parent")
    if isinstance(parent, dict):
        origin = parent.get("path") or f"shipped model {parent.get('name')}"
        print(f"fine-tuned from: {origin} (sha256 {parent.get('sha256') or 'unknown'})")
    if config.get("command"):
        print(f"trained with: {config['command']}")
    plan = (config.get("extra") or {}).get("plan")
    if plan:
        print(f"plan: {_plan_line(plan)}")
    print(f"post-processing: {describe_postprocessing(meta.get('postprocess', {}))}")
    if config:
        start = f" --start-from {parent.get('path') or parent.get('name')}" if isinstance(parent, dict) else ""
        print(f"settings as a train command: {TrainConfig.from_dict(config).as_command()}{start}")
    print("\n".join(terms_lines(info)))
    return 0


def run_doctor(args: Namespace) -> int:
    from .device import describe_device, resolve_device
    from .doctor import diagnose, problems

    print("\n".join(diagnose()))
    found = problems()
    print("\n".join(f"fix: {line}" for line in found) if found else "fix: nothing found to fix")
    if args.device:
        print(f"--device {args.device}: usable, {describe_device(resolve_device(args.device))}")
    return 0


def run_demo(args: Namespace) -> int:
    from .demo import run_demo as demo
    from .outputs import check_folder

    out = check_folder(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {out}: exists and is not empty; choose another folder or pass --overwrite")
    report = demo(out, epochs=args.epochs, device=args.device, on_event=ConsoleProgress())
    print(f"report: {report}")
    return 0


def run_sweep(args: Namespace) -> int:
    from .sweep import check_out, load_sweep, sweep

    _warnings_to_console()
    spec = load_sweep(args.config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.dry_run:  # the --out a real run would refuse is refused here too
        check_out(spec, out)
        for run in spec.runs:
            print(f"{out / run.name}: {run.describe()}")
        return 0
    cancel = threading.Event()
    with _ctrl_c_cancels(cancel):
        rows = sweep(spec, out, device=args.device, cancel=cancel, on_event=ConsoleProgress())
    print((out / "comparison.md").read_text(), end="")
    return 130 if cancel.is_set() or len(rows) < len(spec.runs) else 0


def run_export(args: Namespace) -> int:
    from .export import export_model
    from .image_io import read_image
    from .outputs import inside, same_file

    _warnings_to_console()
    if args.test_image and (same_file(args.out, args.test_image) or inside(args.test_image, args.out)):
        verb = "is" if same_file(args.out, args.test_image) else "holds"  # holds: a bioimage.io package folder
        raise UserError(f"--out {args.out}: {verb} the --test-image and would be replaced; choose another output path")
    test_image = read_image(args.test_image) if args.test_image else None
    began = time.perf_counter()
    out = export_model(args.model, args.format, args.out, check=args.check, overwrite=args.overwrite,
                       test_image=test_image, authors=args.author, license=args.license,
                       on_message=lambda text: print(text, file=sys.stderr))
    print(f"{args.format}: {out}  ({time.perf_counter() - began:.1f} s)")
    return 0
