"""An experiment folder's finished arms, every seed, read back for the report (the folder's layout is
lambexp.folders.layout's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lambexp.base.files import CONFIG_FILE, ENVIRONMENT_FILE, TUNING_FILE
from lambexp.config import Experiment, load_experiment
from lambexp.config.tune import TUNING_SUFFIX
from lambexp.errors import UserError
from lambexp.folders.layout import existing_arms, is_finished
from lambexp.report.series import ArmSeries, load_arm


@dataclass
class ExperimentRuns:
    folder: Path
    experiment: Experiment
    seeds: dict[int, dict[str, ArmSeries]]  # seed → arm name → its series (finished arms only)
    environment: dict

    def arm_runs(self, arm: str) -> list[ArmSeries]:
        return [arms[arm] for _, arms in sorted(self.seeds.items()) if arm in arms]

    @property
    def lr_per_arm(self) -> bool:
        """Whether tuning set each arm's lr: the chosen points of a `tune:` config (reproduce records
        their config.yaml without `tune:`, tuning.json beside it), or its trials (``<name>-tuning``),
        each arm at each point of its own grid. Their lrs are not one sweep shared by every arm, nor
        settings shared by a grid of variants; the tuning curves draw them instead."""
        exp = self.experiment
        recorded = self.folder is not None and (self.folder / TUNING_FILE).is_file()
        return exp.tune is not None or exp.name.endswith(TUNING_SUFFIX) or recorded


def collect(exp_dir: Path) -> ExperimentRuns:
    """Every finished arm under ``exp_dir``: in ``seed<k>/<arm>/`` (reproduce) or ``<arm>/`` (run)."""
    exp = load_experiment(exp_dir / CONFIG_FILE)
    seeds: dict[int, dict[str, ArmSeries]] = {}
    for arm, arm_dir in existing_arms(exp, exp_dir):
        if is_finished(arm_dir):
            series = load_arm(arm_dir, arm.seed)
            series.lr = arm.lr
            seeds.setdefault(arm.seed, {})[arm.name] = series
    env_file = exp_dir / ENVIRONMENT_FILE
    try:
        env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    except ValueError:
        raise UserError(f"{env_file}: damaged (not the JSON lambexp writes); delete it to report"
                        " without the environment") from None
    return ExperimentRuns(exp_dir, exp, seeds, env)


def folder_labels(places: list[tuple[str, Path]]) -> list[str]:
    """A label per (experiment name, folder) for headings, figure files and legends: the name, with
    the folder's own name (a run's time) or more of its path added where two folders hold the same
    experiment."""
    names = [name for name, _ in places]
    labels = []
    for i, (name, folder) in enumerate(places):
        if names.count(name) == 1:
            labels.append(name)
        else:
            parts = [p for p in Path(folder).resolve().parts[-3:] if p != name]
            labels.append("-".join([name, *parts]) if parts else f"{name}-{i + 1}")
    return [label if labels.count(label) == 1 else f"{label}-{i + 1}" for i, label in enumerate(labels)]
