"""Models that ship with the package, by name (``load_model("em-membranes")``, ``"dermoscopy-lesions"``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DISPLAY_NAMES", "display_name", "pretrained_path", "shipped_models"]

#: How shipped models are listed in the widgets (file stem -> name).
DISPLAY_NAMES = {"em-membranes": "EM membranes (U-Net)", "dermoscopy-lesions": "Dermoscopy lesions (U-Net)"}


def _folder() -> Path:
    return Path(str(resources.files(__package__).joinpath("pretrained")))


def shipped_models() -> dict[str, Path]:
    """``{name: file}`` for every shipped model (empty when none ships)."""
    folder = _folder()
    return {p.stem: p for p in sorted(folder.glob("*.pt"))} if folder.is_dir() else {}


def pretrained_path(name: str) -> Path | None:
    """The file of shipped model ``name``, or None."""
    return shipped_models().get(name)


def display_name(name: str) -> str:
    """The listed name of shipped model ``name`` (its file stem when none is registered)."""
    return DISPLAY_NAMES.get(name, name)
