"""The one exception type for mistakes a user can fix (bad path, option, file or shape)."""

from __future__ import annotations

__all__ = ["UserError", "ReportedElsewhere", "JobCancelled", "is_cancelled", "size_text"]


class UserError(ValueError):
    """A problem with the user's input, stated in one line that names the thing and what to do.

    The CLI prints it and exits with status 2; the widgets show it as a napari notification.
    """


class ReportedElsewhere(UserError):
    """A user error that another process reports (rank 0 of a distributed run); the CLI exits 2 quietly."""


class JobCancelled(Exception):
    """Raised inside a job when its cancel signal is set; the job's files stay consistent."""


def is_cancelled(cancel) -> bool:
    """Whether a cancel signal is set: a ``threading.Event``, a callable returning bool, or None."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def size_text(shape) -> str:
    """A spatial shape for a message, in array order with its axes named: ``384x512 (Y x X)``,
    ``30x512x512 (Z x Y x X)`` (a bare ``384x512`` reads as width x height to many users)."""
    shape = tuple(int(n) for n in shape)
    axes = {2: "Y x X", 3: "Z x Y x X"}.get(len(shape), f"{len(shape)} axes")
    return f"{'x'.join(map(str, shape))} ({axes})"
