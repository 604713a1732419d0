"""The ``napari-unet-seg`` command: the argument parser and dispatch only (heavy imports happen later)."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import (AUGMENTS, EXPORT_FORMATS, INSTANCES, LOSSES, MODELS, NORMALIZATIONS, OPTIMIZERS,
                     SCHEDULERS, SPATIAL_DIMS, TrainConfig)
from .errors import ReportedElsewhere, UserError

__all__ = ["build_parser", "given_options", "main", "TRAIN_ONLY"]

_DEFAULT = TrainConfig()
#: The train options that are not TrainConfig fields, with their defaults.
TRAIN_ONLY = {"plan_only": False, "plan": True, "budget": 20.0, "start_from": None}


class _Parser(argparse.ArgumentParser):
    """Reports a bad option in one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> None:  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on folders of image/mask pairs")
    data = p.add_argument_group("data")
    data.add_argument("--images", help="folder of images (TIFF, PNG, JPEG, BMP)")
    data.add_argument("--masks", help="folder of masks, paired by file stem (_mask, _segmentation, ... accepted)")
    data.add_argument("--classes", type=int, default=_DEFAULT.classes,
                      help="number of classes incl. background (2 = binary, foreground = mask > 0)")
    data.add_argument("--patch-size", type=int, default=_DEFAULT.patch_size,
                      help="train on random square patches of this size")
    data.add_argument("--resize", type=int, help="train on whole images resized to this square size instead")
    data.add_argument("--val-fraction", type=float, default=_DEFAULT.val_fraction,
                      help="seeded share of pairs kept for validation")
    data.add_argument("--val-images", help="explicit validation images folder (with --val-masks)")
    data.add_argument("--val-masks", help="explicit validation masks folder")
    data.add_argument("--augment", choices=AUGMENTS, default=_DEFAULT.augment)
    data.add_argument("--normalization", choices=NORMALIZATIONS, default=_DEFAULT.normalization)
    data.add_argument("--skip-unpaired", action="store_true", help="skip files without partner (with a warning)")
    data.add_argument("--spatial-dims", choices=SPATIAL_DIMS, default=_DEFAULT.spatial_dims,
                      help="2: slice by slice (stacks train on their slices), 3: volumes, auto: chosen from the "
                      "stacks' depth and voxel spacing (see docs/cli.md)")
    data.add_argument("--foreground-sampling", type=float, metavar="F", default=_DEFAULT.foreground_sampling,
                      help="share of training patches centred on a foreground pixel, 0..1 (default: the plan's; "
                      "without one 0.33 in 3D, 0 in 2D)")
    data.add_argument("--spacing", metavar="Z,Y,X", help="voxel spacing of the volumes (overrides what the TIFF "
                      "files state), e.g. 50,4,4")
    model = p.add_argument_group("model and optimisation")
    model.add_argument("--model", choices=MODELS, default=_DEFAULT.model)
    model.add_argument("--width", type=float, default=_DEFAULT.width, help="channel width multiplier of the network")
    model.add_argument("--loss", choices=LOSSES, default=_DEFAULT.loss)
    model.add_argument("--optimizer", choices=OPTIMIZERS, default=_DEFAULT.optimizer)
    model.add_argument("--lr", type=float, default=_DEFAULT.lr)
    model.add_argument("--weight-decay", type=float, default=_DEFAULT.weight_decay)
    model.add_argument("--epochs", type=int, default=_DEFAULT.epochs)
    model.add_argument("--batch-size", type=int, default=_DEFAULT.batch_size)
    model.add_argument("--scheduler", choices=SCHEDULERS, default=_DEFAULT.scheduler)
    model.add_argument("--early-stop", type=int, default=_DEFAULT.early_stop,
                       help="stop after N epochs without better val Dice")
    model.add_argument("--no-amp", dest="amp", action="store_false",
                       help="no mixed precision on CUDA (the CPU trains in float32)")
    run = p.add_argument_group("run")
    run.add_argument("--out", default=_DEFAULT.out, help="run folder (best.pt, last.pt, history.csv, curves.png)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    run.add_argument("--start-from", metavar="MODEL", default=argparse.SUPPRESS,
                     help="fine-tune: start a new run from this model's weights (a .pt file or a shipped model "
                          "name), keeping its architecture, width and classes")
    run.add_argument("--seed", type=int, default=_DEFAULT.seed)
    run.add_argument("--workers", type=int, default=_DEFAULT.workers,
                     help="0: batches cut and augmented on the device from cached images; N: N DataLoader "
                          "processes (MONAI transforms per patch)")
    run.add_argument("--device", default=_DEFAULT.device, help="auto, cuda, cuda:N, mps or cpu (see napari-unet-seg doctor)")
    # Not TrainConfig fields: absent from the parsed options unless given (TRAIN_ONLY holds their defaults).
    auto = p.add_argument_group("automatic configuration (see docs/cli.md)")
    auto.add_argument("--plan-only", action="store_true", default=argparse.SUPPRESS,
                      help="print the settings chosen from the data, with their reasons, and exit without training")
    auto.add_argument("--no-plan", dest="plan", action="store_false", default=argparse.SUPPRESS,
                      help="do not measure the data: options not given keep their fixed defaults")
    auto.add_argument("--budget", type=float, default=argparse.SUPPRESS,
                      help=f"minutes of training the plan sizes the epochs for, when --epochs is not given "
                      f"(default {TRAIN_ONLY['budget']:g})")


