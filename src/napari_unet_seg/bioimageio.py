"""Export a model as a bioimage.io model package (format 0.5): a folder, or a ``.zip``.

The package holds the TorchScript and/or ONNX weights written (and checked against PyTorch) by
:mod:`~napari_unet_seg.export`, raw test tensors and sample images, a cover and a README, and an ``rdf.yaml``
that states the minimum size and describes the normalization (``scale_range``) and the sigmoid or softmax as
pre- and postprocessing, so bioimage.io tools take raw images and return probabilities. A 3D model's tensors
have the axes batch, channel, z, y, x, with the model's voxel spacing as the space axes' scale (and unit, when
the model file names it). The package is
assembled in a staging folder beside the target, validated with ``bioimageio.spec`` and only then moved into
place: a failed export leaves nothing behind. :func:`~napari_unet_seg.export.export_model` with format
``bioimageio`` calls :func:`export_bioimageio`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .export import (ONNX_OPSET, TOLERANCE, ExportError, Messages, _check_inputs, _cpu_copy, _file_target, _load,
                     _quiet, _require, _test_image, _write_onnx, _write_torchscript, min_sizes)
from .image_io import atomic_write
from .model_file import SegmentationModel
from .normalization import normalize
from .postprocessing import prediction_settings
from .pretrained import terms_lines

__all__ = ["export_bioimageio"]


_ARCHITECTURES = {  # label, citation text, DOI
    "unet": ("U-Net", "Ronneberger, Fischer, Brox: U-Net (MICCAI 2015)", "10.1007/978-3-319-24574-4_28"),
    "basic_unet": ("U-Net", "Ronneberger, Fischer, Brox: U-Net (MICCAI 2015)", "10.1007/978-3-319-24574-4_28"),
    "attention_unet": ("Attention U-Net", "Oktay et al.: Attention U-Net (2018)", "10.48550/arXiv.1804.03999"),
    "segnet": ("SegNet", "Badrinarayanan, Kendall, Cipolla: SegNet (TPAMI 2017)", "10.1109/TPAMI.2016.2644615"),
}
_MONAI = ("Cardoso et al.: MONAI, an open-source framework for deep learning in healthcare (2022)",
          "10.48550/arXiv.2211.02701")
#: bioimage.io's names of the spacing units a model file may state (``info`` or ``config`` ``spacing_unit``).
_UNITS = {"nm": "nanometer", "nanometer": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
          "micron": "micrometer", "micrometer": "micrometer", "mm": "millimeter", "millimeter": "millimeter",
          "pm": "picometer", "angstrom": "angstrom", "Å": "angstrom"}


# --------------------------------------------------------------------------------------------- the package


def export_bioimageio(model: SegmentationModel | str | os.PathLike, out: str | os.PathLike, *, check: bool = True,
                      overwrite: bool = False, test_image: np.ndarray | None = None,
                      weights: Sequence[str] = ("torchscript", "onnx"), authors: Sequence[str] | None = None,
                      license: str | None = None, on_message: Messages = None) -> Path:
    """Write a bioimage.io model package (a folder, or a ``.zip`` when ``out`` ends so) and validate it.

    The package holds ``rdf.yaml`` (format 0.5), the ``weights`` (TorchScript and/or ONNX, each checked),
    raw test input and expected output (``.npy``), sample images (``.tif``), ``cover.png`` and ``README.md``.
    Test tensors and cover come from ``test_image``, else the first training image, else the shipped sample of
    the model's training data (``info["sample"]``), else synthetic discs (3D models: the shipped EM volume). Authors, licence and citations come
    from the model file's ``info`` (the licence else CC-BY-4.0).
    """
    _require("bioimageio.spec", what="exporting a bioimage.io package")
    unknown = [w for w in weights if w not in ("torchscript", "onnx")]
    if unknown or not weights:
        raise UserError(f"bioimage.io weights {unknown or 'none'}: use torchscript and/or onnx")
    if "onnx" in weights:
        _require("onnx", "onnxscript", "onnxruntime", what="ONNX weights in a bioimage.io package")
    model = _load(model)
    license = license or model.info.get("license") or "CC-BY-4.0"
    _check_license(license)
    target = Path(out)
    _package_target(target, overwrite, model)  # a refused --out before any warning
    _warn_terms(model, authors, license, on_message)
    raw = _test_image(model, test_image if test_image is not None else _sample_image(model))
    inputs = _check_inputs(model, raw)
    staging = _staging_folder(target)
    try:
        files = {}
        if "torchscript" in weights:
            files["torchscript"] = "weights_torchscript.pt"
            _write_torchscript(model, staging / files["torchscript"], inputs, check, on_message)
        if "onnx" in weights:
            files["onnx"] = "weights.onnx"
            _write_onnx(model, staging / files["onnx"], inputs, ONNX_OPSET, check, on_message)
        probabilities = _write_test_data(model, staging, raw)
        _write_cover(staging / "cover.png", raw, probabilities, model.num_classes)
        rdf = _rdf(model, staging, files, authors, license)
        (staging / "README.md").write_text(_readme(model, rdf, inputs if check else []), encoding="utf-8")
        rdf["documentation"] = _file(staging, "README.md")
        _write_yaml(staging / "rdf.yaml", rdf)
        _validate(staging / "rdf.yaml", on_message)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _sample_image(model: SegmentationModel) -> np.ndarray | None:
    """The first image of the shipped sample set drawn from the model's training data (``info["sample"]``),
    when the training folder the model names is not on this machine; None otherwise."""
    folder = model.config.get("images")
    if not model.info.get("sample") or (folder and Path(folder).is_dir()):
        return None
    from .image_io import read_image
    from .pairing import list_images
    from .sample_data import sample_folders

    return read_image(list_images(sample_folders(model.info["sample"])[0])[0])


def _warn_terms(model: SegmentationModel, authors: Sequence[str] | None, license: str, on_message: Messages) -> None:
    """Say when the package will name no real author, or licence weights more freely than their data allows."""
    if not on_message:
        return
    if not (authors or model.info.get("authors")):
        on_message("warning: no author in the model file: the package names 'napari-unet-seg user'; pass --author")
    data_terms = model.info.get("data_license", "")
    if ("NC" in str(model.info.get("license", "")) or "non-commercial" in data_terms) and "NC" not in license:
        on_message(f"warning: licence {license} allows commercial use, but the training data's terms do not "
                   f"({data_terms or model.info['license']})")


def _write_test_data(model: SegmentationModel, folder: Path, raw: np.ndarray) -> np.ndarray:
    """Test input (raw) and output (probabilities, what bioimage.io's postprocessing yields) as npy and tif."""
    import tifffile

    network = _cpu_copy(model)
    with torch.inference_mode():
        logits = network(torch.from_numpy(normalize(raw, model.normalization))[None])
    probabilities = (torch.sigmoid(logits) if model.num_classes == 2 else torch.softmax(logits, dim=1)).numpy()
    np.save(folder / "test_input.npy", raw[None])
    np.save(folder / "test_output.npy", probabilities.astype(np.float32))
    compression = "zlib" if raw.ndim == 4 else None  # volumes: a smaller package
    for name, array in (("sample_input.tif", raw), ("sample_output.tif", probabilities[0])):
        tifffile.imwrite(folder / name, array[0] if array.shape[0] == 1 else array, photometric="minisblack",
                         compression=compression)
    return probabilities[0]


def _write_cover(path: Path, raw: np.ndarray, probabilities: np.ndarray, num_classes: int) -> None:
    from matplotlib.figure import Figure

    if raw.ndim == 4:  # a volume: its middle section
        raw, probabilities = raw[:, raw.shape[1] // 2], probabilities[:, probabilities.shape[1] // 2]
    figure = Figure(figsize=(8, 4), dpi=80)
    left, right = figure.subplots(1, 2)
    shown = raw[0] if raw.shape[0] == 1 else np.moveaxis(raw, 0, -1)
    low, high = np.percentile(shown, [1, 99.8])
    left.imshow(np.clip((shown - low) / max(high - low, 1e-12), 0, 1), cmap="gray")
    if num_classes == 2:
        right.imshow(probabilities[0], cmap="magma", vmin=0, vmax=1)
    else:
        right.imshow(probabilities.argmax(axis=0), cmap="tab10", interpolation="nearest")
    left.set_title("input")
    right.set_title("foreground probability" if num_classes == 2 else "classes")
    for axis in (left, right):
        axis.set_axis_off()
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.04)
    figure.savefig(path)


def _rdf(model: SegmentationModel, folder: Path, files: dict[str, str], authors: Sequence[str] | None,
         license: str) -> dict[str, Any]:
    from bioimageio.spec.model.v0_5 import ModelDescr

    from . import __version__

    arch = model.architecture["name"]
    label, cite_text, doi = _ARCHITECTURES.get(arch, (arch, arch, None))
    binary = model.num_classes == 2
    task = "binary segmentation" if binary else f"{model.num_classes}-class segmentation"
    least = min_sizes(model)
    names = ("y", "x") if model.spatial_dims == 2 else ("z", "y", "x")
    scales = _scales(model)
    space = [{"type": "space", "id": axis, "size": {"min": m, "step": 1}, **scales.get(axis, {})}
             for axis, m in zip(names, least)]
    channels = ["gray"] if model.in_channels == 1 else ["red", "green", "blue"]
    outputs = ["foreground"] if binary else [f"class{k}" for k in range(model.num_classes)]
    norm = model.normalization
    given = authors or model.info.get("authors") or ["napari-unet-seg user"]
    cites = [{"text": cite_text, "doi": doi}] if doi else []
    cites += [{"text": _MONAI[0], "doi": _MONAI[1]}] + list(model.info.get("cite", []))
    metrics = {k: v if isinstance(v, int) else round(float(v), 4) for k, v in model.metrics.items()
               if isinstance(v, (int, float))}
    name = model.info.get("display_name") or f"{label} {task} ({model.name})"
    dice = f"; validation Dice {metrics['val_dice']}" if "val_dice" in metrics else ""
    return {
        "format_version": ModelDescr.implemented_format_version,
        "type": "model",
        "name": _safe_name(name),
        "description": model.info.get("description") or
        f"{label} for {task} of {'grayscale' if model.in_channels == 1 else 'RGB'} "
        f"{'2D images' if model.spatial_dims == 2 else '3D volumes'}, trained with "
        f"napari-unet-seg {__version__}{dice}",
        "authors": [a if isinstance(a, dict) else {"name": str(a)} for a in given],
        "cite": cites,
        "license": license,
        "tags": ["napari-unet-seg", arch.replace("_", "-"), "segmentation", f"{model.spatial_dims}d", "pytorch"],
        "documentation": {"source": "README.md"},  # its hash is added once it is written
        "covers": [_file(folder, "cover.png")],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{
            "id": "input",
            "description": "raw image; normalized by the preprocessing",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels}, *space],
            "test_tensor": _file(folder, "test_input.npy"),
            "sample_tensor": _file(folder, "sample_input.tif"),
            "data": {"type": "float32"},
            "preprocessing": _preprocessing(norm, names),
        }],
        "outputs": [{
            "id": "probabilities",
            "description": "foreground probability" if binary else "class probabilities (softmax over channels)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": outputs},
                     *({"type": "space", "id": a, "size": {"tensor_id": "input", "axis_id": a}, **scales.get(a, {})}
                       for a in names)],
            "test_tensor": _file(folder, "test_output.npy"),
            "sample_tensor": _file(folder, "sample_output.tif"),
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "postprocessing": [{"id": "sigmoid"}] if binary else [{"id": "softmax", "kwargs": {"axis": "channel"}}],
        }],
        "weights": _weights(folder, files),
        "config": {"napari_unet_seg": {
            "version": __version__, "architecture": model.architecture, "normalization": norm,
            "num_classes": model.num_classes, "metrics": metrics,
            **({"min_size": least[0]} if model.spatial_dims == 2 and len(set(least)) == 1 else
               {"min_size": least, "spatial_dims": model.spatial_dims, "spacing": model.spacing}),
            "logits_to_probabilities": "sigmoid" if binary else "softmax",
            "postprocess": prediction_settings(model.postprocess)}},
    }


