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

__all__ = ["FORMAT", "FORMAT_VERSION", "SegmentationModel", "save_model", "load_model", "read_metadata"]

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
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.info.get("display_name") or (self.path.stem if self.path else self.architecture["name"])

    @property
    def tile_size(self) -> int:
        """The smallest tile edge predict uses by default: the training patch (or resize) size, at least 256."""
        size = self.config.get("resize") or self.config.get("patch_size") or 256
        return max(256, int(size))

    def metadata(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "normalization": self.normalization,
                "config": self.config, "metrics": self.metrics, "info": self.info}


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
        raise UserError(f"model file {path}: no such file; check the path or pick a shipped model by name")
    if path.is_dir():
        raise UserError(f"model file {path}: is a folder; pass the .pt file inside it (e.g. best.pt)")
    if path.stat().st_size == 0:
        raise UserError(f"model file {path}: is empty (0 bytes); it was not written completely, use another")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error).splitlines()[0] if str(error) else ""
        if "weights_only" in str(error) or "Unsupported" in str(error) or "global" in str(error).lower():
            raise UserError(f"model file {path}: refused, it holds Python objects that could run code on load "
                            "(unsafe or not made by napari-unet-seg); do not use it") from None
        raise UserError(f"model file {path}: cannot be read ({text}); it is corrupt, use another") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"model file {path}: cannot be read ({reason}); it is truncated or corrupt, "
                        "use another copy") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"model file {path}: is not a napari-unet-seg model file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"model file {path}: is format version {version}, newer than this napari-unet-seg "
                        f"reads ({FORMAT_VERSION}); upgrade napari-unet-seg")
    return payload


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a model file, without building the network."""
    return json.loads(_read_payload(Path(path))["metadata"])


def read_summary(source: str | os.PathLike) -> tuple[Path, dict[str, Any], int]:
    """``(path, metadata, number of parameters)`` of a model file or shipped model, without building the
    network (so without importing MONAI: ``napari-unet-seg info`` starts fast)."""
    from .models import parameter_count

    path = _resolve(source)
    payload = _read_payload(path)
    return path, json.loads(payload["metadata"]), parameter_count(payload["state_dict"])


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
    from .models import build_network

    path = _resolve(source)
    payload = _read_payload(path)
    try:
        meta = json.loads(payload["metadata"])
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
                             info=meta.get("info", {}), path=path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state saved with ``last.pt`` (for ``train --resume``)."""
    payload = _read_payload(Path(path))
    if "training_state" not in payload:
        raise UserError(f"model file {path}: holds no training state to resume from; use RUN/last.pt")
    return payload["training_state"]


def _out_channels(num_classes: int) -> int:
    """Binary tasks have one logit channel (sigmoid); multi-class one per class (softmax)."""
    return 1 if num_classes == 2 else num_classes
