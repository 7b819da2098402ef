"""One training as a unit of work that a launcher sends elsewhere: a worker process (``--jobs``), a
Ray task (``--launcher ray``) or a Slurm job (``--launcher slurm``).

``train_task`` runs in the worker, wherever that is: it trains one arm into its folder exactly as
``reproduce`` does in one process (run_arm: checkpoints, summary, TensorBoard), so a launcher adds
nothing to what a training writes. ``say_result`` is the launching side's line for its outcome.
Everything crosses as plain strings and dicts, which every launcher can ship.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lambexp.config import Arm
from lambexp.errors import Interrupted
from lambexp.output import pct

_INPUTS: dict = {}  # in a worker: MNIST loaded once per data folder, reused by its trainings

FINISHED, INTERRUPTED = "finished", "interrupted"


def train_task(arm_json: str, arm_dir: str, data_dir: str | None, threads: int | None = None,
               stop_requested: Callable[[], bool] | None = None) -> tuple[str, dict | None]:
    """Train one arm (``Arm`` as JSON) into ``arm_dir``; returns (FINISHED, its summary) or
    (INTERRUPTED, None). ``threads``: the CPU threads torch may use here (None: torch's choice)."""
    import torch

    from lambexp.runner.experiment import ArmInputs, run_arm
    from lambexp.training.progress import NoProgress

    if threads:
        torch.set_num_threads(threads)
    arm = Arm.model_validate_json(arm_json)
    if data_dir not in _INPUTS:
        _INPUTS[data_dir] = ArmInputs([arm], Path(data_dir) if data_dir else None, say=lambda s: None)
    data, device = _INPUTS[data_dir].data(arm)
    try:
        summary = run_arm(arm, data, device, Path(arm_dir), NoProgress(),
                          stop_requested=stop_requested or (lambda: False))
    except Interrupted:
        return INTERRUPTED, None
    return FINISHED, summary.to_json()


def say_result(label: str, status: str, summary: dict | None, say: Callable[[str], None]) -> None:
    """The launching side's line for a training that came back."""
    if status == INTERRUPTED:
        say(f"{label}: interrupted, checkpointed")
        return
    accuracy = (summary or {}).get("final_test_accuracy")
    say(f"{label}: finished" + (f", final test accuracy {pct(accuracy)}" if accuracy is not None else ""))
