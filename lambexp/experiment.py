"""Composition root: a validated Experiment → a run folder holding one trained, logged arm per arm.

The only place where config objects become plain arguments for the model, optimizer, loop and sink.
Layout: ``<runs>/<experiment>/<timestamp>/{config.yaml, environment.json, <arm>/...}``; each arm
folder is one TensorBoard run plus ``summary.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from lambexp.config import Arm, Experiment, experiment_to_yaml
from lambexp.data import MnistTensors, ensure_mnist, load_mnist
from lambexp.errors import UserError
from lambexp.layout import CONFIG_FILE, ENVIRONMENT_FILE, METRICS_FILE, SUMMARY_FILE
from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.sinks import JsonlSink, Tee, TensorBoardSink
from lambexp.train import Progress, fit


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but no CUDA GPU is available"
                        " (use device=auto or device=cpu)")
    return torch.device(name)


def make_run_dir(parent: Path) -> Path:
    """A new folder ``parent/<UTC timestamp>``, created exclusively: a second run in the same
    second gets ``-1``, ``-2``, …; an existing folder is never reused."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        try:
            path = parent / f"{stamp}{suffix}"
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run folder in {parent}")


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
        "git_commit": commit or None,
    }


def optimizer_args(arm: Arm) -> dict:
    """The arm's optimizer hyper-parameters as plain keyword arguments for ``build_optimizer``."""
    return dict(lr=arm.lr, betas=tuple(arm.betas), eps=arm.eps, weight_decay=arm.weight_decay,
                rule=arm.rule, clamp=arm.clamp, momentum=arm.momentum,
                trust_coefficient=arm.trust_coefficient)


def run_arm(arm: Arm, data: MnistTensors, device: torch.device, arm_dir: Path,
            progress: Progress) -> dict:
    """Train one arm into ``arm_dir`` (TensorBoard events + summary.json); return its summary."""
    torch.manual_seed(arm.seed)
    model = build_model(arm.model).to(device)
    opt = build_optimizer(arm.optimizer, model.named_parameters(), **optimizer_args(arm))
    start = time.perf_counter()
    with TensorBoardSink(arm_dir) as board, JsonlSink(arm_dir / METRICS_FILE) as jsonl:
        sink = Tee(board, jsonl)
        state = fit(model, opt, (data.train_x, data.train_y), (data.test_x, data.test_y),
                    epochs=arm.epochs, batch_size=arm.batch_size, seed=arm.seed,
                    log_interval=arm.log_interval, eval_interval=arm.eval_interval, sink=sink,
                    progress=progress)
        bad = int(state.first_bad_step.item()) if state.first_bad_step is not None else -1
        final = state.history[-1]
        summary = {
            "arm": arm.name,
            "status": "finished",
            "final_test_accuracy": final["test/accuracy"],
            "best_test_accuracy": max(h["test/accuracy"] for h in state.history),
            "final_test_loss": final["test/loss"],
            "final_train_loss": state.last_loss,
            "nonfinite": bad >= 0,
            "nonfinite_step": bad if bad >= 0 else None,
            "steps": state.step,
            "samples": state.samples,
            "wall_seconds": time.perf_counter() - start,
            "train_seconds": state.train_seconds,
            "samples_per_second": state.samples / max(state.train_seconds, 1e-9),
            "device": str(device),
            "torch": torch.__version__,
            "history": state.history,
        }
        sink.scalars(state.samples, {"throughput/samples_per_s": summary["samples_per_second"]})
        sink.hparams({"arm": arm.name, **arm.model_dump(exclude={"name", "data_dir"})},
                     {"test/accuracy": final["test/accuracy"], "test/loss": final["test/loss"],
                      "train/loss": state.last_loss})
    write_json(arm_dir / SUMMARY_FILE, summary)
    return summary


def write_json(path: Path, value: dict) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class ArmInputs:
    """Each arm's device and verified MNIST, checked up front and loaded once per (folder, device)."""

    def __init__(self, arms: Sequence[Arm], data_dir: Path | None, say: Callable[[str], None]):
        self.data_dir = data_dir
        for arm in arms:
            pick_device(arm.device)  # cuda without a GPU fails here, before anything is written
        for folder in {self.folder(arm) for arm in arms}:
            ensure_mnist(folder, log=say)
        self._loaded: dict[tuple, MnistTensors] = {}

    def folder(self, arm: Arm) -> Path | None:
        """--data-dir, else the arm's data_dir, else None (the default folder)."""
        chosen = self.data_dir or arm.data_dir
        return Path(chosen) if chosen else None

    def data(self, arm: Arm) -> tuple[MnistTensors, torch.device]:
        key = (self.folder(arm), pick_device(arm.device))
        if key not in self._loaded:
            self._loaded[key] = load_mnist(*key)
        return self._loaded[key], key[1]


def write_run_header(run_dir: Path, exp: Experiment, argv: Sequence[str]) -> None:
    """config.yaml (fully resolved) and environment.json, before any training."""
    (run_dir / CONFIG_FILE).write_text(experiment_to_yaml(exp))
    write_json(run_dir / ENVIRONMENT_FILE, environment(argv or sys.argv))


def run_experiment(exp: Experiment, *, runs_root: Path, data_dir: Path | None = None,
                   argv: Sequence[str] = (), say: Callable[[str], None] = print,
                   on_start: Callable[[Path], None] = lambda run_dir: None,
                   progress_for: Callable[[Arm], Progress] = lambda arm: Progress()) -> Path:
    """Run every arm of ``exp``; return the new run folder.

    Devices are checked and MNIST is fetched and verified before the run folder is created, so
    a failure there leaves nothing behind.
    """
    inputs = ArmInputs(exp.arms, data_dir, say)
    run_dir = make_run_dir(runs_root / exp.name)
    on_start(run_dir)
    write_run_header(run_dir, exp, argv)
    for arm in exp.arms:
        data, device = inputs.data(arm)
        run_arm(arm, data, device, run_dir / arm.name, progress_for(arm))
    return run_dir
