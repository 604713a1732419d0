"""Typed progress events that the engine's job generators yield (no Qt type anywhere).

The CLI prints them, the widgets draw them, tests assert on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Batch", "Epoch", "Checkpoint", "Message", "Tiles", "drain", "messages_only"]


@dataclass(frozen=True)
class Batch:
    """A training batch finished."""

    epoch: int
    batch: int
    batches: int
    loss: float


@dataclass(frozen=True)
class Epoch:
    """An epoch finished; ``metrics`` is its row of ``history.csv``."""

    epoch: int
    epochs: int
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """A model file was written (``kind`` is ``best`` or ``last``)."""

    path: Path
    kind: str
    epoch: int


@dataclass(frozen=True)
class Message:
    """Something the user should read (``level`` is ``info`` or ``warning``)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class Tiles:
    """Prediction progress: ``done`` of ``total`` units (tiles or slices) finished."""

    done: int
    total: int


def drain(steps, on_event=None):
    """Run a job generator to its end, passing each event to ``on_event``; return the job's result."""
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def messages_only(steps):
    """Pass on the :class:`Message` events of a job generator (not its progress) and return its result."""
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Message):
            yield event
