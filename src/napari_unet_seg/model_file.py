"""Model files: one ``.pt`` file holds the weights and all that is needed to use them.

The file is a plain dict of tensors and strings written with ``torch.save`` and read with
``torch.load(weights_only=True)``, whose restricted unpickler refuses any object that could run code.
The metadata (architecture and its arguments, channels, classes, normalization, training config,
metrics, the command that made it) is a JSON string inside. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import UserError
from .image_io import atomic_write

__all__ = ["FORMAT", "FORMAT_VERSION", "SegmentationModel", "save_model", "load_model", "read_metadata",
           "resolve_model_path"]

FORMAT = "napari-unet-seg"
FORMAT_VERSION = 1


@dataclass
class SegmentationModel:
    """A network with what it needs to segment: ``predict(model, image)`` takes this.

    Attributes:
        network: the ``torch.nn.Module`` (on CPU after loading, in eval mode).
        architecture: ``{"name": ..., "kwargs": {...}}``, enough to rebuild the network.
        in_channels: 1 (gray) or 3 (RGB).
        num_classes: 2 for binary (one sigmoid output), else the number of classes (softmax).
        normalization: the intensity normalization the network was trained with.
        config: the training configuration (a dict; see :class:`~napari_unet_seg.config.TrainConfig`).
        metrics: validation (and test, when known) metrics of this model.
        info: provenance (display name, data and terms, the command that made it, lineage).
        postprocess: what predictions apply unless told otherwise, chosen on validation data
            (:mod:`~napari_unet_seg.tuning`): ``threshold``, ``tta``, ``keep_largest``, ``fill_holes``, and
            ``evidence`` (the validation Dice of each); empty for models made before it existed.
        path: the file it was loaded from, if any.
    """

    network: nn.Module
    architecture: dict[str, Any]
    in_channels: int
    num_classes: int
    normalization: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.info.get("display_name") or (self.path.stem if self.path else self.architecture["name"])

    @property
    def spatial_dims(self) -> int:
        """2 for a network of images (stacks are segmented slice by slice), 3 for a network of volumes."""
        return int(self.architecture.get("kwargs", {}).get("spatial_dims", 2))

    @property
    def spacing(self) -> list[float] | None:
        """The voxel (or pixel) spacing of the training data, slowest axis first, when it was known."""
        return self.config.get("spacing")

    @property
    def tile_size(self) -> int:
        """The smallest tile edge predict uses by default: the training patch (or resize) size, at least 256."""
        size = self.config.get("resize") or self.config.get("patch_size") or 256
        return max(256, int(size))

    def metadata(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "normalization": self.normalization,
                "config": self.config, "metrics": self.metrics, "info": self.info, "postprocess": self.postprocess}


def save_model(path: str | os.PathLike, model: SegmentationModel, *, training_state: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (the old file stays until the new one is complete).

    ``training_state`` (optimizer, scheduler, epoch, RNG) makes the file resumable; it must hold only
    tensors, numbers, strings, lists and dicts.
    """
    metadata = dict(model.metadata(), package_version=__version__)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": json.dumps(metadata, default=_json_default),
        "state_dict": {k: v.detach().cpu() for k, v in model.network.state_dict().items()},
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"model file {path}: no such file; check the path{_shipped_hint(path)}")
    if path.is_dir():
        raise UserError(f"model file {path}: is a folder; pass the .pt file inside it (e.g. best.pt)")
    if path.stat().st_size == 0:
        raise UserError(f"model file {path}: is empty (0 bytes); it was not written completely, use another")
    _refuse_foreign(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"model file {path}: refused, it holds Python objects that could run code on load "
                        "(unsafe or not made by napari-unet-seg); do not use it") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0][:120]
        if "weights_only" in reason or "torch.load" in reason:
            reason = type(error).__name__
        raise UserError(f"model file {path}: cannot be read ({reason}); it is truncated or corrupt, "
                        "use another copy") from None
    if isinstance(payload, dict) and payload.get("format") != FORMAT:
        _refuse_foreign_dict(path, payload)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"model file {path}: is not a napari-unet-seg model file; use a model file that train wrote")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"model file {path}: is format version {version}, newer than this napari-unet-seg "
                        f"reads ({FORMAT_VERSION}); upgrade napari-unet-seg")
    return payload


_OURS = "napari-unet-seg loads the .pt model files that train writes (RUN/best.pt)"


#: How the files most often passed by mistake begin.
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"II*\x00": "a TIFF image",
          b"MM\x00*": "a TIFF image", b"BM": "a BMP image", b"\x93NUMPY": "a NumPy array file"}


def _shipped_hint(path: Path) -> str:
    """For a bare name, the shipped models' names (the closest first) that could have been meant."""
    if len(path.parts) != 1 or path.suffix:
        return ""
    import difflib

    from .pretrained import shipped_models

    names = sorted(shipped_models())
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    meant = f"did you mean {close[0]}? " if close else ""
    return f", or name a shipped model: {meant}shipped: {', '.join(names) or 'none'}"


