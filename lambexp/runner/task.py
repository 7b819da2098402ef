"""One training, or one stack of them (``--stack``), as a unit of work that a launcher sends
elsewhere: a worker process (``--jobs``), a Ray task (``--launcher ray``) or a Slurm job
(``--launcher slurm``).

``train_task`` runs in the worker, wherever that is: it trains its arms into their folders exactly as
``reproduce`` does in one process (run_arm: checkpoints, summary, TensorBoard), so a launcher adds
nothing to what a training writes. Everything crosses as plain strings and dicts, which every
launcher can ship; the launching side's lines are ``lambexp.runner.dispatch``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lambexp.base.statuses import Status
from lambexp.config import Arm
from lambexp.errors import Interrupted
from lambexp.runner.arm import ArmInputs, run_arm
from lambexp.runner.plan import Result, Training
from lambexp.runner.stacked import train_stack
from lambexp.training.progress import NoProgress

_INPUTS: dict = {}  # in a worker: MNIST loaded once per data folder, reused by its trainings


def train_task(arms_json: list[str], arm_dirs: list[str], data_dir: str | None, threads: int | None = None,
               stop_requested: Callable[[], bool] | None = None) -> list[Result]:
    """Train one arm (``Arm`` as JSON) into its folder, or several as one stacked model
    (``--stack``: lambexp.runner.stacked); for each, in order, (Status.FINISHED, its summary) or
    (Status.INTERRUPTED, None). ``threads``: the CPU threads torch may use here (None: torch's choice)."""
    if threads:
        torch.set_num_threads(threads)
    arms = [Arm.model_validate_json(a) for a in arms_json]
    if data_dir not in _INPUTS:
        _INPUTS[data_dir] = ArmInputs(arms, Path(data_dir) if data_dir else None, say=lambda s: None)
    inputs, stop = _INPUTS[data_dir], stop_requested or (lambda: False)
    if len(arms) > 1:
        unit = [Training(folder, arm, Path(folder)) for arm, folder in zip(arms, arm_dirs)]
        return train_stack(unit, inputs, lambda arm: NoProgress(), stop)
    data, device = inputs.data(arms[0])
    try:
        summary = run_arm(arms[0], data, device, Path(arm_dirs[0]), NoProgress(), stop_requested=stop)
    except Interrupted:
        return [(Status.INTERRUPTED, None)]
    return [(Status.FINISHED, summary.to_json())]
