"""The demo job: train on the shipped EM sample, evaluate on held-out crops, predict, write a report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import UserError
from .events import Message

__all__ = ["run_demo", "check_out", "DEMO_TEST"]

#: The shipped crops kept out of training (sections far from the training ones).
DEMO_TEST = ("em_22.png", "em_28.png")
#: The folders the demo writes into (the data ones it trains and tests on whole), and the files it writes
#: beside them: all that an existing folder's demo replaces.
DATA_FOLDERS = tuple(f"data/{part}/{kind}" for part in ("train", "test") for kind in ("images", "masks"))
DEMO_FOLDERS = ("run", "predictions", *DATA_FOLDERS)
DEMO_FILES = ("report.md", "scores.json", "montage.png", *(f"predictions/{name}" for name in DEMO_TEST))


def check_out(out: str | Path) -> Path:
    """``out`` once the demo may write there: a folder whose demo files can be written, and whose data
    folders hold only the sample's crops (the demo trains and tests on everything in them).

    Raises:
        UserError: a file, a folder where the demo writes a file, or a file in the way, named.
    """
    from .outputs import check_folder
    from .sample_data import sample_folders

    out = check_folder(out)
    for name in DEMO_FOLDERS:
        check_folder(out / name)
    for name in DEMO_FILES:
        if (out / name).is_dir():
            raise UserError(f"--out {out}: {out / name} is a folder where the demo writes a file; choose another "
                            "folder")
    sample = {path.name for path in sample_folders("em")[0].iterdir()}
    for name in DATA_FOLDERS:
        foreign = sorted(p.name for p in (out / name).glob("[!.]*") if p.name not in sample)
        if foreign:
            raise UserError(f"--out {out}: {out / name} holds {foreign[0]}, which is not a demo crop and would "
                            "be trained or tested on; choose another folder")
    return out


def _split_sample(data: Path) -> tuple[Path, Path]:
    from .sample_data import sample_folders

    images, masks = sample_folders("em")
    train, test = data / "train", data / "test"
    for part in (train, test):
        for kind in ("images", "masks"):
            (part / kind).mkdir(parents=True, exist_ok=True)
    for image in sorted(images.glob("*.png")):
        part = test if image.name in DEMO_TEST else train
        shutil.copyfile(image, part / "images" / image.name)
        shutil.copyfile(masks / image.name, part / "masks" / image.name)
    return train, test


def run_demo(out: str | Path, *, epochs: int = 80, device: str = "auto", on_event=None) -> Path:
    """Run the demo into ``out`` and return the path of its ``report.md``.

    Writes ``data/`` (the split used), ``run/`` (model files, history, curves), ``predictions/``,
    ``montage.png`` (image | prediction | ground truth) and ``scores.json``; in an existing folder it
    replaces these and leaves every other file as it was (see :func:`check_out`).
    """
    from .evaluation import evaluate
    from .image_io import read_image, write_mask
    from .inference import predict
    from .reporting import save_montage
    from .training import train

    emit = on_event or (lambda event: None)
    out = check_out(out)
    train_dir, test_dir = _split_sample(out / "data")
    emit(Message(f"demo: training a U-Net on {len(list((train_dir / 'images').iterdir()))} EM crops "
                 f"(ISBI 2012) for {epochs} epochs; the 2 test crops stay unseen"))
    result = train(images=train_dir / "images", masks=train_dir / "masks", out=out / "run", model="unet",
                   loss="dicece", epochs=epochs, batch_size=4, patch_size=128, val_fraction=0.25, lr=3e-3,
                   augment="light", device=device, overwrite=True, seed=0, command="napari-unet-seg demo",
                   on_event=on_event)
    scores = evaluate(result.best, test_dir / "images", test_dir / "masks", device=device)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    rows = []
    for image_path in sorted((test_dir / "images").glob("*.png")):
        image = read_image(image_path)
        labels = predict(result.best, image, device=device)
        write_mask(out / "predictions" / image_path.name, labels * 255)
        rows.append((image_path.name, image, labels, read_image(test_dir / "masks" / image_path.name) > 0))
    save_montage(out / "montage.png", rows)
    lines = [
        "# napari-unet-seg demo report", "",
        f"U-Net trained for {len(result.history)} epochs on {train_dir / 'images'} "
        f"(best epoch {result.best_epoch}, validation Dice {result.best_metrics.get('val_dice', float('nan')):.4f}).",
        "", "Scores on the held-out test crops (never seen in training or model selection):", "",
        "| image | Dice | IoU | accuracy |", "|---|---|---|---|",
        *[f"| {r['name']} | {r['dice']:.4f} | {r['iou']:.4f} | {r['accuracy']:.4f} |" for r in scores["per_image"]],
        f"| **mean** | **{scores['dice']:.4f}** | **{scores['iou']:.4f}** | **{scores['accuracy']:.4f}** |", "",
        "Files: `run/best.pt` (model), `run/history.csv`, `run/curves.png`, `montage.png`, `predictions/`.", "",
        "![curves](run/curves.png)", "", "![montage](montage.png)", "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    emit(Message(f"demo: test Dice {scores['dice']:.4f}, IoU {scores['iou']:.4f}, "
                 f"accuracy {scores['accuracy']:.4f}"))
    return report
