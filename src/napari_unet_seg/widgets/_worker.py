"""Glue between the engine's job generators and the widgets: threads, cancelling, errors.

``start_job`` runs an engine generator (``predict_steps``, ``train_steps``, ``evaluate_steps``) in a
napari worker thread (``create_worker``, the machinery of ``thread_worker``) so the viewer stays
responsive. Each yielded event goes to ``on_event`` and the generator's return value to ``on_done``,
both in the main (Qt) thread. Cancel sets the ``threading.Event`` the engine polls (``cancel=``) and
lets the generator finish: the engine ends in its own cancelled branch (training keeps its files).
Errors and engine messages reach the user in the widget's words (``_messages.widget_words``), as a
napari notification and in the widget's status line.

With the environment variable ``NUS_SYNC=1`` the job runs synchronously in the main thread (the viewer
freezes until it ends), which makes debugging with breakpoints and tracebacks simple.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning

from ..errors import JobCancelled, UserError
from ..events import Message
from ._messages import widget_words

__all__ = ["Job", "start_job", "report_error", "show_message", "free_gpu_memory", "sync_mode"]

logger = logging.getLogger(__name__)

IDLE, RUNNING, DONE, CANCELLED, FAILED = "idle", "running", "done", "cancelled", "failed"


class _Failure(Exception):
    """Carries an engine exception out of the worker thread.

    superqt's worker swallows a ``RuntimeError`` (it takes it for a deleted Qt object), and torch's
    out-of-memory error is one, so every exception travels wrapped in this one.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def sync_mode() -> bool:
    """Whether ``NUS_SYNC=1`` asks for jobs to run in the main thread."""
    return os.environ.get("NUS_SYNC", "").strip().lower() in ("1", "true", "yes", "on")


def _guarded(steps: Generator) -> Generator:
    try:
        return (yield from steps)
    except JobCancelled:
        raise
    except Exception as error:  # noqa: BLE001 - re-raised in the main thread by report_error
        raise _Failure(error) from error


class Job:
    """One running engine job: its state, its cancel event and (unless synchronous) its worker.

    ``state`` goes ``running`` -> ``done`` | ``cancelled`` | ``failed``; ``result`` is the generator's
    return value when ``done``, ``error`` the exception when ``failed``.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.cancel_event = threading.Event()
        self.worker = None
        self.state = IDLE
        self.result: Any = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def cancel(self) -> None:
        """Ask the job to stop: the engine sees the event between batches/tiles and ends on its own.

        The generator is not closed from outside: training's cancelled branch writes the run's files.
        """
        self.cancel_event.set()


def _guard(callback: Callable | None) -> Callable[..., None]:
    """``callback`` made safe to call after its widget's Qt object was deleted (a dock closed mid-job)."""

    def call(*args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except RuntimeError as error:
            if "has been deleted" not in str(error):
                raise
            logger.debug("a widget closed while its job ran: %s", error)

    return call


def start_job(what: str, make_steps: Callable[[threading.Event], Generator], *,
              on_event: Callable[[Any], None] | None = None, on_done: Callable[[Any], None] | None = None,
              on_finish: Callable[[Job], None] | None = None, owner: Any = None,
              status: Any = None) -> Job:
    """Run the generator ``make_steps(cancel_event)`` in a worker thread; return its :class:`Job`.

    ``on_event(event)`` gets every yielded event, ``on_done(result)`` the return value of a job that
    completed, and ``on_finish(job)`` is always called last (completed, cancelled or failed), so the
    widget can re-enable its buttons. Errors are shown as napari notifications and in the ``status``
    Label when given (see :func:`report_error`).
    ``what`` names the job in those messages (``"segmentation"``, ``"training"``, ...). When the Qt
    widget ``owner`` is destroyed (its dock closed), the job is cancelled. Jobs use the physical CPU cores
    less one (:func:`~napari_unet_seg.device.threads_beside_ui`).
    """
    from ..device import threads_beside_ui

    threads_beside_ui()  # the job's CPU work leaves the napari window a core
    job = Job(what)
    job.state = RUNNING
    steps = make_steps(job.cancel_event)
    on_event, on_done, on_finish = _guard(on_event), _guard(on_done), _guard(on_finish)

    def event(value: Any) -> None:
        if isinstance(value, Message):
            show_message(value)
        on_event(value)

    def returned(value: Any) -> None:
        job.result = value
        if job.cancel_event.is_set():
            job.state = CANCELLED  # the engine stopped early on its own and returned a partial result
        else:
            job.state = DONE
        on_done(value)

    def errored(error: BaseException) -> None:
        error = error.error if isinstance(error, _Failure) else error
        if isinstance(error, JobCancelled):
            job.state = CANCELLED
            return
        job.state, job.error = FAILED, error
        report_error(error, what, status)

    def finished(*_: Any) -> None:
        if job.state == RUNNING:  # the worker quit at a yield: neither returned nor errored
            job.state = CANCELLED
        if job.state == CANCELLED:
            show_info(f"{what} cancelled")
        on_finish(job)

    if sync_mode():
        try:
            while True:
                event(next(steps))
        except StopIteration as stop:
            returned(stop.value)
        except Exception as error:  # noqa: BLE001 - shown as a notification, like the threaded path
            errored(error)
        finished()
        return job

    from napari.qt.threading import create_worker

    worker = create_worker(_guarded, steps, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(event)
    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    job.worker = worker
    if owner is not None:
        owner.destroyed.connect(job.cancel)
    worker.start()
    return job


def error_line(error: BaseException, what: str = "the job") -> str:
    """An error as one line in the widget's words: a :class:`UserError` as its message, else with its type."""
    if isinstance(error, UserError):
        return widget_words(str(error))
    text = " ".join(str(error).split())
    return f"{what} failed: {type(error).__name__}: {widget_words(text) if text else ''}".rstrip(": ")


def report_error(error: BaseException, what: str = "the job", status: Any = None) -> str:
    """Show an error as one line, as a napari notification and in the ``status`` Label; return the line.

    Unexpected errors also go to the log with their traceback, for bug reports.
    """
    if not isinstance(error, UserError):
        logger.error("%s failed", what, exc_info=(type(error), error, error.__traceback__))
    line = error_line(error, what)
    if status is not None:
        from ._layout import set_status

        try:
            set_status(status, line, error=True)
        except RuntimeError:  # the widget was closed
            pass
    show_error(line)
    return line


def show_message(message: Message) -> None:
    """An engine :class:`~napari_unet_seg.events.Message` as a napari notification, in the widget's words."""
    (show_warning if message.level == "warning" else show_info)(widget_words(message.text))


def free_gpu_memory() -> None:
    """Give cached CUDA memory back after a job (training holds a lot of it); nothing to do on a CPU."""
    import torch

    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
