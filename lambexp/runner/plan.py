"""The plan of a reproduction: the distinct trainings that some configs over some seeds need, the
links by which experiments share identical ones, which are not finished yet, and the units they
train in (one training, or a stack: ``stack_units``) with the lines that name a unit and
its outcome. Nothing here trains.

Arms that are the same training once resolved (every setting and the seed equal, only the name
differs: E1's LAMB is E3's lr 0.01) are trained once per seed, in the folder of the first
experiment that uses them; the other experiments' ``seed<k>/<arm>`` is a relative symbolic link
to it, so every reader (report, resume, TensorBoard's folder) finds it where it expects it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lambexp.base.divergence import diverged_text
from lambexp.base.files import CONFIG_FILE
from lambexp.base.statuses import Status
from lambexp.config import Arm, Experiment, load_experiment
from lambexp.errors import Interrupted, UserError
from lambexp.folders.layout import existing_arms, is_finished, seed_dir
from lambexp.output import optimizer_text, pct
from lambexp.training.distributed import SINGLE, World

Say = Callable[[str], None]
MAX_SEEDS = 1000  # --seeds: each seed is a whole reproduction; more is a typo, not a plan


def seeded_arms(exp: Experiment, seeds: int, exp_dir: Path) -> list[tuple[Arm, Path]]:
    """(arm with its seed, arm folder) for every seed and arm; seeds are the config's, +1, +2…"""
    return [(arm.model_copy(update={"seed": arm.seed + k}), seed_dir(exp_dir, arm.seed + k) / arm.name)
            for k in range(seeds) for arm in exp.arms]


def training_key(arm: Arm) -> str:
    """Two arms with equal keys train identically: every resolved setting, the seed included,
    but not the name."""
    return json.dumps(arm.model_dump(mode="json", exclude={"name"}), sort_keys=True)


@dataclass
class Training:
    """One distinct training: the arm it runs (as its first user names it) and the folder it writes."""

    label: str  # <experiment>/seed<k>/<arm> of the folder, relative to the reproduce folder
    arm: Arm
    folder: Path
    shared_by: list[str] = field(default_factory=list)  # the other arms that read it (labels)


@dataclass
class Plan:
    trainings: list[Training]
    links: list[tuple[Path, Path]]  # (arm folder, the training folder it points to)
    arms: int  # experiment arms × seeds that the plan serves
    stale: list[Path] = field(default_factory=list)  # links to a folder of other settings, or none


def _trainings_on_disk(out: Path) -> dict[Path, str]:
    """resolved folder → training_key, for every arm folder already under ``out`` (not links), so a
    later invocation shares what an earlier one trained, and a link is trusted only when it points
    at a training of its own arm's settings."""
    found: dict[Path, str] = {}
    for config in sorted(out.glob(f"*/{CONFIG_FILE}")):
        try:
            exp = load_experiment(config)
        except UserError:
            continue  # a folder of another config version: reproduce refuses it when it is used
        for arm, arm_dir in existing_arms(exp, config.parent):
            if arm_dir.is_dir() and not arm_dir.is_symlink():
                found[arm_dir.resolve()] = training_key(arm)
    return found


def make_plan(exps: Sequence[Experiment], seeds: int, out: Path,
              stop_requested: Callable[[], bool] = lambda: False) -> Plan:
    """The distinct trainings that ``seeds`` seeds of ``exps`` need, and the links that let every
    experiment find its arms. An arm folder already on disk stays its own training; a link stays
    when it points at a training of the same settings (on disk, or planned here), else it is stale:
    replaced by the right link, or by a training of its own."""
    key_at = _trainings_on_disk(out) if out.is_dir() else {}
    on_disk = {key: folder for folder, key in reversed(key_at.items())}  # key → first such folder
    by_folder: dict[Path, Training] = {}  # by absolute folder
    by_key: dict[str, Training] = {}
    links, stale, arms = [], [], 0
    for exp in exps:
        for arm, arm_dir in seeded_arms(exp, seeds, out / exp.name):
            if stop_requested():
                raise Interrupted("while planning; nothing was trained")
            arms += 1
            label, key = f"{exp.name}/seed{arm.seed}/{arm.name}", training_key(arm)
            here = arm_dir.parent.resolve() / arm_dir.name  # absolute, a link not followed
            planned = by_key[key].folder if key in by_key else None
            if arm_dir.is_symlink() and _link_holds(arm_dir.resolve(), key, key_at, planned):
                folder = arm_dir.resolve()  # a link to a training of these settings
            elif arm_dir.is_dir() and not arm_dir.is_symlink():
                folder = here  # trained (or begun) here before
            else:
                if arm_dir.is_symlink():
                    stale.append(arm_dir)
                folder = planned or on_disk.get(key, here)
                if folder != here:
                    links.append((arm_dir, folder))
            training = by_folder.get(folder)
            if training is None:
                training = Training(_label(folder, out), arm, folder)
                by_folder[folder] = training
                by_key.setdefault(key, training)
            if training.label != label:
                training.shared_by.append(label)
    # Seed by seed: an interrupted reproduction has whole seeds to report on.
    return Plan(sorted(by_folder.values(), key=lambda t: t.arm.seed), links, arms, stale)