def _preprocessing(norm: dict, names: Sequence[str]) -> list[dict[str, Any]]:
    """The model's normalization as bioimage.io preprocessing: ``scale_range`` over its percentiles."""
    if norm.get("method", "percentile") == "none":
        return []
    low, high = (norm.get("low", 1.0), norm.get("high", 99.8)) if norm.get("method") != "minmax" else (0.0, 100.0)
    return [{"id": "scale_range", "kwargs": {"axes": ["channel", *names], "min_percentile": low,
                                             "max_percentile": high}}]


def _weights(folder: Path, files: dict[str, str]) -> dict[str, Any]:
    """The weights entries of the exported formats (ONNX converted from the TorchScript when both exist)."""
    weights: dict[str, Any] = {}
    if "torchscript" in files:
        weights["torchscript"] = {**_file(folder, files["torchscript"]),
                                  "pytorch_version": torch.__version__.split("+")[0]}
    if "onnx" in files:
        weights["onnx"] = {**_file(folder, files["onnx"]), "opset_version": ONNX_OPSET}
        if "torchscript" in files:
            weights["onnx"]["parent"] = "torchscript"
    return weights


def _scales(model: SegmentationModel) -> dict[str, dict[str, Any]]:
    """``{axis: {"scale": s[, "unit": u]}}`` from a 3D model's voxel spacing; empty when it is not known (and for
    2D models, whose packages stay as they were)."""
    spacing = model.spacing
    if model.spatial_dims != 3 or not spacing or len(spacing) != 3:
        return {}
    named = model.info.get("spacing_unit") or model.config.get("spacing_unit")
    unit = _UNITS.get(str(named).strip()) if named else None
    return {axis: {"scale": float(s), **({"unit": unit} if unit else {})} for axis, s in zip(("z", "y", "x"), spacing)}


