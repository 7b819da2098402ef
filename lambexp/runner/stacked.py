"""`lambexp reproduce --stack N`: the pending trainings that share a model, a batch size, a number of
epochs, a device and a data folder train N at a time as one stacked model (lambexp.training.members),
in this process, in each `--jobs` worker, or in each Ray task or Slurm array task. Each writes its
folder exactly as it would alone.

One thread steps the members in turn: each is an ``ArmRun`` (lambexp.runner.arm), built and
restored one after another, whose Trainer the stack steps. The first failure of any member, before
its first step or mid-way, stops the stack at once: the other members still training are
checkpointed and marked interrupted (``lambexp resume`` continues them), and the failure is raised.
"""

from __future__ import annotations

from collections.abc import Callable

from lambexp.base.statuses import Status
from lambexp.config import Arm
from lambexp.errors import Interrupted
from lambexp.runner.arm import ArmInputs, ArmRun
from lambexp.runner.plan import Result, Say, Training, describe_unit, say_result
from lambexp.training.members import MemberError, Members, as_member
from lambexp.training.progress import Progress
from lambexp.training.stack import check_stackable


def train_stack(unit: list[Training], inputs: ArmInputs, progress_for: Callable[[Arm], Progress],
                   stop_requested: Callable[[], bool], apply_changes: bool = False,
                   say: Say | None = None) -> list[Result]:
    """Train ``unit`` as one stacked model, from this thread, each member with its progress (bars
    share one display: lambexp.training.progress.SharedBar); each member's result, in order, each
    also said as it ends when ``say`` is given. A stop request interrupts every member still
    training; any other error of a member stops the stack at once (``stop_stack``) and is raised."""
    say = say or (lambda line: None)
    runs = [ArmRun(t.arm, *inputs.data(t.arm), t.folder, progress_for(t.arm), stop_requested,
                   apply_changes=apply_changes, stacked=True) for t in unit]
    results: dict[int, Result] = {}
    try:
        for slot, run in enumerate(runs):  # every model first: one that cannot stack touches nothing
            as_member(slot, lambda run=run: check_stackable(run.build()))
        for slot, run in enumerate(runs):
            as_member(slot, run.restore)
            as_member(slot, run.start)
        members = Members([run.trainer for run in runs])
        while members.training:
            for slot in members.step():
                results[slot] = Status.FINISHED, as_member(slot, runs[slot].finish).to_json()
                say_result(unit[slot].label, *results[slot], say)
    except MemberError as failure:
        stop_stack(unit, runs, results, failure.slot, failure.error, say)
    return [results[s] for s in range(len(unit))]


def stop_stack(unit: list[Training], runs: list[ArmRun], results: dict[int, Result],
               slot: int | None, err: Exception, say: Say) -> None:
    """The stack stops at ``err``, raised by member ``slot`` (None: the shared step, so by every
    member). An Interrupted interrupts every member that started and has not finished. Another error
    fails the member that raised it (``ArmRun.fail``) and interrupts the others at once; then it is
    raised (as ``fail`` translates it)."""
    stopping = isinstance(err, Interrupted)
    failures: list[tuple[int, Exception]] = []  # (member, what to raise)
    for s, run in enumerate(runs):
        if s in results:
            continue
        if not stopping and (slot is None or s == slot):  # as alone: only a started arm is marked
            failures.append((s, run.fail(err) if run.trainer is not None else err))
            continue
        results[s] = Status.INTERRUPTED, None
        if run.trainer is None:  # never started: nothing to checkpoint
            continue
        try:
            run.interrupt()
        except Exception as late:  # a full disk fails the others' checkpoints alike
            failures.append((s, run.fail(late)))
            continue
        say_result(unit[s].label, Status.INTERRUPTED, None, say)
    if failures:
        raise min(failures, key=lambda f: f[0] != slot)[1]  # the raiser's own, else the first


def run_stack(unit: list[Training], inputs: ArmInputs, say: Say,
              progress_for: Callable[[Arm], Progress], stop_requested: Callable[[], bool],
              apply_changes: bool = False) -> None:
    """``train_stack`` in this process, saying what it trains and how each ended; Interrupted
    when a member was interrupted."""
    say(describe_unit(unit))
    results = train_stack(unit, inputs, progress_for, stop_requested, apply_changes, say)
    if any(status == Status.INTERRUPTED for status, _ in results):
        raise Interrupted("with every training of the stack checkpointed; the finished ones are kept")