def _link_holds(target: Path, key: str, key_at: dict[Path, str], planned: Path | None) -> bool:
    """A link to ``target`` serves an arm of ``key`` when the training there has that key, or, not
    begun yet, when this plan trains it for that key."""
    return key_at[target] == key if target in key_at else target == planned


def _label(folder: Path, out: Path) -> str:
    try:
        return folder.relative_to(out.resolve()).as_posix()  # folder: absolute, its links resolved
    except ValueError:
        return str(folder)


def link_shared(plan: Plan) -> None:
    """Stale links go; each arm folder that shares a training becomes a relative link to it."""
    for link in plan.stale:
        link.unlink()
    for link, target in plan.links:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, link.parent), link, target_is_directory=True)


def plan_lines(plan: Plan) -> list[str]:
    """`lambexp reproduce --plan`: one line per distinct training, then their number."""
    lines = []
    for t in plan.trainings:
        a = t.arm
        state = "finished" if is_finished(t.folder) else "to continue" if t.folder.exists() else "to train"
        shared = f"; also {', '.join(t.shared_by)}" if t.shared_by else ""
        lines.append(f"{t.label}: {optimizer_text(a.optimizer, a.rule, a.bias_correction)} lr {a.lr:g},"
                     f" wd {a.weight_decay:g}, betas "
                     f"{a.betas[0]:g}/{a.betas[1]:g}, batch {a.batch_size}, {a.epochs} epochs,"
                     f" seed {a.seed} [{state}{shared}]")
    pending = sum(not is_finished(t.folder) for t in plan.trainings)
    lines.append(f"{len(plan.trainings)} trainings ({pending} not finished) for {plan.arms} arms"
                 f" (experiment arms × seeds)")
    return lines


def unfinished(work: Sequence[Training], say: Say, world: World = SINGLE) -> list[Training]:
    """The trainings of ``work`` not finished yet (rank 0's view); says which are skipped."""
    done = world.from_lead(lambda: [is_finished(t.folder) for t in work])
    for t, finished in zip(work, done):
        if finished:
            say(f"{t.label}: finished before, skipped")
    return [t for t, finished in zip(work, done) if not finished]




# One training's outcome, as a unit of work returns it: (FINISHED, its summary) or (INTERRUPTED, None).
Result = tuple[Status, dict | None]


def check_stack(stack: int, given: str | None = None) -> None:
    """A UserError for a --stack that is not a number of trainings (``given``: as it was typed)."""
    if stack < 1:
        raise UserError(f"--stack: a number of trainings to stack (1 or more; 1 trains each alone), or off"
                        f" (got {given if given is not None else stack})")


def stack_key(arm: Arm, data_dir: Path | None) -> tuple:
    """Trainings with equal keys can share a stack: same model and batch shape, the same number of
    steps, one device and one data set (``data_dir``: --data-dir, which overrides the arm's) with
    one validation split."""
    return arm.model, arm.batch_size, arm.epochs, arm.device, str(data_dir or arm.data_dir), arm.validation


def stack_units(work: Sequence[Training], size: int, data_dir: Path | None) -> list[list[Training]]:
    """``work`` as units: stacks of at most ``size`` trainings that share a ``stack_key``, in the
    order of each unit's first training (the plan's order: seed by seed). ``size`` 1: each training
    alone."""
    filling: dict[tuple, list[Training]] = {}  # by stack_key: the unit still taking trainings
    units: list[list[Training]] = []
    for t in work:
        key = stack_key(t.arm, data_dir)
        unit = filling.get(key)
        if unit is None or len(unit) == size:
            unit = filling[key] = []
            units.append(unit)
        unit.append(t)
    return units


def describe_unit(unit: Sequence[Training]) -> str:
    """The line that says what a unit trains: one training, or a stack."""
    def state(t: Training) -> str:
        return "continuing" if t.folder.exists() else "training"

    if len(unit) == 1:
        return f"{unit[0].label}: {state(unit[0])}"
    members = ", ".join(f"{t.label} ({state(t)})" for t in unit)
    return f"{len(unit)} trainings as one stacked model: {members}"


def unit_label(unit: Sequence[Training]) -> str:
    """How a unit of work (a training, or a stack) is named at the start of a line."""
    return " + ".join(t.label for t in unit)


def say_result(label: str, status: Status, summary: dict | None, say: Say) -> None:
    """The line for a training that came back: Status.FINISHED with its summary, or Status.INTERRUPTED."""
    if status == Status.INTERRUPTED:
        say(f"{label}: interrupted, checkpointed")
        return
    summary = summary or {}
    accuracy = summary.get("final_test_accuracy")
    said = f"final test accuracy {pct(accuracy)}" if accuracy is not None else ""
    if summary.get("diverged"):
        what = diverged_text(summary.get("diverged_step"), summary.get("diverged_reason"))
        say(f"{label}: {what}, stopped" + (f"; {said} at the stop" if said else ""))
    else:
        say(f"{label}: finished" + (f", {said}" if said else ""))