def _labels_rule(model: SegmentationModel) -> str:
    """How napari-unet-seg makes labels from the probabilities: the model's threshold and post-processing
    (chosen on its validation images), which bioimage.io's operators do not carry."""
    chosen = prediction_settings(model.postprocess)
    rule = (f"foreground probability > {chosen['threshold']:g}" if model.num_classes == 2
            else "the argmax over channels")
    steps = [text for name, text in (("tta", "the mean over flips (test-time augmentation)"),
                                     ("keep_largest", "the largest object kept"), ("fill_holes", "holes filled"))
             if chosen[name]]
    where = " (chosen on the model's validation images)" if model.postprocess else ""
    extra = f", then {', '.join(steps)}" if steps else ""
    note = "; napari-unet-seg applies these steps, this package's operators stop at the probabilities" \
        if steps else ""
    return f"{rule}{extra}{where}{note} (`config.napari_unet_seg.postprocess`)."


def _readme(model: SegmentationModel, rdf: dict[str, Any], checks: list[np.ndarray]) -> str:
    config = rdf["config"]["napari_unet_seg"]
    steps = [p["kwargs"] for p in rdf["inputs"][0]["preprocessing"]]
    norm = (f"`scale_range`: per image, percentile {steps[0]['min_percentile']:g} -> 0 and "
            f"{steps[0]['max_percentile']:g} -> 1, over all channels together" if steps else "none (raw values)")
    metrics = ", ".join(f"{k} {v}" for k, v in config["metrics"].items()) or "not recorded"
    checked = ", ".join("x".join(map(str, b.shape)) for b in checks) or "(none: exported without the check)"
    channels = ", ".join(rdf["outputs"][0]["axes"][1]["channel_names"])
    space = rdf["inputs"][0]["axes"][2:]
    axes = [a["id"] for a in space]
    if len(space) == 2:
        sizes = f"any height and width of at least {config['min_size']} pixels"
    else:
        least = ", ".join(f"{a['id']} {a['size']['min']}" for a in space)
        spacing = ", ".join(f"{a['scale']:g}" for a in space) if "scale" in space[0] else ""
        unit = space[0].get("unit", "in the training data's unit") if spacing else ""
        sizes = (f"any depth, height and width of at least {least} voxels" +
                 (f"; trained at voxel spacing (z, y, x) = ({spacing}) {unit}" if spacing else ""))
    return f"""# {rdf['name']}

{rdf['description']}.

Exported by napari-unet-seg {config['version']} from `{model.path.name if model.path else model.name}`.

## Inputs and outputs

- **input** `(batch, channel, {', '.join(axes)})`, channels: {', '.join(rdf['inputs'][0]['axes'][1]['channel_names'])};
  {sizes}.
- **preprocessing**: {norm}, as in training.
- **weights** (TorchScript / ONNX) take the normalized image and return logits; the **postprocessing**
  (`{config['logits_to_probabilities']}`) makes them the output `probabilities` in [0, 1], channels: {channels}.
  Labels: {_labels_rule(model)}

## Training

Architecture `{model.architecture['name']}`, arguments `{model.architecture.get('kwargs', {})}`.
Validation metrics: {metrics}.

## Training data, terms and citations

{chr(10).join(f"- {line}" for line in terms_lines(model.info)) or "- not recorded in the model file"}
- licence of this package: {rdf['license']}

## Validation

The exported weights reproduce the PyTorch model to a relative tolerance of {TOLERANCE:g} on the inputs
{checked}; `test_output.npy` is the PyTorch output for `test_input.npy`. The package validates with
`bioimageio.spec`; `bioimageio test rdf.yaml` (bioimageio.core) runs the weights on the test tensors.
"""


