"""Output paths: no write replaces a file the user did not name as an output (with ``overwrite``), and
none ever replaces one of the job's own inputs (the model, an image, a mask) or writes into an input folder's
listing, ``overwrite`` or not. Each check runs before the job's work, so a refused path costs nothing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

__all__ = ["same_file", "inside", "check_place", "check_output", "check_folder", "check_distinct",
           "removed_if_left_empty"]


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


def check_place(path: str | os.PathLike, what: str = "--out") -> None:
    """Refuse ``path`` (a file or folder to write) when the nearest existing folder above it is a file or is
    not writable: before the work, not after it."""
    above = next((p for p in Path(path).parents if os.path.exists(p)), None)
    if above is None:  # the root or the current folder itself
        return
    if not above.is_dir():
        raise UserError(f"{what} {path}: cannot write here ({above} is a file, not a folder); choose another path")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot write here ({above} is not writable); choose another path")


def _check_unlisted(path: Path, folders: Iterable[str | os.PathLike | None], what: str, *, file: bool) -> None:
    """Refuse ``path`` inside an input folder when listing that folder would take it (a file with an image
    suffix directly in it), or the folder it lies in (a ``.zarr`` name directly in it), for one of its images."""
    from .image_io import IMAGE_SUFFIXES
    from .zarr_io import ZARR_SUFFIX

    for folder in folders:
        if folder is None or same_file(path, folder) or not inside(path, folder):
            continue
        parts = path.resolve().relative_to(Path(folder).resolve()).parts
        suffix = Path(parts[0]).suffix.lower()
        if not parts[0].startswith(".") and (suffix == ZARR_SUFFIX or (
                file and len(parts) == 1 and suffix in IMAGE_SUFFIXES)):
            raise UserError(f"{what} {path}: listing the input folder {folder} would take {parts[0]} for one of "
                            "its images; choose another name or folder")


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 folders: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                 what: str = "--out") -> Path:
    """``path`` as a :class:`Path` once it is safe to write: not one of ``inputs`` nor listed as an image of
    the input ``folders``, its place writable, and new unless ``overwrite``.

    Raises:
        UserError: ``path`` is one of the inputs (even with ``overwrite``), a folder, cannot be written, or
            exists already.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise UserError(f"{what} {path}: is the input {source} of this job and would be replaced; "
                            "choose another output path")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file name")
    _check_unlisted(path, folders, what, file=True)
    check_place(path, what)
    if path.exists() and not overwrite:
        raise UserError(f"{what} {path}: exists already; pass --overwrite to replace it, or choose another path")
    return path


def check_folder(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 folders: Iterable[str | os.PathLike | None] = (), what: str = "--out") -> Path:
    """``path`` as a :class:`Path` once it is safe as an output folder: not a file, not inside one of
    ``inputs`` (a ``.zarr`` store), none of the input ``folders`` (its files would join theirs) nor listed as
    an image of one, its place writable. Whether it may hold files already is the caller's to decide.

    Raises:
        UserError: any of these, naming ``path`` and what to do.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: is a file; give a folder")
    for source in inputs:
        if source is not None and inside(path, source):
            raise UserError(f"{what} {path}: lies in the input {source} of this job and would write into it; "
                            "choose another folder")
    folders = [folder for folder in folders if folder is not None]
    for folder in folders:
        if same_file(path, folder):
            raise UserError(f"{what} {path}: is the input folder {folder} of this job; the files written there "
                            "would mix with its files; choose another folder")
    _check_unlisted(path, folders, what, file=False)
    check_place(path, what)
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


@contextmanager
def removed_if_left_empty(folder: object) -> Iterator[None]:
    """Remove the folders a failed job created for ``folder`` and left empty (a data error found after the run
    folder was made leaves nothing behind); folders that existed before, or hold anything, stay."""
    if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
        yield
        return
    folder = Path(folder).absolute()
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in missing:  # the folder first, then the parents created with it
            try:
                path.rmdir()
            except OSError:  # not empty, not a folder, or already gone
                break
        raise
