"""A run folder is locked while a run writes to it; stale temporary files of killed saves are removed.

The lock is an advisory ``flock`` on ``RUN/.lock`` (which names the process holding it): the kernel
releases it when that process ends in any way, so the lock of a killed run is simply taken over. Where
``fcntl`` does not exist (Windows), an exclusive create of the file stands in, taken over when the
process it names is gone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

#: The files a training run writes into its folder; an existing folder with any of them is not overwritten
#: without permission.
RUN_FILES = ("best.pt", "last.pt", "history.csv", "curves.png")

__all__ = ["LOCK_NAME", "run_lock", "clean_stale_files"]

LOCK_NAME = ".lock"


def _busy(run_dir: Path, lock: Path) -> UserError:
    try:
        holder = lock.read_text().strip() or "unknown"
    except OSError:
        holder = "unknown"
    return UserError(f"--out {run_dir}: another training run (process {holder}) is writing to this folder; "
                     "wait for it to end or choose another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _acquire_flock(run_dir: Path, lock: Path) -> int:
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _busy(run_dir, lock) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was removed by the run that held it just before we locked it: again
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _acquire_exclusive(run_dir: Path, lock: Path) -> int:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            text = lock.read_text().strip()
            if text.isdigit() and not _alive(int(text)):
                lock.unlink(missing_ok=True)  # the lock of a process that is gone
                continue
            raise _busy(run_dir, lock) from None
        os.write(fd, str(os.getpid()).encode())
        return fd
    raise _busy(run_dir, lock)


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the ``with`` block; :class:`UserError` when another run holds it."""
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_NAME
    try:
        import fcntl  # noqa: F401

        acquire = _acquire_flock
    except ImportError:
        acquire = _acquire_exclusive
    try:
        fd = acquire(run_dir, lock)
    except UserError:
        raise
    except OSError as error:
        raise UserError(f"--out {run_dir}: cannot write there ({error.strerror}); choose another folder") from None
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still held: no other run can have taken it
        os.close(fd)


def clean_stale_files(run_dir: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Remove the temporary files that killed saves of ``names`` (e.g. ``best.pt``) left in ``run_dir``.

    Call it holding the folder's lock: then no save of ours is under way there. Returns what was removed.
    """
    run_dir, removed = Path(run_dir), []
    for name in names:
        stem, suffix = Path(name).stem, Path(name).suffix
        for path in run_dir.glob(f".{stem}.*{suffix}.tmp"):  # image_io.atomic_write's temporary names
            path.unlink(missing_ok=True)
            removed.append(path)
    probe = run_dir / ".write-test"
    if probe.exists():
        probe.unlink()
        removed.append(probe)
    return removed
