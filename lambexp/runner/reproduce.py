"""`lambexp reproduce` and `lambexp resume`: run what is not finished in a folder of runs.

Reproduce layout: ``<out>/<experiment>/{config.yaml, environment.json, seed<k>/<arm>/}``; a `run`
folder holds ``<arm>/`` directly. An arm whose summary.json says finished is never run again; an
unfinished one continues from its checkpoint, or starts again when it has none. Which trainings
that takes, and how identical ones are shared, is ``lambexp.runner.plan``'s. Under torchrun rank 0
decides what is finished and writes the folders; every rank trains (``lambexp.training.distributed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

from lambexp.base.files import CHECKPOINT_FILE, CONFIG_FILE, TUNING_FILE
from lambexp.config import MAX_SEED, Arm, Experiment, experiment_to_yaml, load_experiment
from lambexp.config.tune import TUNING_SUFFIX
from lambexp.errors import Interrupted, UserError
from lambexp.folders.layout import (
    existing_arms,
    find_experiments,
    is_finished,
    read_summary,
    write_text_atomically,
)
from lambexp.folders.lock import folder_lock, folder_locks, lock_root
from lambexp.runner.arm import ArmInputs, run_arm
from lambexp.runner.changes import check_checkpoint, describe_changes, setting_changes
from lambexp.runner.dispatch import Launcher, dispatch
from lambexp.runner.experiment import write_run_header
from lambexp.runner.jobs import ProcessPool
from lambexp.runner.plan import (
    MAX_SEEDS,
    Plan,
    Say,
    Training,
    check_stack,
    describe_unit,
    link_shared,
    make_plan,
    stack_units,
    unfinished,
)
from lambexp.runner.stacked import run_stack
from lambexp.runner.tuning import (
    TUNING_SEED_OFFSET,
    chosen,
    pick_lines,
    picks,
    trials,
    trials_finished,
    write_picks,
)
from lambexp.training.checkpoint import recorded
from lambexp.training.distributed import SINGLE, World, launched_world, process_group
from lambexp.training.progress import NoProgress, Progress


def claim_folder(exp_dir: Path, exp: Experiment, argv: Sequence[str]) -> None:
    """Create ``exp_dir`` with the resolved config, or check that it was made from the same arms.
    A config that keeps every arm unchanged (adding arms, or changing claims or description)
    replaces the old one: the runs stay valid, the new arms train, the report checks the new
    claims."""
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
    before = {arm.name: arm for arm in load_experiment(config).arms}
    now = {arm.name: arm for arm in exp.arms}
    changed = [name for name, arm in before.items() if now.get(name) != arm]
    if changed:
        what = ", ".join(f"{name} ({'removed' if name not in now else 'changed'})" for name in changed)
        raise UserError(f"{exp_dir} holds runs of a different {exp.name} config (its arms differ:"
                        f" {what}); pass another --out, or move that folder away")
    return True


def run_pending(work: list[Training], inputs: ArmInputs, say: Say,
                progress_for: Callable[[Arm], Progress], stop_requested: Callable[[], bool],
                world: World = SINGLE, apply_changes: bool = False, stack: int = 1) -> None:
    """Run each training of ``work`` that is not finished, in order; Interrupted propagates.
    ``stack`` > 1: up to that many that can share a stacked model train as one
    (lambexp.runner.stacked); not under torchrun."""
    pending = unfinished(work, say, world)
    if stack > 1 and world.active:
        raise UserError("--stack: under torchrun each training is spread over the processes;"
                        " leave --stack off")
    for unit in stack_units(pending, stack, inputs.data_dir):
        if not world.active and stop_requested():  # under DDP the ranks agree at log steps
            raise Interrupted("between arms; the finished arms are kept")
        if len(unit) > 1:
            run_stack(unit, inputs, say, progress_for, stop_requested, apply_changes)
            continue
        t = unit[0]
        say(describe_unit(unit))
        data, device = inputs.data(t.arm)
        run_arm(t.arm, data, device, t.folder, progress_for(t.arm), stop_requested, world, apply_changes)


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
            last = arm.seed + max(seeds - 1, TUNING_SEED_OFFSET if exp.tune else 0)
            if last > MAX_SEED:
                raise UserError(f"--seeds {seeds}: {exp.name}'s arm {arm.name} has seed {arm.seed},"
                                f" so its last seed would be {last}, past the largest"
                                f" seed, {MAX_SEED}; lower the config's seed or --seeds")
    return exps


def reproduce(configs: Sequence[Path], *, seeds: int, out: Path, data_dir: Path | None = None,
              argv: Sequence[str] = (), say: Say = print, jobs: int = 1,
              progress_for: Callable[[Arm], Progress] = lambda arm: NoProgress(),
              stop_requested: Callable[[], bool] = lambda: False,
              launch: Launcher | None = None, stack: int = 1) -> list[Path]:
    """Run what is not yet finished, each distinct training once (see ``make_plan``); return the
    experiment folders. Every config is validated, and MNIST checked (by each task, with ``launch``),
    before anything runs.
    ``jobs`` > 1: that many trainings at once, in worker processes (``jobs.ProcessPool``).
    ``launch``: send the trainings elsewhere instead (``on_ray.RayCluster``, ``on_slurm.SlurmArray``);
    where there is work for it, ``launch.check()`` comes first, before ``out`` is touched
    (``check_launcher``). Either way ``dispatch.dispatch`` sends them and says how each ended.
    ``stack`` > 1: trainings that can share a stacked model train up to that many at a time as one
    (lambexp.runner.stacked): here, in each worker, or in each task ``launch`` sends."""
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1 (got {jobs})")
    check_stack(stack)
    exps = load_all(configs, seeds)
    if launch is not None:
        check_launcher(launch, exps, seeds, out)
    with folder_lock(out, "--out") if launched_world().lead else nullcontext(), \
            process_group() as world:
        # MNIST and the device are checked where the trainings run: here, or in each task elsewhere
        # (a login node or Ray head need neither a GPU nor the data)
        inputs = None if launch else world.local_first(
            lambda: ArmInputs([a for e in exps for a in e.arms], data_dir, say))

        if jobs > 1 and launch is None and world.active:
            raise UserError("--jobs: under torchrun the processes are torchrun's; leave --jobs at 1")
        launcher = launch or (ProcessPool(jobs) if jobs > 1 else None)

        def train(batch: list[Experiment], n_seeds: int) -> None:
            def prepare() -> list[Training]:
                for exp in batch:
                    claim_folder(out / exp.name, exp, argv)
                plan = make_plan(batch, n_seeds, out, stop_requested)
                link_shared(plan)
                return plan.trainings

            work = world.from_lead(prepare)
            if launcher is not None:
                dispatch(work, launcher, data_dir.resolve() if data_dir else None, say, stop_requested, stack)
            else:
                run_pending(work, inputs, say, progress_for, stop_requested, world, stack=stack)

        tuned = [exp for exp in exps if exp.tune]
        if tuned:  # the trials first, one seed each; then every experiment, the tuned at their picks
            train([trials(exp) for exp in tuned], 1)
            exps = world.from_lead(lambda: [settle(exp, out, argv, say) if exp.tune else exp for exp in exps])
        train(exps, seeds)
    return [out / exp.name for exp in exps]


def settle(exp: Experiment, out: Path, argv: Sequence[str], say: Say) -> Experiment:
    """``exp`` at each arm's pick from its finished trials: its folder claimed for the chosen points,
    the picks written beside them (tuning.json) and said, a line per arm."""
    made = picks(exp, out)
    settled = chosen(exp, made)
    check_moved_picks(out / exp.name, settled)
    claim_folder(out / exp.name, settled, argv)
    write_picks(out / exp.name, exp, made)
    for line in pick_lines(exp, made):
        say(line)
    return settled


def check_moved_picks(exp_dir: Path, settled: Experiment) -> None:
    """A UserError naming each arm whose pick moved (a grid grown past its edge, say) since it trained
    at the old one in ``exp_dir``: those runs are kept, not overwritten. Where no arm trained at
    the old picks yet, the record is the new picks'."""
    config = exp_dir / CONFIG_FILE
    if not config.is_file():
        return
    before = {arm.name: arm for arm in load_experiment(config).arms}
    moved = [arm for arm in settled.arms if arm.name in before and before[arm.name] != arm and
             arm == before[arm.name].model_copy(update={"lr": arm.lr, "warmup_epochs": arm.warmup_epochs})]
    trained = [arm for arm in moved if any(exp_dir.glob(f"seed*/{arm.name}"))]
    if not trained:
        if moved:
            write_text_atomically(config, experiment_to_yaml(settled))
        return

    def change(arm) -> str:
        old = before[arm.name]
        parts = [f"{key} {getattr(old, key):g} → {getattr(arm, key):g}" for key in ("lr", "warmup_epochs")
                 if getattr(old, key) != getattr(arm, key)]
        return f"{arm.name} ({', '.join(parts)})"

    raise UserError(f"{exp_dir}: the pick moved for {', '.join(map(change, trained))}, which trained at the"
                    f" old one (the tuning grid or its trials changed); move {exp_dir} away (the trials stay"
                    " where they are and are not trained again) or pass another --out")


