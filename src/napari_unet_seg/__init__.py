"""napari-unet-seg: train and run U-Net and SegNet segmentation models from napari, Python and the CLI.

The public functions load lazily, so ``import napari_unet_seg`` (as napari does at start-up) is cheap::

    from napari_unet_seg import train, predict, evaluate, load_model

``train``, ``predict``, ``evaluate`` and ``export_model`` check their arguments first (:mod:`.options`;
``napari_unet_seg.options.sweep`` too): a misspelt keyword, a wrong type or NaN raises ``UserError``
in one line.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# torch's CPU allocator asks Linux for 2 MiB pages for tensors of 2 MiB and more when this is set before its
# first allocation (PyTorch's CPU tuning guide): a network's large activations then cost 512 times fewer page
# faults (docs/performance.md; see also .heap). THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_LAZY = {
    "train": ".options",
    "predict": ".options",
    "evaluate": ".options",
    "export_model": ".options",
    "load_model": ".model_file",
    "save_model": ".model_file",
    "SegmentationModel": ".model_file",
    "TrainConfig": ".config",
    "UserError": ".errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .errors import UserError
    from .model_file import SegmentationModel, load_model, save_model
    from .options import evaluate, export_model, predict, train


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
