"""`lambexp reproduce` and `lambexp resume`: run what is not finished in a folder of runs.

Reproduce layout: ``<out>/<experiment>/{config.yaml, environment.json, seed<k>/<arm>/}``; a `run`
folder holds ``<arm>/`` directly. An arm whose summary.json says finished is never run again; an
unfinished one continues from its checkpoint, or starts again when it has none. Under torchrun
rank 0 decides what is finished and writes the folders; every rank trains (``lambexp.training.distributed``).

Arms that are the same training once resolved (every setting and the seed equal, only the name
differs: E1's LAMB is E3's lr 0.01) are trained once per seed, in the folder of the first
experiment that uses them; the other experiments' ``seed<k>/<arm>`` is a relative symbolic link
to it, so every reader (report, resume, TensorBoard's folder) finds it where it expects it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from lambexp.config import MAX_SEED, Arm, Experiment, experiment_to_yaml, load_experiment
from lambexp.errors import Interrupted, UserError
from lambexp.folders.layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    existing_arms,
    find_experiments,
    is_finished,
    read_summary,
    seed_dir,
    write_text_atomically,
)
from lambexp.folders.lock import folder_lock, folder_locks, lock_root
from lambexp.runner.experiment import (
    ArmInputs,
    check_changes,
    describe_changes,
    run_arm,
    setting_changes,
    write_run_header,
)
from lambexp.training.checkpoint import recorded_settings
from lambexp.training.distributed import SINGLE, World, launched_world, process_group
from lambexp.training.progress import NoProgress, Progress

Say = Callable[[str], None]


def claim_folder(exp_dir: Path, exp: Experiment, argv: Sequence[str]) -> None:
    """Create ``exp_dir`` with the resolved config, or check that it was made from the same arms.
    A config whose arms are unchanged but whose claims or description changed replaces the old one:
    the runs stay valid, and the report checks the new claims."""
    config = exp_dir / CONFIG_FILE
    if check_folder(exp_dir, exp):
        if config.read_text() != experiment_to_yaml(exp):
            write_text_atomically(config, experiment_to_yaml(exp))
        return
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_run_header(exp_dir, exp, argv)


def check_folder(exp_dir: Path, exp: Experiment) -> bool:
    """Whether ``exp_dir`` was made already (for ``exp``'s arms); a UserError when its arms differ."""
    config = exp_dir / CONFIG_FILE
    if not config.is_file():
        return False
    if load_experiment(config).arms != exp.arms:
        raise UserError(f"{exp_dir} holds runs of a different {exp.name} config (its arms"
                        " differ); pass another --out, or move that folder away")
    return True


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
        rule = f" ({a.rule}{'' if a.bias_correction else ', no bias correction'})" \
            if a.optimizer in ("adam", "lamb") else ""
        state = "finished" if is_finished(t.folder) else "to continue" if t.folder.exists() else "to train"
        shared = f"; also {', '.join(t.shared_by)}" if t.shared_by else ""
        lines.append(f"{t.label}: {a.optimizer}{rule} lr {a.lr:g}, wd {a.weight_decay:g}, betas "
                     f"{a.betas[0]:g}/{a.betas[1]:g}, batch {a.batch_size}, {a.epochs} epochs,"
                     f" seed {a.seed} [{state}{shared}]")
    pending = sum(not is_finished(t.folder) for t in plan.trainings)
    lines.append(f"{len(plan.trainings)} trainings ({pending} not finished) for {plan.arms} arms"
                 f" (experiment arms × seeds)")
    return lines


def run_pending(work: list[tuple[str, Arm, Path]], inputs: ArmInputs, say: Say,
                progress_for: Callable[[Arm], Progress], stop_requested: Callable[[], bool],
                world: World = SINGLE, apply_changes: bool = False) -> None:
    """Run each (label, arm, folder) that is not finished (rank 0's view); Interrupted propagates."""
    for label, arm, arm_dir in work:
        if world.from_lead(partial(is_finished, arm_dir)):
            say(f"{label}: finished before, skipped")
            continue
        if not world.active and stop_requested():  # under DDP the ranks agree at log steps
            raise Interrupted("between arms; the finished arms are kept")
        say(f"{label}: {'continuing' if arm_dir.exists() else 'training'}")
        data, device = inputs.data(arm)
        run_arm(arm, data, device, arm_dir, progress_for(arm), stop_requested, world, apply_changes)


MAX_SEEDS = 1000  # --seeds: each seed is a whole reproduction; more is a typo, not a plan


def load_all(configs: Sequence[Path], seeds: int = 1) -> list[Experiment]:
    """Every config, validated, with distinct experiment names, and ``seeds`` seeds that stay
    within the seed range (each arm's seed, +1, … +seeds−1)."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds: must be from 1 to {MAX_SEEDS} (got {seeds})")
    exps = [load_experiment(c) for c in configs]
    names = [e.name for e in exps]
    if len(set(names)) != len(names):
        raise UserError(f"two configs share an experiment name: {', '.join(names)}")
    for exp in exps:
        for arm in exp.arms:
            if arm.seed + seeds - 1 > MAX_SEED:
                raise UserError(f"--seeds {seeds}: {exp.name}'s arm {arm.name} has seed {arm.seed},"
                                f" so its last seed would be {arm.seed + seeds - 1}, past the largest"
                                f" seed, {MAX_SEED}; lower the config's seed or --seeds")
    return exps


def reproduce(configs: Sequence[Path], *, seeds: int, out: Path, data_dir: Path | None = None,
              argv: Sequence[str] = (), say: Say = print, jobs: int = 1,
              progress_for: Callable[[Arm], Progress] = lambda arm: NoProgress(),
              stop_requested: Callable[[], bool] = lambda: False) -> list[Path]:
    """Run what is not yet finished, each distinct training once (see ``make_plan``); return the
    experiment folders. Every config is validated, and MNIST checked, before anything runs.
    ``jobs`` > 1: that many trainings at once, in worker processes (lambexp.runner.jobs)."""
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1 (got {jobs})")
    exps = load_all(configs, seeds)
    with folder_lock(out, "--out") if launched_world().lead else nullcontext(), \
            process_group() as world:
        inputs = world.local_first(lambda: ArmInputs([a for e in exps for a in e.arms], data_dir, say))

        def prepare() -> list[tuple[str, Arm, Path]]:
            for exp in exps:
                claim_folder(out / exp.name, exp, argv)
            plan = make_plan(exps, seeds, out, stop_requested)
            link_shared(plan)
            return [(t.label, t.arm, t.folder) for t in plan.trainings]

        work = world.from_lead(prepare)
        if jobs > 1:
            if world.active:
                raise UserError("--jobs: under torchrun the processes are torchrun's; leave --jobs at 1")
            from lambexp.runner.jobs import run_in_parallel

            run_in_parallel(work, jobs, data_dir, say, stop_requested)
        else:
            run_pending(work, inputs, say, progress_for, stop_requested, world)
    return [out / exp.name for exp in exps]


def resume(run_dir: Path, *, data_dir: Path | None = None, say: Say = print,
           progress_for: Callable[[Arm], Progress] = lambda arm: NoProgress(),
           stop_requested: Callable[[], bool] = lambda: False,
           apply_changes: bool = False) -> list[Path]:
    """Continue every unfinished arm under ``run_dir`` (a `run` or `reproduce` folder), holding the
    lock of every folder it belongs to. An arm whose config.yaml no longer says what it trained with
    is refused before anything trains (``check_recorded_settings``)."""
    folders = find_experiments([run_dir])
    lead = launched_world().lead
    with folder_locks([lock_root(f) for f in folders]) if lead else nullcontext():
        found = []
        for exp_dir in folders:
            exp = load_experiment(exp_dir / CONFIG_FILE)
            found += [(f"{exp_dir.relative_to(run_dir.parent)}/{arm_dir.relative_to(exp_dir)}", arm,
                       arm_dir) for arm, arm_dir in existing_arms(exp, exp_dir)]
        work, seen = [], set()
        for label, arm, arm_dir in sorted(found, key=lambda item: item[2].is_symlink()):  # stable
            if arm_dir.resolve() not in seen:  # a shared training once, under its own folder's name
                seen.add(arm_dir.resolve())
                work.append((label, arm, arm_dir.resolve()))
        check_recorded_settings(work, apply_changes)
        if all(is_finished(arm_dir) for _, _, arm_dir in work):  # nothing to train: no data needed
            say(f"every arm under {run_dir} is finished; nothing to resume")
            return folders
        with process_group() as world:
            inputs = world.local_first(lambda: ArmInputs([arm for _, arm, _ in work], data_dir, say))
            run_pending(work, inputs, say, progress_for, stop_requested, world, apply_changes)
    return folders


def check_recorded_settings(work: list[tuple[str, Arm, Path]], apply: bool) -> None:
    """Every arm's config.yaml settings against what its summary (finished) or checkpoint
    (unfinished) says it trained with: a finished arm must match; an unfinished one may differ only
    in CHANGEABLE settings, and only with ``apply`` (experiment.check_changes)."""
    problems = []
    for label, arm, arm_dir in work:
        summary = read_summary(arm_dir) if arm_dir.is_dir() else None
        if summary is not None and summary.finished:
            recorded, finished = summary.settings, True
        elif (arm_dir / CHECKPOINT_FILE).is_file():
            recorded, finished = recorded_settings(arm_dir / CHECKPOINT_FILE), False
        else:
            continue
        changed = setting_changes(recorded, arm) if recorded is not None else {}
        if not changed:
            continue
        if finished:
            problems.append(f"{label} finished with other settings than its config.yaml now says"
                            f" ({describe_changes(changed)}); put the config back, or start a new run")
            continue
        try:
            check_changes(arm_dir, changed, apply)
        except UserError as err:
            problems.append(str(err))
    if problems:
        raise UserError(problems[0] if len(problems) == 1 else
                        f"{len(problems)} arms no longer match their config.yaml", problems)