def read_plan(exps: list[Experiment], seeds: int, out: Path,
              stop_requested: Callable[[], bool] = lambda: False) -> Plan:
    """The trainings ``seeds`` seeds of ``exps`` need (``make_plan``), read from ``out`` without
    writing to it; a folder of another config is refused first, as `reproduce` would refuse it. A
    tuned experiment plans its trials (one seed), and its chosen points once every trial is finished."""
    tuned = [exp for exp in exps if exp.tune]
    first = make_plan([trials(exp) for exp in tuned], 1, out, stop_requested)
    ready = [exp for exp in tuned if trials_finished(exp, out)]
    then = [chosen(exp, picks(exp, out)) if exp in ready else exp for exp in exps
            if not exp.tune or exp in ready]
    for exp in then:
        check_folder(out / exp.name, exp)
    second = make_plan(then, seeds, out, stop_requested)
    return Plan(first.trainings + second.trainings, first.links + second.links, first.arms + second.arms,
                first.stale + second.stale)


def check_launcher(launch: Launcher, exps: list[Experiment], seeds: int, out: Path) -> None:
    """Refuse (a UserError) a launcher that cannot run, before ``out`` is locked or written: under
    torchrun, or where ``launch.check()`` says it cannot start. It is asked only when some training
    is unfinished (``read_plan``, as `--plan` reads it), so a finished reproduction rebuilds its
    report without the cluster."""
    if launched_world().active:
        raise UserError("--launcher: under torchrun the processes are torchrun's; drop --launcher")
    if any(not is_finished(t.folder) for t in read_plan(exps, seeds, out).trainings):
        launch.check()


