"""Composition root of `lambexp run`: a validated Experiment → a run folder holding one trained,
logged arm per arm (lambexp.runner.arm).

Layout: ``<runs>/<experiment>/<timestamp>/{config.yaml, environment.json, <arm>/...}``; each arm
folder is one TensorBoard run plus ``summary.json``. Under torchrun every rank runs the same arms
and rank 0 alone writes the folder (``lambexp.training.distributed``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch

from lambexp.base.files import CONFIG_FILE, ENVIRONMENT_FILE
from lambexp.config import Arm, Experiment, experiment_to_yaml
from lambexp.errors import Interrupted, UserError
from lambexp.folders.layout import make_run_dir, write_json, write_text_atomically
from lambexp.folders.lock import folder_lock
from lambexp.runner.arm import ArmInputs, run_arm
from lambexp.training.distributed import process_group
from lambexp.training.progress import NoProgress, Progress


def environment(argv: Sequence[str]) -> dict:
    """What produced a run: command line, versions, machine, git commit."""
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "command": list(argv),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),  # processes (torchrun), 1 without
        "git_commit": commit or None,
    }


def write_run_header(run_dir: Path, exp: Experiment, argv: Sequence[str]) -> None:
    """config.yaml (fully resolved) and environment.json, before any training."""
    write_text_atomically(run_dir / CONFIG_FILE, experiment_to_yaml(exp))
    write_json(run_dir / ENVIRONMENT_FILE, environment(argv or sys.argv))


def start_run(runs_root: Path, exp: Experiment, argv: Sequence[str],
              on_start: Callable[[Path], None], held: ExitStack) -> Path:
    """A new run folder, locked for as long as ``held`` lasts, with its config.yaml and
    environment.json."""
    run_dir = make_run_dir(runs_root / exp.name)
    held.enter_context(folder_lock(run_dir, "--runs-dir"))
    on_start(run_dir)
    write_run_header(run_dir, exp, argv)
    return run_dir


def run_experiment(exp: Experiment, *, runs_root: Path, data_dir: Path | None = None,
                   argv: Sequence[str] = (), say: Callable[[str], None] = print,
                   on_start: Callable[[Path], None] = lambda run_dir: None,
                   progress_for: Callable[[Arm], Progress] = lambda arm: NoProgress(),
                   stop_requested: Callable[[], bool] = lambda: False) -> Path:
    """Run every arm of ``exp``; return the new run folder.

    Devices are checked and MNIST is fetched and verified before the run folder is created, so
    a failure there leaves nothing behind. Under torchrun every rank trains every arm with DDP;
    rank 0 creates and locks the run folder (its path sent to the others) and alone calls
    ``on_start``.
    """
    if exp.tune is not None:
        raise UserError(f"{exp.name}: tune: trains every point of the grid, then the chosen ones over"
                        " seeds; run it with `lambexp reproduce`")
    with process_group() as world, ExitStack() as held:
        inputs = world.local_first(lambda: ArmInputs(exp.arms, data_dir, say))
        if stop_requested():  # e.g. Ctrl-C while MNIST was fetched: leave nothing behind
            raise Interrupted("before training began; nothing was written")
        run_dir = world.from_lead(lambda: start_run(runs_root, exp, argv, on_start, held))
        for arm in exp.arms:
            if not world.active and stop_requested():  # under DDP the ranks agree at log steps
                raise Interrupted("between arms; the finished arms are kept")
            data, device = inputs.data(arm)
            run_arm(arm, data, device, run_dir / arm.name, progress_for(arm), stop_requested, world)
    return run_dir