def given_options(argv: list[str]) -> set[str]:
    """The ``train`` settings (destination names) that ``argv`` gives explicitly, defaults aside."""
    parser = _Parser(prog="napari-unet-seg")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_train(sub)
    for action in sub.choices["train"]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _add_predict_options(p) -> None:
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (see napari-unet-seg doctor)")
    p.add_argument("--tile", type=int, help="tile size (default: the model's training patch size, >= 256)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction")
    # None: the model's own choice, made on its validation images after training (napari-unet-seg info MODEL)
    model = " (default: the model's choice, see napari-unet-seg info MODEL)"
    p.add_argument("--threshold", type=float, help="foreground probability threshold (binary)" + model)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="average over flips (test-time "
                   "augmentation)" + model)
    p.add_argument("--min-size", type=int, default=0, help="remove objects smaller than this many pixels")
    p.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, help="keep only the largest object "
                   "(per class)" + model)
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, help="fill holes inside objects" + model)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = _Parser(prog="napari-unet-seg", description="Train and run U-Net/SegNet segmentation models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    p = sub.add_parser("predict", help="segment images with a model; one mask file per image")
    p.add_argument("--model", required=True, help="model file (.pt) or shipped model name")
    p.add_argument("--input", required=True, help="image file or folder, or an OME-Zarr image (.zarr folder)")
    p.add_argument("--output", help="folder for the masks (PNG; TIFF for stacks), or for one input image the "
                   "mask file itself (NAME.png, NAME.tif)")
    p.add_argument("--labels-group", help="with a .zarr --input: write the labels into it as the OME-Zarr labels "
                   "group NAME (chunk by chunk, instead of --output)")
    p.add_argument("--overwrite", action="store_true", help="replace existing mask files in --output (or the "
                   "labels group)")
    _add_predict_options(p)
    p.add_argument("--instances", choices=INSTANCES, default="none",
                   help="number the objects (binary models): connected components, or watershed to split "
                   "touching ones; masks become 16-bit PNG (32-bit TIFF beyond 65535 objects)")
    p.add_argument("--min-distance", type=int, default=5, help="watershed: least distance between object "
                   "centres, in pixels")
    p.add_argument("--uncertainty", action="store_true", help="also write <name>_uncertainty.tif (float32): "
                   "the spread of 8 rotated/flipped predictions, whose mean gives the mask (8x slower)")
    p = sub.add_parser("evaluate", help="score a model on folders of image/mask pairs")
    p.add_argument("--model", required=True, help="model file (.pt) or shipped model name")
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--json", help="write the scores (dice, iou, accuracy, precision, recall, per_image) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--skip-unpaired", action="store_true")
    _add_predict_options(p)
    p = sub.add_parser("demo", help="train, evaluate and predict on the shipped sample data; write a report")
    p.add_argument("--out", default="demo-out", help="report folder")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    p = sub.add_parser("info", help="show what a model file holds (architecture, classes, metrics, command)")
    p.add_argument("model", help="model file (.pt) or shipped model name")
    p = sub.add_parser("doctor", help="what this machine offers (torch build, GPUs, precisions, threads) and "
                       "what to install or set")
    p.add_argument("--device", help="also check that this device (cuda, cuda:N, mps, cpu) can be used")
    p = sub.add_parser("sweep", help="train a grid of runs on one data set; write comparison.csv and .md")
    p.add_argument("config", help="sweep file (YAML): the data and the settings to compare (see docs/sweeps.md)")
    p.add_argument("--out", help="sweep folder (default: runs/<config file name>); an existing one is resumed, "
                   "its finished runs skipped")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (see napari-unet-seg doctor)")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs and exit")
    p = sub.add_parser("export", help="export a model to TorchScript, ONNX or a bioimage.io package (checked)")
    p.add_argument("--model", required=True, help="model file (.pt) or shipped model name")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="torchscript (.pt), onnx (.onnx) or bioimageio (a package folder, or a .zip)")
    p.add_argument("--out", required=True, help="the file to write; for bioimageio a folder or a .zip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="do not run the export on a test image to compare it with PyTorch")
    p.add_argument("--test-image", help="image for the check and the package's test tensors "
                   "(default: the first training image, else a synthetic one)")
    p.add_argument("--author", action="append", help="bioimageio: an author's name (repeat for several)")
    p.add_argument("--license", help="bioimageio: SPDX license id of the weights (default: CC-BY-4.0)")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _one_line(error: BaseException, limit: int = 1000) -> str:
    """The message on one line of at most ``limit`` characters (whatever a value in it expanded to)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 20] + " ... (message cut)"


def main(argv: list[str] | None = None) -> int:
    """Run the command; user errors print one line and return 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings on a corrupt file precede our one line
    if args.command == "train":
        argv = sys.argv[1:] if argv is None else list(argv)
        args.command_line = "napari-unet-seg " + " ".join(argv)
        args.given = given_options(argv)
    try:
        from . import commands
        from .options import check_args

        check_args(args)

        return getattr(commands, f"run_{args.command}")(args) or 0
    except UserError as error:
        if not isinstance(error, ReportedElsewhere):  # under torchrun, rank 0 prints the errors all ranks share
            print(f"napari-unet-seg: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-unet-seg: interrupted; files written so far are complete", file=sys.stderr)
        return 130
