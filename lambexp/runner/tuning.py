"""`tune:` under `lambexp reproduce`: the trials as their own experiment (``<name>-tuning``, one seed),
each arm's pick read from their summaries on validation accuracy (lambexp.config.tune), and the
chosen points as the experiment ``<name>``, trained over the seeds. The picks are recorded beside
the chosen runs, in ``<out>/<name>/tuning.json``, for the report."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lambexp.base.files import TUNING_FILE
from lambexp.config import Experiment
from lambexp.config.sweep import name_part
from lambexp.config.tune import TUNING_SUFFIX, Tune, points
from lambexp.errors import UserError
from lambexp.folders.layout import is_finished, read_summary, write_json
from lambexp.runner.plan import MAX_SEEDS, seeded_arms


def trial_name(arm: str, tune: Tune, lr: float, warmup: float) -> str:
    """``adam`` → ``adam_lr0.001`` (and ``_warm1`` when the warm-up is tuned too)."""
    parts = [name_part("lr", lr)] + ([name_part("warmup_epochs", warmup)] if tune.warmup_epochs else [])
    return f"{arm}_{'_'.join(parts)}"


@dataclass(frozen=True)
class Point:
    """One trial: its settings and what it measured on validation (None: nothing to pick on)."""

    lr: float
    warmup_epochs: float
    value: float | None  # the `on` measure; None when the trial diverged or has no evaluation
    diverged: bool

    @property
    def score(self) -> float:
        """What the pick compares: the value, or −∞ for a trial that diverged or has none."""
        return -math.inf if self.value is None or self.diverged else self.value


@dataclass(frozen=True)
class Pick:
    """An arm's chosen point, every point it tried, and whether the chosen lr is at the grid's edge."""

    arm: str
    chosen: Point
    tried: tuple[Point, ...]
    edge: bool  # the chosen lr is the grid's smallest or largest: the best may lie outside it

    def as_json(self) -> dict:
        return dataclasses.asdict(self)  # its fields and each Point's, as tuning.json holds them


def pick(arm: str, tried: list[Point]) -> Pick:
    """The best of ``tried`` (in grid order; the first of equals), flagged when its lr is at an end of
    the grid. When every trial diverged, the first point is chosen; its record says so (diverged,
    and flagged at the edge)."""
    best = max(tried, key=lambda p: p.score)  # max keeps the first of equal scores
    rates = [p.lr for p in tried]
    return Pick(arm, best, tuple(tried), best.lr in (min(rates), max(rates)))


# The trials train at the arm's seed + this: never one of the seeds the chosen points train at
# (`reproduce --seeds` stops below it), so no result is the very trial its pick was made on.
TUNING_SEED_OFFSET = MAX_SEEDS


def trials(exp: Experiment) -> Experiment:
    """Every arm of ``exp`` at every point of its `tune:` grid, as one experiment of its own, at a
    seed of their own (``TUNING_SEED_OFFSET``). A UserError where two points of an arm would share
    a trial's name (equal rates, or scales that round to one) or a name would be too long."""
    arms, names = [], set()
    for arm in exp.arms:
        for lr, w in points(exp.tune, arm.lr, arm.warmup_epochs):
            name = trial_name(arm.name, exp.tune, lr, w)
            if name in names:
                raise UserError(f"{exp.name}: tune: two points of arm {arm.name} would both train as {name};"
                                " give rates (or scales) that differ in their first 4 digits")
            names.add(name)
            arms.append(arm.model_copy(update={"name": name, "lr": lr, "warmup_epochs": w,
                                               "seed": arm.seed + TUNING_SEED_OFFSET}))
    try:
        return Experiment(name=exp.name + TUNING_SUFFIX, arms=tuple(arms),
                          description=f"the tuning trials of {exp.name}: every arm at every point of"
                                      f" its grid, picked on {exp.tune.by}")
    except ValidationError:
        raise UserError(f"{exp.name}: tune: its trials' names ({exp.name + TUNING_SUFFIX},"
                        f" {max(names, key=len)}) would be too long for a folder; shorten the experiment"
                        " or arm names") from None


def trials_finished(exp: Experiment, out: Path) -> bool:
    """Whether every trial of ``exp`` has finished in its folder under ``out`` (links followed)."""
    made = trials(exp)
    return all(is_finished(folder) for _, folder in seeded_arms(made, 1, out / made.name))


def picks(exp: Experiment, out: Path) -> list[Pick]:
    """Each arm's pick from its trials' summaries under ``out`` (all finished)."""
    folders = dict((arm.name, folder) for arm, folder in
                   seeded_arms(trials(exp), 1, out / (exp.name + TUNING_SUFFIX)))
    chosen = []
    for arm in exp.arms:
        tried = []
        for lr, w in points(exp.tune, arm.lr, arm.warmup_epochs):
            summary = read_summary(folders[trial_name(arm.name, exp.tune, lr, w)])
            value = getattr(summary, exp.tune.by) if summary else None
            tried.append(Point(lr, w, value, bool(summary and summary.diverged)))
        chosen.append(pick(arm.name, tried))
    return chosen


def chosen(exp: Experiment, made: list[Pick]) -> Experiment:
    """``exp`` with each arm at its chosen lr and warm-up and no `tune:`: what trains, and what its
    config.yaml records (the grid and the picks are tuning.json's), so that the record reproduces
    these points as they are."""
    by_arm = {p.arm: p.chosen for p in made}
    return exp.model_copy(update={"tune": None, "arms": tuple(
        arm.model_copy(update={"lr": by_arm[arm.name].lr, "warmup_epochs": by_arm[arm.name].warmup_epochs})
        for arm in exp.arms)})


def write_picks(exp_dir: Path, exp: Experiment, made: list[Pick]) -> None:
    grid = exp.tune.model_dump(mode="json", exclude={"by"}, exclude_none=True)
    write_json(exp_dir / TUNING_FILE, {"by": exp.tune.by, "grid": grid, "arms": [p.as_json() for p in made]})


def pick_lines(exp: Experiment, made: list[Pick]) -> list[str]:
    """What was chosen, a line per arm, for the terminal."""
    lines = []
    for p in made:
        value = "n/a" if p.chosen.value is None else f"{p.chosen.value:.2%}"
        line = f"{exp.name}: {p.arm} → lr {p.chosen.lr:g}, warm-up {p.chosen.warmup_epochs:g} epochs"
        if all(t.score == -math.inf for t in p.tried):
            line += " (every point diverged or has no validation accuracy: the first is kept)"
        else:
            line += f" ({exp.tune.by} {value}){'  [at the edge of the lr grid]' if p.edge else ''}"
        lines.append(line)
    return lines
