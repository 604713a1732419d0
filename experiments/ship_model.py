"""Turn a trained run into a shipped model: score it on held-out test pairs, record the figures and the
data's provenance in its metadata, and write it to ``src/napari_unet_seg/pretrained/NAME.pt``.

    python experiments/ship_model.py runs/em/best.pt em-membranes --test-images T/images --test-masks T/masks \\
        --display-name "EM membranes (U-Net)" --data "ISBI 2012 EM training volume, slices 0-23 (val 24-26)"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet_seg.evaluation import evaluate
from napari_unet_seg.model_file import load_model, save_model
from napari_unet_seg.pretrained import TERMS
from napari_unet_seg.tuning import choose_postprocessing, describe_postprocessing

TARGET = Path(__file__).resolve().parents[1] / "src" / "napari_unet_seg" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("name")
    parser.add_argument("--test-images", required=True)
    parser.add_argument("--test-masks", required=True)
    parser.add_argument("--display-name", required=True)
    parser.add_argument("--data", required=True, help="what the model was trained on, and its terms")
    parser.add_argument("--val-images", help="choose the threshold and post-processing on these validation "
                        "pairs (for a model trained before train chose them itself)")
    parser.add_argument("--val-masks")
    parser.add_argument("--keep-largest", action="store_true", help="with --val-images: also try keeping only "
                        "the largest object")
    args = parser.parse_args()
    model = load_model(args.model)
    if args.val_images:
        model.postprocess = choose_postprocessing(model, args.val_images, args.val_masks,
                                                  keep_largest=args.keep_largest)
    print(f"post-processing: {describe_postprocessing(model.postprocess)}")
    scores = evaluate(model, args.test_images, args.test_masks, device="cpu")
    model.metrics = {**model.metrics, "test_dice": scores["dice"], "test_iou": scores["iou"],
                     "test_accuracy": scores["accuracy"], "test_count": scores["count"],
                     "test_thresholded_jaccard": scores["thresholded_jaccard"], "test_failed": scores["failed"]}
    from napari_unet_seg.config import TrainConfig

    # the command that made it (train, or a sweep's run), and the equivalent plain train command
    model.info = {**model.info, **TERMS.get(args.name, {}), "display_name": args.display_name, "data": args.data,
                  "train_command": TrainConfig.from_dict(model.config).as_command(), **_lineage(model)}
    path = save_model(TARGET / f"{args.name}.pt", model)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): test Dice {scores['dice']:.4f}, IoU {scores['iou']:.4f}, "
          f"accuracy {scores['accuracy']:.4f} on {scores['count']} images")


def _lineage(model) -> dict:
    """``{"commands": [...]}``: every command that made a model fine-tuned from a shipped one (the parent's
    recorded commands, then this run's); empty for a model trained from scratch."""
    parent = model.info.get("parent", {}).get("name")
    if not parent or not model.config.get("command"):
        return {}
    shipped = load_model(parent)
    earlier = shipped.info.get("commands") or [shipped.config.get("command")]
    return {"commands": [c for c in earlier if c] + [model.config["command"]]}


if __name__ == "__main__":
    main()