def resume(run_dir: Path, *, data_dir: Path | None = None, say: Say = print,
           progress_for: Callable[[Arm], Progress] = lambda arm: NoProgress(),
           stop_requested: Callable[[], bool] = lambda: False,
           apply_changes: bool = False, stack: int = 1, tell: Say = print) -> list[Path]:
    """Continue every unfinished arm under ``run_dir`` (a `run` or `reproduce` folder), holding the
    lock of every folder it belongs to. An arm whose config.yaml no longer says what it trained with
    is refused before anything trains (``check_recorded_settings``). Once they are trained, the
    report of each reproduce folder they belong to is rebuilt (``rebuild_reports``; ``tell`` says
    where, even where ``say`` is quiet)."""
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
                work.append(Training(label, arm, arm_dir.resolve()))
        check_recorded_settings(work, apply_changes)
        if all(is_finished(t.folder) for t in work):  # nothing to train: no data needed
            say(f"every arm under {run_dir} is finished; nothing to resume")
            unpicked(folders, tell)
            return folders
        with process_group() as world:
            inputs = world.local_first(lambda: ArmInputs([t.arm for t in work], data_dir, say))
            run_pending(work, inputs, say, progress_for, stop_requested, world, apply_changes, stack)
        if lead:
            rebuild_reports(folders, say, tell)
            unpicked(folders, tell)
    return folders


def unpicked(folders: list[Path], tell: Say) -> None:
    """A line for each tuning folder whose picks were never made: resume trains trials, but picking
    each arm's point and training it over the seeds is `reproduce`'s (it has the tuned config)."""
    for folder in folders:
        tuned = folder.with_name(folder.name.removesuffix(TUNING_SUFFIX))
        if folder.name.endswith(TUNING_SUFFIX) and not (tuned / TUNING_FILE).is_file():
            tell(f"{folder.name}: its tuning trials are all here, but no point was picked yet; run"
                 f" `lambexp reproduce CONFIG --out {folder.parent}` with the tuned config to pick each"
                 " arm's point and train it over the seeds")


def rebuild_reports(folders: list[Path], say: Say, tell: Say) -> None:
    """REPORT.md, report.html and figures/ of each reproduce folder (``--out``) that ``folders``
    belong to, built again as `reproduce` builds them, once every arm there has finished, so that the
    report holds what resume trained; ``tell`` says where. `run` folders have no report."""
    from lambexp.report.build import write_report  # matplotlib: when due

    for out in sorted({lock_root(f) for f in folders} - set(folders)):
        unfinished_arms = [arm_dir for exp_dir in find_experiments([out]) for _, arm_dir in
                           existing_arms(load_experiment(exp_dir / CONFIG_FILE), exp_dir)
                           if not is_finished(arm_dir)]
        if unfinished_arms:
            say(f"{out}/REPORT.md not rebuilt: {len(unfinished_arms)} arm(s) there are not finished"
                f" (`lambexp resume {out}` trains them)")
            continue
        write_report([out], out, say, tell)


def check_recorded_settings(work: list[Training], apply: bool) -> None:
    """Every arm's config.yaml settings against what its summary (finished) or checkpoint
    (unfinished) says it trained with: a finished arm must match; an unfinished one must be this
    arm's, may differ only in CHANGEABLE settings, and only with ``apply``, and may not end before
    the epochs it has done (experiment.check_checkpoint)."""
    problems = []
    for t in work:
        label, arm, arm_dir = t.label, t.arm, t.folder
        summary = read_summary(arm_dir) if arm_dir.is_dir() else None
        if summary is not None and summary.finished:
            changed = setting_changes(summary.settings, arm) if summary.settings is not None else {}
            if changed:
                problems.append(f"{label} finished with other settings than its config.yaml now says"
                                f" ({describe_changes(changed)}); put the config back, or start a new run")
            continue
        # an unreadable checkpoint is refused, naming why, when the arm continues from it
        in_checkpoint = recorded(arm_dir / CHECKPOINT_FILE) if (arm_dir / CHECKPOINT_FILE).is_file() else None
        if in_checkpoint is None:
            continue
        try:
            check_checkpoint(arm_dir, arm, in_checkpoint, apply)
        except UserError as err:
            problems.append(str(err))
    if problems:
        raise UserError(problems[0] if len(problems) == 1 else
                        f"{len(problems)} arms no longer match their config.yaml", problems)
