"""What a runs folder holds, for `lambexp ls` and `lambexp compare`: every experiment folder (a `run`
folder or a reproduce experiment) with its arms, each arm's status and outcome read from its
summary.json. Torch-free, like the report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from lambexp.base.files import CONFIG_FILE, ENVIRONMENT_FILE
from lambexp.base.statuses import NOT_STARTED, RUNNING, Status
from lambexp.config import load_experiment
from lambexp.errors import UserError
from lambexp.folders.layout import existing_arms, find_experiments, read_summary
from lambexp.folders.lock import held_by, lock_root
from lambexp.output import pct


@dataclass
class ArmStatus:
    """One arm of one seed in one experiment folder."""

    arm: str
    seed: int
    folder: str  # the arm's folder
    status: str  # finished | interrupted | running | failed | not started
    diverged: bool | None
    final_accuracy: float | None
    best_accuracy: float | None
    optimizer: str
    rule: str
    lr: float
    weight_decay: float
    batch_size: int
    samples_per_second: float | None
    wall_seconds: float | None


@dataclass
class RunStatus:
    """One experiment folder: `runs/<experiment>/<time>` or `<reproduce out>/<experiment>`."""

    folder: str
    experiment: str
    status: str  # finished | interrupted | running | failed | diverged (k of n arms)
    started_utc: str | None
    arms: list[ArmStatus]

    def as_dict(self) -> dict:
        return asdict(self)


def arm_status(arm, arm_dir: Path, in_use: bool = False) -> ArmStatus:
    """The arm's settings beside its outcome (None where it has no summary yet). The settings are
    those its summary records it trained with (the last, when a resume changed them), else the
    config's. ``in_use``: a process holds the folder's lock, so an arm it has not finished is
    running (or about to), not interrupted."""
    s = read_summary(arm_dir)
    outcome = ((s.status.value, s.diverged, s.final_test_accuracy, s.best_test_accuracy) if s
               else (Status.INTERRUPTED.value if arm_dir.exists() else NOT_STARTED, None, None, None))
    if in_use and outcome[0] == Status.INTERRUPTED:
        outcome = (RUNNING, *outcome[1:])
    trained = arm.model_copy(update={k: v for k, v in s.settings.items() if k in type(arm).model_fields}) \
        if s and s.settings else arm
    return ArmStatus(arm.name, trained.seed, str(arm_dir), *outcome, trained.optimizer, trained.rule,
                     trained.lr, trained.weight_decay, trained.batch_size,
                     s.samples_per_second if s else None, s.wall_seconds if s else None)


def run_status(exp_dir: Path) -> RunStatus:
    """The experiment folder's arms, every seed, with their status: running while a process holds
    the folder's lock (``lock_root``) and some arm is unfinished."""
    exp = load_experiment(exp_dir / CONFIG_FILE)
    in_use = held_by(lock_root(exp_dir)) is not None
    arms = [arm_status(arm, arm_dir, in_use) for arm, arm_dir in existing_arms(exp, exp_dir)]
    if any(a.status == Status.FAILED for a in arms):
        status = Status.FAILED.value
    elif any(a.status != Status.FINISHED for a in arms):
        status = RUNNING if in_use else Status.INTERRUPTED.value
    else:
        bad = sum(bool(a.diverged) for a in arms)
        status = f"diverged ({bad} of {len(arms)} arms)" if bad else Status.FINISHED.value
    try:
        started = json.loads((exp_dir / ENVIRONMENT_FILE).read_text()).get("started_utc")
    except (OSError, ValueError):
        started = None
    return RunStatus(str(exp_dir), exp.name, status, started, arms)


def list_runs(root: Path) -> list[RunStatus]:
    """Every experiment folder at or below ``root`` (two levels down), oldest first; one that
    cannot be read (a damaged config or summary) is listed as damaged, with why, among the rest."""
    runs = []
    for folder in find_experiments([root]):
        try:
            runs.append(run_status(folder))
        except UserError as err:
            runs.append(RunStatus(str(folder), folder.parent.name if folder.parent != root else
                                  folder.name, f"damaged: {err}", None, []))
    return sorted(runs, key=lambda r: (r.started_utc or "", r.folder))


def age(started_utc: str | None, now: datetime | None = None) -> str:
    """'5 min', '3 h', '2 d' since ``started_utc`` (ISO 8601); '?' when unknown."""
    if not started_utc:
        return "?"
    try:
        then = datetime.fromisoformat(started_utc)
    except ValueError:
        return "?"
    seconds = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def accuracy_text(arms: list[ArmStatus]) -> str:
    """Final test accuracy per arm (mean over its finished seeds), compact."""
    by_arm: dict[str, list[float]] = {}
    for a in arms:
        if a.final_accuracy is not None:
            by_arm.setdefault(a.arm, []).append(a.final_accuracy)
    means = {name: sum(v) / len(v) for name, v in by_arm.items()}
    if not means:
        return "n/a"
    if len(means) > 4:
        return f"{pct(min(means.values()))} to {pct(max(means.values()))} over {len(means)} arms"
    return " · ".join(f"{name} {pct(value)}" for name, value in means.items())
