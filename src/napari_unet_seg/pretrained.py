"""Models that ship with the package, by name (``load_model("em-membranes")``, ``"dermoscopy-lesions"``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["DISPLAY_NAMES", "display_name", "pretrained_path", "shipped_models", "shipped_model_for"]

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


@lru_cache(maxsize=None)
def _in_channels(path: Path) -> int:
    from .model_file import read_metadata

    return int(read_metadata(path)["in_channels"])


def shipped_model_for(rgb: bool) -> str | None:
    """The first shipped model (by name) that takes colour (``rgb``) or grayscale images; None if none does."""
    wanted = 3 if rgb else 1
    return next((name for name, path in shipped_models().items() if _in_channels(path) == wanted), None)
