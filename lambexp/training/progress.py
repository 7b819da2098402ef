"""What a person sees while arms train: the Progress interface the loop calls, and its three kinds: a
rich progress bar on a terminal, one line per epoch otherwise, nothing when quiet. Torch-free."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

from lambexp.output import pct


class Progress(Protocol):
    """What the training loop tells whoever watches it."""

    def begin(self, total_steps: int, done: int = 0) -> None: ...
    def advance(self, step: int, loss: float) -> None: ...
    def epoch_end(self, epoch: int, metrics: dict) -> None: ...
    def note(self, message: str) -> None: ...
    def end(self) -> None: ...


class NoProgress:
    """A Progress that shows nothing (tests, --quiet, ranks > 0)."""

    def begin(self, total_steps: int, done: int = 0) -> None: ...
    def advance(self, step: int, loss: float) -> None: ...
    def epoch_end(self, epoch: int, metrics: dict) -> None: ...
    def note(self, message: str) -> None: ...
    def end(self) -> None: ...


def _epoch_line(name: str, epoch: int, epochs: int, metrics: dict, loss: float) -> str:
    return (f"[{name}] epoch {epoch}/{epochs}  train loss {loss:.4f}  "
            f"test loss {metrics['test/loss']:.4f}  test accuracy {pct(metrics['test/accuracy'])}")


class LineProgress(NoProgress):
    """One plain line per epoch, for logs and pipes."""

    def __init__(self, name: str, epochs: int, write: Callable[[str], None]):
        self.name, self.epochs, self.write = name, epochs, write
        self.loss = float("nan")

    def advance(self, step: int, loss: float) -> None:
        self.loss = loss

    def note(self, message: str) -> None:
        self.write(f"[{self.name}] {message}")

    def epoch_end(self, epoch: int, metrics: dict) -> None:
        self.write(_epoch_line(self.name, epoch, self.epochs, metrics, self.loss))


class SharedBar:
    """One rich live display for the bars of every arm that trains at once (the members of a
    stack; rich allows one live display at a time): shown while any bar is."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                console=console, transient=True)
        self._users = 0

    def add(self, name: str, total: int, done: int):
        if self._users == 0:
            self.bar.start()
        self._users += 1
        return self.bar.add_task(name, total=total, completed=done, status="")

    def remove(self, task) -> None:
        self.bar.remove_task(task)
        self._users -= 1
        if self._users == 0:
            self.bar.stop()


class BarProgress(LineProgress):
    """A rich progress bar per arm (steps, loss, last test accuracy), and the epoch lines above it;
    the bars of arms training at once share one display (``SharedBar``)."""

    def __init__(self, name: str, epochs: int, console, shared: SharedBar | None = None):
        super().__init__(name, epochs, lambda line: console.print(line, markup=False, highlight=False))
        self.shared = shared or SharedBar(console)
        self.task = None

    def begin(self, total_steps: int, done: int = 0) -> None:
        self.task = self.shared.add(self.name, total_steps, done)

    def advance(self, step: int, loss: float) -> None:
        super().advance(step, loss)
        self.shared.bar.update(self.task, completed=step, status=f"loss {loss:.4f}")

    def end(self) -> None:
        if self.task is not None:
            self.shared.remove(self.task)
            self.task = None


def progress_factory(quiet: bool, console=None) -> Callable:
    """A function arm → Progress: bars on a terminal, lines when piped, nothing when quiet."""
    if quiet:
        return lambda arm: NoProgress()
    if console is not None and console.is_terminal:
        shared = SharedBar(console)
        return lambda arm: BarProgress(arm.name, arm.epochs, console, shared)
    return lambda arm: LineProgress(arm.name, arm.epochs, lambda s: print(s, file=sys.stdout,
                                                                            flush=True))
