"""`lambexp reproduce --stack N`: the pending trainings that share a model, a batch size, a number of
epochs, a device and a data folder train N at a time as one stacked model, in this process
(lambexp.training.group). Each writes its folder exactly as it would alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import torch

from lambexp.config import Arm
from lambexp.errors import Interrupted, UserError
from lambexp.runner.experiment import ArmInputs, run_arm
from lambexp.runner.plan import Say, Training
from lambexp.runner.task import FINISHED, INTERRUPTED, say_result
from lambexp.training.group import StackGroup
from lambexp.training.progress import Progress


def check_stack(stack: int, jobs: int, launching: bool) -> None:
    """A UserError for --stack with what it cannot go with: stacks train in this process."""
    if stack > 1 and (jobs > 1 or launching):
        raise UserError("--stack: stacked trainings run in this process; leave --jobs at 1 and"
                        " --launcher local")


def stack_key(t: Training, inputs: ArmInputs) -> tuple:
    """Trainings with equal keys can share a stack: same model and batch shape, the same number of
    steps, one device and one data set."""
    a = t.arm
    return a.model, a.batch_size, a.epochs, a.device, str(inputs.folder(a))


def stack_groups(work: list[Training], size: int, inputs: ArmInputs) -> list[list[Training]]:
    """``work`` in groups of at most ``size`` that share a ``stack_key``, in the order of each
    group's first training (the plan's order: seed by seed)."""
    open_groups: dict[tuple, list[Training]] = {}
    groups: list[list[Training]] = []
    for t in work:
        key = stack_key(t, inputs)
        group = open_groups.get(key)
        if group is None or len(group) == size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(t)
    return groups


def run_group(group: list[Training], inputs: ArmInputs, say: Say,
              progress_for: Callable[[Arm], Progress], stop_requested: Callable[[], bool],
              apply_changes: bool = False) -> None:
    """Train ``group`` together, each in a thread of its own, each with its progress (bars share one
    display: lambexp.training.progress.SharedBar), each saying how it ended. When every member has
    ended, raises the first error a member raised (Interrupted when one was interrupted)."""
    together = StackGroup(len(group))
    threads = torch.get_num_threads()
    lock = threading.Lock()

    def said(line: str) -> None:  # whole lines: members finish at the same moment
        with lock:
            say(line)

    loaded = [inputs.data(t.arm) for t in group]  # here, once, not in the threads at once

    def train(slot: int, t: Training) -> str:
        # a new thread's OpenMP team size is the machine's, not this process's setting: the same
        # for every member, so the stacked step (run by whichever arrives last) sums alike
        torch.set_num_threads(threads)
        try:
            data, device = loaded[slot]
            summary = run_arm(t.arm, data, device, t.folder, progress_for(t.arm), stop_requested,
                              apply_changes=apply_changes, member=together.member(slot))
        except Interrupted:
            say_result(t.label, INTERRUPTED, None, said)
            return INTERRUPTED
        finally:
            together.leave(slot)  # also when it failed before its first step
        say_result(t.label, FINISHED, summary.to_json(), said)
        return FINISHED

    say(f"{len(group)} trainings as one stacked model: " + ", ".join(
        f"{t.label} ({'continuing' if t.folder.exists() else 'training'})" for t in group))
    with ThreadPoolExecutor(len(group), thread_name_prefix="lambexp-member") as pool:
        futures = [pool.submit(train, slot, t) for slot, t in enumerate(group)]
        wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    if any(f.result() == INTERRUPTED for f in futures):
        raise Interrupted("with every training of the stack checkpointed; the finished ones are kept")
