"""One dispatcher for every launcher: `reproduce --jobs N` (worker processes here), `--launcher
ray` and `--launcher slurm` are each a ``Launcher`` (submit, poll, cancel); ``dispatch`` owns the
rest, alike for all: the queue of units (a training, or a stack), the banner, a line per
unit sent and per training that comes back, a failure named by its training, and the end of every
other unit in flight at the first failure or Ctrl-C (each checkpoints where it can: a training
stopped mid-way continues from its last checkpoint on the next run).

A launcher ships ``task.train_task``'s arguments (arms as JSON, folders and the data folder as
strings) and returns what it returned; it never prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Protocol

from lambexp.base.statuses import Status
from lambexp.errors import Interrupted, UserError
from lambexp.runner.plan import (
    Result,
    Say,
    Training,
    describe_unit,
    say_result,
    stack_units,
    unfinished,
    unit_label,
)

Unit = list[Training]  # what one submission trains: one training, or a stack (--stack)
Results = list[Result]  # task.train_task's: one per training of the unit, in order

STOPPED = "with the unfinished trainings cancelled; the finished ones are kept, the others continue" \
          " from their last checkpoint"


class Launcher(Protocol):
    """Where units train. ``capacity``: units in flight at once (None: all, at once). ``early``: why
    a training there can come back interrupted without a Ctrl-C here, and what to do about it."""

    capacity: int | None
    early: str

    def check(self) -> None:
        """A UserError where it cannot start (no cluster there, too few resources for one unit);
        asked before anything is written, only when something is left to train."""

    def submit(self, units: Sequence[Unit], data_dir: str | None) -> list[Hashable]:
        """Send ``units`` to ``task.train_task``; one handle per unit, in order."""

    def describe(self) -> str:
        """Where the units train, for the banner (asked after the first submit)."""

    def poll(self, handles: list[Hashable]) -> list[tuple[Hashable, Results | UserError]]:
        """The handles of ``handles`` that ended, waiting a moment when none has: each with its
        results or, where it failed, a UserError saying why (the dispatcher names the unit)."""

    def cancel(self, handles: list[Hashable]) -> None:
        """The end of a dispatch: stop ``handles`` (still running: each checkpoints where it can),
        wait a while for them, and let go of what ``submit`` took (a pool, a connection)."""


class Tally:
    """How far a dispatch has come, for the end of each result line: "[3/166, about 2 h 5 min left]".
    The time left is the time so far per training back, times those still to come: rough (the
    trainings differ), and said only once a minute has passed, where it means something."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.clock, self.start = total, 0, clock, clock()

    def __call__(self, line: str) -> str:
        self.done += 1
        elapsed, left = self.clock() - self.start, self.total - self.done
        eta = f", about {_duration(elapsed / self.done * left)} left" if left and elapsed >= 60 else ""
        return f"{line} [{self.done}/{self.total}{eta}]"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def dispatch(work: Sequence[Training], launcher: Launcher, data_dir: Path | None, say: Say,
             stop_requested: Callable[[], bool], stack: int = 1) -> None:
    """Train the unfinished trainings of ``work`` through ``launcher``, in units of up to ``stack``
    (``plan.stack_units``). Raises the first failure, as ``<unit>: <why>``, once every other unit
    is stopped; Interrupted after a stop request; a UserError when trainings came back interrupted
    without one (``launcher.early``)."""
    pending = unfinished(work, say)
    if not pending:
        return
    queue = stack_units(pending, stack, data_dir)
    units, data = len(queue), str(data_dir) if data_dir else None
    in_flight: dict[Hashable, Unit] = {}
    early: list[str] = []  # trainings that came back interrupted, not asked to
    if stop_requested():
        raise Interrupted("before any training was sent; nothing was trained")
    try:
        lines = _submit_more(queue, in_flight, launcher, data)
        say(banner(len(pending), units, stack, launcher.describe()))
        tally = Tally(len(pending))
        while in_flight:
            for line in lines:
                say(line)
            for handle, outcome in launcher.poll(list(in_flight)):
                early += _came_back(in_flight.pop(handle), outcome, lambda line: say(tally(line)),
                                    stop_requested)
            if stop_requested():
                raise Interrupted(STOPPED)
            lines = _submit_more(queue, in_flight, launcher, data)
    finally:
        launcher.cancel(list(in_flight))  # a failure or a stop: nothing keeps training unseen
    if early:
        raise UserError(f"{len(early)} training{'s' * (len(early) > 1)} stopped before the end"
                        f" ({launcher.early}) and {'were' if len(early) > 1 else 'was'} checkpointed:"
                        " run the same command again to continue")


def _came_back(unit: Unit, outcome: Results | UserError, say: Say,
               stop_requested: Callable[[], bool]) -> list[str]:
    """Say how each training of ``unit`` ended, or raise its failure under its name; the labels of
    those interrupted without a stop request here."""
    if isinstance(outcome, UserError):
        raise type(outcome)(f"{unit_label(unit)}: {outcome}") from None
    early = []
    for t, (status, summary) in zip(unit, outcome):
        if status == Status.INTERRUPTED and not stop_requested():
            early.append(t.label)
        say_result(t.label, status, summary, say)
    return early


def _submit_more(queue: list[Unit], in_flight: dict[Hashable, Unit], launcher: Launcher,
                 data: str | None) -> list[str]:
    """Move units from ``queue`` to ``in_flight`` up to the launcher's capacity; their lines."""
    room = len(queue) if launcher.capacity is None else launcher.capacity - len(in_flight)
    units = [queue.pop(0) for _ in range(min(room, len(queue)))]
    if not units:
        return []
    lines = [describe_unit(u) for u in units]  # before they start: "training" or "continuing"
    in_flight.update(zip(launcher.submit(units, data), units))
    return lines


def banner(trainings: int, units: int, stack: int, where: str) -> str:
    """The line before the first result: how many trainings, in how many stacks, and where."""
    stacks = f" in {units} stacks of up to {stack}" if stack > 1 else ""
    return f"{trainings} trainings{stacks}, {where}"
