"""Output paths: no write replaces a file the user did not name as an output (with ``overwrite``), and
none ever replaces one of the job's own inputs (the model, an image, a mask), ``overwrite`` or not."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

__all__ = ["same_file", "inside", "check_output", "check_distinct"]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (hard and symbolic links included); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies anywhere under it."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False, what: str = "--out") -> Path:
    """``path`` as a :class:`Path` once it is safe to write: not one of ``inputs``, and new unless ``overwrite``.

    Raises:
        UserError: ``path`` is one of the inputs (even with ``overwrite``), a folder, or exists already.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise UserError(f"{what} {path}: is the input {source} of this job and would be replaced; "
                            "choose another output path")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{what} {path}: exists already; pass --overwrite to replace it, or choose another path")
    return path


def check_distinct(planned: Iterable[tuple[Path, Path]], what: str = "--output") -> None:
    """Refuse when two sources (``(source, target)`` pairs) would write the same target file."""
    claimed: dict[Path, Path] = {}
    for source, target in planned:
        key = Path(os.path.normcase(Path(target).resolve()))
        if key in claimed and claimed[key] != source:
            raise UserError(f"{what}: {claimed[key].name} and {source.name} would both write {Path(target).name}; "
                            "rename one of them or predict them into separate folders")
        claimed[key] = source
