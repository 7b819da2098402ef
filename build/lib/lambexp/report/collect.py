"""Finding finished runs on disk: experiment folders (those holding config.yaml) and, in each,
the finished arms of every seed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lambexp.config import Experiment, load_experiment
from lambexp.errors import UserError
from lambexp.layout import CONFIG_FILE, ENVIRONMENT_FILE, is_finished
from lambexp.report.series import ArmSeries, load_arm

SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class ExperimentRuns:
    folder: Path
    experiment: Experiment
    seeds: dict[int, dict[str, ArmSeries]]  # seed → arm name → its series (finished arms only)
    environment: dict

    def arm_runs(self, arm: str) -> list[ArmSeries]:
        return [arms[arm] for _, arms in sorted(self.seeds.items()) if arm in arms]


def seed_dir(exp_dir: Path, seed: int) -> Path:
    """Where `lambexp reproduce` puts one seed's arms."""
    return exp_dir / f"seed{seed}"


def find_experiments(paths: list[Path]) -> list[Path]:
    """The experiment folders at or directly below ``paths`` (a reproduce folder holds several)."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: no such folder")
        if (path / CONFIG_FILE).is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.glob(f"*/{CONFIG_FILE}"))
            found += sorted(p.parent for p in path.glob(f"*/*/{CONFIG_FILE}"))  # runs/<exp>/<time>
    if not found:
        raise UserError(f"no run folders (with {CONFIG_FILE}) in {', '.join(map(str, paths))}")
    return found


def collect(exp_dir: Path) -> ExperimentRuns:
    """Every finished arm under ``exp_dir``: in ``seed<k>/<arm>/`` (reproduce) or ``<arm>/`` (run)."""
    exp = load_experiment(exp_dir / CONFIG_FILE)
    seeds: dict[int, dict[str, ArmSeries]] = {}
    seed_dirs = [(int(m.group(1)), p) for p in exp_dir.iterdir()
                 if p.is_dir() and (m := SEED_DIR.match(p.name))]
    for arm in exp.arms:
        places = [(seed, d / arm.name) for seed, d in seed_dirs] or [(arm.seed, exp_dir / arm.name)]
        for seed, arm_dir in places:
            if is_finished(arm_dir):
                seeds.setdefault(seed, {})[arm.name] = load_arm(arm_dir, seed)
    env_file = exp_dir / ENVIRONMENT_FILE
    try:
        env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    except ValueError:
        raise UserError(f"{env_file}: damaged (not the JSON lambexp writes); delete it to report"
                        " without the environment") from None
    return ExperimentRuns(exp_dir, exp, seeds, env)
