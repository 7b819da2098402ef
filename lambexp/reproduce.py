"""`lambexp reproduce`: every experiment × seed into one fixed folder, then the report.

Layout: ``<out>/<experiment>/{config.yaml, environment.json, seed<k>/<arm>/}``. An arm whose
summary.json says finished is never run again, so an interrupted reproduction continues where it
stopped; an unfinished arm folder is started again from scratch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from lambexp.config import Arm, Experiment, experiment_to_yaml, load_experiment
from lambexp.errors import UserError
from lambexp.experiment import ArmInputs, run_arm, write_run_header
from lambexp.layout import CONFIG_FILE
from lambexp.report.collect import is_finished, seed_dir
from lambexp.train import Progress

CONFIG_DIR = Path("configs")
DEFAULT_OUT = Path("runs/reproduce")


def default_configs() -> list[Path]:
    configs = sorted(CONFIG_DIR.glob("*.yaml"))
    if not configs:
        raise UserError(f"no configs given and none in {CONFIG_DIR}/ (run from the project folder)")
    return configs


def claim_folder(exp_dir: Path, exp: Experiment, argv: Sequence[str]) -> None:
    """Create ``exp_dir`` with the resolved config, or check that it was made from the same one."""
    config = exp_dir / CONFIG_FILE
    if config.is_file():
        if config.read_text() != experiment_to_yaml(exp):
            raise UserError(f"{exp_dir} holds runs of a different {exp.name} config; pass another"
                            " --out, or move that folder away")
        return
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_run_header(exp_dir, exp, argv)


def planned(exp: Experiment, seeds: int, exp_dir: Path) -> list[tuple[Arm, Path]]:
    """(arm with its seed, arm folder) for every seed and arm; seeds are the config's, +1, +2…"""
    return [(arm.model_copy(update={"seed": arm.seed + k}), seed_dir(exp_dir, arm.seed + k) / arm.name)
            for k in range(seeds) for arm in exp.arms]


def reproduce(configs: Sequence[Path], *, seeds: int, out: Path, data_dir: Path | None = None,
              argv: Sequence[str] = (), say: Callable[[str], None] = print,
              progress_for: Callable[[Arm], Progress] = lambda arm: Progress()) -> list[Path]:
    """Run what is not yet finished; return the experiment folders. Every config is validated,
    and MNIST checked, before anything runs."""
    if seeds < 1:
        raise UserError(f"--seeds: must be at least 1 (got {seeds})")
    exps = [load_experiment(c) for c in configs]
    names = [e.name for e in exps]
    if len(set(names)) != len(names):
        raise UserError(f"two configs share an experiment name: {', '.join(names)}")
    inputs = ArmInputs([arm for e in exps for arm in e.arms], data_dir, say)
    folders = []
    for exp in exps:
        exp_dir = out / exp.name
        claim_folder(exp_dir, exp, argv)
        folders.append(exp_dir)
        for arm, arm_dir in planned(exp, seeds, exp_dir):
            label = f"{exp.name}/seed{arm.seed}/{arm.name}"
            if is_finished(arm_dir):
                say(f"{label}: finished before, skipped")
                continue
            if arm_dir.exists():
                say(f"{label}: unfinished attempt found, starting it again")
                shutil.rmtree(arm_dir)
            say(f"{label}: training")
            data, device = inputs.data(arm)
            run_arm(arm, data, device, arm_dir, progress_for(arm))
    return folders