def _refuse_foreign(path: Path) -> None:
    """Name the kinds of file often mistaken for a model file, before torch reads them."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.lstrip()[:1] in (b"{", b"["):
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but JSON text; {_OURS}")
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower() or path.suffix.lower() == ".onnx"):
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but an ONNX model (run it with "
                        f"onnxruntime); {_OURS}, "
                        "pass the one it was exported from")
    if not head.startswith((b"PK", b"\x80")):  # neither a zip archive (torch.save) nor a pickle (its old format)
        kind = next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)),
                    "a file of another kind" if b"\x00" in head else "text")
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but {kind}; {_OURS}")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # torch.load reports it
    if any(Path(n).name in ("rdf.yaml", "bioimageio.yaml") for n in names):
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but a bioimage.io package (open it "
                        f"with a bioimage.io tool); {_OURS}, "
                        "pass the one it was exported from")
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but a TorchScript export (load it "
                        f"with torch.jit.load); {_OURS}, "
                        "pass the one it was exported from")


def _refuse_foreign_dict(path: Path, payload: dict) -> None:
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but a plain state dict (weights "
                        f"without architecture, channels or normalization); {_OURS}")
    if "state_dict" in payload or "model_state_dict" in payload:
        raise UserError(f"model file {path}: is not a napari-unet-seg model file but a checkpoint of another "
                        f"program; {_OURS}")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a model file, without building the network."""
    return json.loads(_read_payload(Path(path))["metadata"])


def read_summary(source: str | os.PathLike) -> tuple[Path, dict[str, Any], int]:
    """``(path, metadata, number of parameters)`` of a model file or shipped model, without building the
    network (so without importing MONAI: ``napari-unet-seg info`` starts fast)."""
    from .models import parameter_count

    path = _resolve(source)
    payload = _read_payload(path)
    meta = _checked_metadata(path, json.loads(payload["metadata"]))
    return path, meta, parameter_count(payload["state_dict"])


def resolve_model_path(source: str | os.PathLike) -> Path:
    """The file a model source names: the path itself, or a shipped model's file for a bare name."""
    return _resolve(source)


def _resolve(source: str | os.PathLike) -> Path:
    from .pretrained import pretrained_path

    path = Path(source)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        shipped = pretrained_path(str(source))
        if shipped is not None:
            return shipped
    return path


def load_model(source: str | os.PathLike | SegmentationModel) -> SegmentationModel:
    """Load a model file (or a shipped model by name, e.g. ``"em-membranes"``); never runs code from it.

    Raises:
        UserError: the file is missing, truncated, corrupt, unsafe, or from a newer format version.
    """
    if isinstance(source, SegmentationModel):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise UserError(f"model: got {type(source).__name__}; give a model file, a shipped model's name or a "
                        "loaded model")
    from .models import build_network

    path = _resolve(source)
    payload = _read_payload(path)
    try:
        meta = _checked_metadata(path, json.loads(payload["metadata"]))
        arch = meta["architecture"]
        network = build_network(arch["name"], meta["in_channels"], _out_channels(meta["num_classes"]),
                                **arch["kwargs"])
        network.load_state_dict(payload["state_dict"])
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0]
        raise UserError(f"model file {path}: its contents do not fit together ({reason}); it is damaged") from None
    network.eval()
    return SegmentationModel(network=network, architecture=arch, in_channels=meta["in_channels"],
                             num_classes=meta["num_classes"], normalization=meta["normalization"],
                             config=meta.get("config", {}), metrics=meta.get("metrics", {}),
                             info=meta.get("info", {}), postprocess=meta.get("postprocess", {}), path=path)


def _checked_metadata(path: Path, meta: Any) -> dict[str, Any]:
    """``meta`` once every field ``load_model`` and ``predict`` use holds a value of the right kind."""
    from .normalization import NORMALIZATIONS

    def bad(field: str, value: Any, expected: str) -> UserError:
        return UserError(f"model file {path}: field {field} is {_short(value)}, expected {expected}; the file was "
                         "changed or damaged, use another copy")

    if not isinstance(meta, dict):
        raise bad("metadata", meta, "a mapping")
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs"), dict):
        raise bad("architecture", arch, "a mapping with a name and kwargs")
    if meta.get("in_channels") not in (1, 3) or isinstance(meta.get("in_channels"), bool):
        raise bad("in_channels", meta.get("in_channels"), "1 or 3")
    classes = meta.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= 255:
        raise bad("num_classes", classes, "a whole number from 2 to 255 (2 = binary)")
    norm = meta.get("normalization")
    if not isinstance(norm, dict) or norm.get("method") not in NORMALIZATIONS:
        raise bad("normalization", norm, f"a mapping whose method is one of {', '.join(NORMALIZATIONS)}")
    if norm["method"] == "percentile" and not all(_number(norm.get(k)) for k in ("low", "high")):
        raise bad("normalization", norm, "percentile bounds low and high as numbers")
    for name in ("config", "metrics", "info", "postprocess"):
        if not isinstance(meta.get(name, {}), dict):
            raise bad(name, meta[name], "a mapping")
    post = meta.get("postprocess", {})
    if "threshold" in post and not (_number(post["threshold"]) and 0 < post["threshold"] < 1):
        raise bad("postprocess.threshold", post["threshold"], "a number between 0 and 1")
    for name in ("tta", "keep_largest", "fill_holes"):
        if name in post and not isinstance(post[name], bool):
            raise bad(f"postprocess.{name}", post[name], "true or false")
    for name in ("resize", "patch_size"):
        value = meta.get("config", {}).get(name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise bad(f"config.{name}", value, "a positive whole number or none")
    return meta


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state saved with ``last.pt`` (for ``train --resume``)."""
    payload = _read_payload(Path(path))
    if "training_state" not in payload:
        raise UserError(f"model file {path}: holds no training state to resume from; use RUN/last.pt")
    return payload["training_state"]


def _out_channels(num_classes: int) -> int:
    """Binary tasks have one logit channel (sigmoid); multi-class one per class (softmax)."""
    return 1 if num_classes == 2 else num_classes