def _validate(rdf: Path, on_message: Messages) -> None:
    from bioimageio.spec import InvalidDescr, load_description

    with _quiet():
        description = load_description(rdf, perform_io_checks=True)
    summary = description.validation_summary
    if isinstance(description, InvalidDescr) or summary.status == "failed":
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}"[:160] for d in summary.details for e in d.errors]
        raise ExportError(f"the bioimage.io package does not validate ({'; '.join(errors[:3]) or summary.status}); "
                          "report this")
    if on_message:
        warned = sum(len(d.warnings) for d in summary.details)
        on_message(f"bioimage.io format {summary.format_version}: valid ({summary.status}, {warned} warning(s))")



# --------------------------------------------------------------------------------------------- helpers


def _check_license(license: str) -> None:
    from bioimageio.spec.generic.v0_3 import LicenseId

    try:
        LicenseId(license)
    except ValueError:  # pydantic's ValidationError
        raise UserError(f"license {license!r} is not an SPDX license id; use one such as CC-BY-4.0, MIT or "
                        "BSD-3-Clause") from None



def _package_target(path: Path, overwrite: bool, model: SegmentationModel) -> None:
    from .outputs import check_place, inside

    if path.suffix.lower() == ".zip":
        _file_target(path, overwrite, model)
        return
    check_place(path)  # the package is made beside it, then moved into place
    if model.path is not None and inside(model.path, path):
        raise UserError(f"--out {path}: holds the model file {model.path} and would replace it; "
                        "choose another folder")
    elif path.exists():
        if not path.is_dir():
            raise UserError(f"--out {path}: is a file; give a folder (or a .zip) for the bioimage.io package")
        if any(path.iterdir()):
            if not overwrite:
                raise UserError(f"--out {path}: exists and is not empty; choose another folder or pass --overwrite")
            if not (path / "rdf.yaml").is_file():
                raise UserError(f"--out {path}: holds files but no bioimage.io package (rdf.yaml), so it is not "
                                "replaced; choose an empty or new folder")


def _staging_folder(target: Path) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        staging.mkdir()  # not mkdtemp: its 0700 mode would stay on the package folder
        return staging
    except OSError as error:
        raise UserError(f"{target.parent}: cannot write here ({error.strerror}); "
                        "choose another output folder") from None


def _move_into_place(staging: Path, target: Path) -> None:
    if target.suffix.lower() == ".zip":
        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(staging.iterdir()):
                    archive.write(file, file.name)

        atomic_write(target, write)
        return
    old = None
    try:
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        staging.rename(target)
    except OSError as error:
        if old is not None and not target.exists():
            old.rename(target)
        raise UserError(f"{target}: cannot write the package here ({error.strerror}); choose another folder") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _file(folder: Path, name: str) -> dict[str, str]:
    return {"source": name, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _safe_name(name: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    text = " ".join("".join(c if c in allowed else " " for c in name).split())[:64].strip()
    return text if len(text) >= 5 else f"{text} model".strip()
