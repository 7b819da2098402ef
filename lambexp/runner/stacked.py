"""`lambexp reproduce --stack N`: the pending trainings that share a model, a batch size, a number of
epochs, a device and a data folder train N at a time as one stacked model (lambexp.training.group),
in this process, in each `--jobs` worker, or in each Ray task or Slurm array task. Each writes its
folder exactly as it would alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import torch

from lambexp.config import Arm
from lambexp.errors import Interrupted, UserError
from lambexp.runner.experiment import ArmInputs, run_arm
from lambexp.runner.plan import Say, Training
from lambexp.runner.task import FINISHED, INTERRUPTED, say_result
from lambexp.training.group import StackGroup
from lambexp.training.progress import Progress


def check_stack(stack: int, given: str | None = None) -> None:
    """A UserError for a --stack that is not a number of trainings (``given``: as it was typed)."""
    if stack < 1:
        raise UserError(f"--stack: a number of trainings to stack (2 or more), or off"
                        f" (got {given if given is not None else stack})")


def stack_key(arm: Arm, data_dir: Path | None) -> tuple:
    """Trainings with equal keys can share a stack: same model and batch shape, the same number of
    steps, one device and one data set (``data_dir``: --data-dir, which overrides the arm's)."""
    return arm.model, arm.batch_size, arm.epochs, arm.device, str(data_dir or arm.data_dir)


def stack_groups(work: list[Training], size: int, data_dir: Path | None) -> list[list[Training]]:
    """``work`` in groups of at most ``size`` that share a ``stack_key``, in the order of each
    group's first training (the plan's order: seed by seed). ``size`` 1: each training alone."""
    open_groups: dict[tuple, list[Training]] = {}
    groups: list[list[Training]] = []
    for t in work:
        key = stack_key(t.arm, data_dir)
        group = open_groups.get(key)
        if group is None or len(group) == size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(t)
    return groups


def train_together(group: list[Training], inputs: ArmInputs, progress_for: Callable[[Arm], Progress],
                   stop_requested: Callable[[], bool], apply_changes: bool = False,
                   say: Say | None = None) -> list[tuple[str, dict | None]]:
    """Train ``group`` as one stacked model, each member in a thread of its own with its progress
    (bars share one display: lambexp.training.progress.SharedBar); each member's (FINISHED, its
    summary) or (INTERRUPTED, None), in order, each also said as it ends when ``say`` is given.
    When every member has ended, raises the first error a member raised other than Interrupted."""
    together = StackGroup(len(group))
    threads = torch.get_num_threads()
    lock = threading.Lock()

    def said(line: str) -> None:  # whole lines: members finish at the same moment
        if say is not None:
            with lock:
                say(line)

    loaded = [inputs.data(t.arm) for t in group]  # here, once, not in the threads at once

    def train(slot: int, t: Training) -> tuple[str, dict | None]:
        # a new thread's OpenMP team size is the machine's, not this process's setting: the same
        # for every member, so the stacked step (run by whichever arrives last) sums alike
        torch.set_num_threads(threads)
        try:
            data, device = loaded[slot]
            summary = run_arm(t.arm, data, device, t.folder, progress_for(t.arm), stop_requested,
                              apply_changes=apply_changes, member=together.member(slot)).to_json()
        except Interrupted:
            say_result(t.label, INTERRUPTED, None, said)
            return INTERRUPTED, None
        finally:
            together.leave(slot)  # also when it failed before its first step
        say_result(t.label, FINISHED, summary, said)
        return FINISHED, summary

    with ThreadPoolExecutor(len(group), thread_name_prefix="lambexp-member") as pool:
        futures = [pool.submit(train, slot, t) for slot, t in enumerate(group)]
        wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def describe_unit(unit: list[Training]) -> str:
    """The line that says what a unit trains: one training, or a stacked group."""
    def state(t: Training) -> str:
        return "continuing" if t.folder.exists() else "training"

    if len(unit) == 1:
        return f"{unit[0].label}: {state(unit[0])}"
    members = ", ".join(f"{t.label} ({state(t)})" for t in unit)
    return f"{len(unit)} trainings as one stacked model: {members}"


def run_group(group: list[Training], inputs: ArmInputs, say: Say,
              progress_for: Callable[[Arm], Progress], stop_requested: Callable[[], bool],
              apply_changes: bool = False) -> None:
    """``train_together`` in this process, saying what it trains and how each ended; Interrupted
    when a member was interrupted."""
    say(describe_unit(group))
    results = train_together(group, inputs, progress_for, stop_requested, apply_changes, say)
    if any(status == INTERRUPTED for status, _ in results):
        raise Interrupted("with every training of the stack checkpointed; the finished ones are kept")
