"""The worker glue: results, errors (RuntimeError included), cancelling and NUS_SYNC, with fake jobs."""

from __future__ import annotations

import threading
import time

import pytest

from napari_unet_seg.errors import JobCancelled, UserError
from napari_unet_seg.events import Message, Tiles
from napari_unet_seg.widgets import _worker

pytestmark = pytest.mark.gui


def fake_job(steps: int = 3, *, fail: BaseException | None = None, delay: float = 0.0):
    def make(cancel: threading.Event):
        def run():
            yield Message("starting")
            for done in range(1, steps + 1):
                if cancel.is_set():
                    raise JobCancelled()
                time.sleep(delay)
                if fail is not None and done == 2:
                    raise fail
                yield Tiles(done, steps)
            return "result"

        return run()

    return make


def start(qtbot, make, **kwargs):
    seen: dict[str, list] = {"events": [], "done": [], "finish": []}
    job = _worker.start_job("test job", make, on_event=seen["events"].append, on_done=seen["done"].append,
                            on_finish=seen["finish"].append, **kwargs)
    qtbot.waitUntil(lambda: bool(seen["finish"]), timeout=10_000)
    return job, seen


@pytest.mark.parametrize("sync", [False, True])
def test_a_job_delivers_events_result_and_finish(qtbot, notifications, monkeypatch, sync):
    monkeypatch.setenv("NUS_SYNC", "1" if sync else "0")
    job, seen = start(qtbot, fake_job())
    assert job.state == "done" and job.result == "result"
    assert (job.worker is None) is sync
    assert [type(e).__name__ for e in seen["events"]] == ["Message", "Tiles", "Tiles", "Tiles"]
    assert seen["done"] == ["result"] and seen["finish"] == [job]
    assert ("info", "starting") in notifications  # engine messages become notifications


@pytest.mark.parametrize("sync", [False, True])
@pytest.mark.parametrize(("error", "expected"), [
    (UserError("model file x.pt: is empty; use another"), "model file x.pt: is empty; use another"),
    # superqt's worker swallows a bare RuntimeError (torch's out-of-memory is one): it must still show
    (RuntimeError("CUDA out of memory"), "test job failed: RuntimeError: CUDA out of memory"),
])
def test_errors_become_one_notification(qtbot, notifications, monkeypatch, sync, error, expected):
    monkeypatch.setenv("NUS_SYNC", "1" if sync else "0")
    job, seen = start(qtbot, fake_job(fail=error))
    assert job.state == "failed" and job.error is error
    assert seen["done"] == [] and seen["finish"] == [job]
    assert ("error", expected) in notifications


def test_cancel_stops_between_steps(qtbot, notifications):
    job = None
    finished = []

    def cancel_early(event):
        if isinstance(event, Tiles) and event.done == 1:
            job.cancel()

    job = _worker.start_job("slow job", fake_job(50, delay=0.02), on_event=cancel_early, on_finish=finished.append)
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert job.state == "cancelled" and job.cancel_event.is_set()
    assert ("info", "slow job cancelled") in notifications


def test_sync_mode_flag(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("NUS_SYNC", value)
        assert _worker.sync_mode() is expected


def test_cancel_lets_the_engine_finish_its_own_cancelled_branch(qtbot, notifications):
    """Cancel sets the event only: the generator is not closed from outside, so its cancelled branch
    (training's: write the run's files) runs and its return value arrives."""
    cleaned = []

    def make(cancel: threading.Event):
        def run():
            for done in range(1, 200):
                if cancel.is_set():
                    yield Message("cancelled; the files hold step 1", "warning")
                    cleaned.append(done)
                    return "partial"
                time.sleep(0.01)
                yield Tiles(done, 200)
            return "all"

        return run()

    job, finished = None, []

    def cancel_early(event):
        if isinstance(event, Tiles) and event.done == 1:
            job.cancel()

    job = _worker.start_job("training", make, on_event=cancel_early, on_finish=finished.append)
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert cleaned and job.result == "partial" and job.state == "cancelled"
    assert ("warning", "cancelled; the files hold step 1") in notifications
