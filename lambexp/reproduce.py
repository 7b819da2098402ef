"""`lambexp reproduce` and `lambexp resume`: run what is not finished in a folder of runs.

Reproduce layout: ``<out>/<experiment>/{config.yaml, environment.json, seed<k>/<arm>/}``; a `run`
folder holds ``<arm>/`` directly. An arm whose summary.json says finished is never run again; an
unfinished one continues from its checkpoint, or starts again when it has none. Under torchrun
rank 0 decides what is finished and writes the folders; every rank trains (``lambexp.distributed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from lambexp.config import Arm, Experiment, experiment_to_yaml, load_experiment
from lambexp.distributed import SINGLE, World, process_group
from lambexp.errors import UserError
from lambexp.experiment import ArmInputs, run_arm, write_run_header
from lambexp.layout import CONFIG_FILE
from lambexp.report.collect import SEED_DIR, find_experiments, is_finished, seed_dir
from lambexp.train import Interrupted, Progress

CONFIG_DIR = Path("configs")
DEFAULT_OUT = Path("runs/reproduce")
Say = Callable[[str], None]


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


def seeded_arms(exp: Experiment, seeds: int, exp_dir: Path) -> list[tuple[Arm, Path]]:
    """(arm with its seed, arm folder) for every seed and arm; seeds are the config's, +1, +2…"""
    return [(arm.model_copy(update={"seed": arm.seed + k}), seed_dir(exp_dir, arm.seed + k) / arm.name)
            for k in range(seeds) for arm in exp.arms]


def existing_arms(exp: Experiment, exp_dir: Path) -> list[tuple[Arm, Path]]:
    """The arms a folder was made for: every ``seed<k>/`` of a reproduce folder, else ``<arm>/``."""
    seeds = sorted(int(m.group(1)) for p in exp_dir.iterdir() if (m := SEED_DIR.match(p.name)))
    if not seeds:
        return [(arm, exp_dir / arm.name) for arm in exp.arms]
    return [(arm.model_copy(update={"seed": s}), seed_dir(exp_dir, s) / arm.name)
            for s in seeds for arm in exp.arms]


def run_pending(work: list[tuple[str, Arm, Path]], inputs: ArmInputs, say: Say,
                progress_for: Callable[[Arm], Progress], stop_requested: Callable[[], bool],
                world: World = SINGLE) -> None:
    """Run each (label, arm, folder) that is not finished (rank 0's view); Interrupted propagates."""
    for label, arm, arm_dir in work:
        if world.from_lead(partial(is_finished, arm_dir)):
            say(f"{label}: finished before, skipped")
            continue
        if not world.active and stop_requested():  # under DDP the ranks agree at log steps
            raise Interrupted("between arms; the finished arms are kept")
        say(f"{label}: {'continuing' if arm_dir.exists() else 'training'}")
        data, device = inputs.data(arm)
        run_arm(arm, data, device, arm_dir, progress_for(arm), stop_requested, world)


def reproduce(configs: Sequence[Path], *, seeds: int, out: Path, data_dir: Path | None = None,
              argv: Sequence[str] = (), say: Say = print,
              progress_for: Callable[[Arm], Progress] = lambda arm: Progress(),
              stop_requested: Callable[[], bool] = lambda: False) -> list[Path]:
    """Run what is not yet finished; return the experiment folders. Every config is validated,
    and MNIST checked, before anything runs."""
    if seeds < 1:
        raise UserError(f"--seeds: must be at least 1 (got {seeds})")
    exps = [load_experiment(c) for c in configs]
    names = [e.name for e in exps]
    if len(set(names)) != len(names):
        raise UserError(f"two configs share an experiment name: {', '.join(names)}")
    with process_group() as world:
        inputs = world.local_first(lambda: ArmInputs([a for e in exps for a in e.arms], data_dir, say))
        work = []
        for exp in exps:
            world.from_lead(partial(claim_folder, out / exp.name, exp, argv))
            work += [(f"{exp.name}/seed{arm.seed}/{arm.name}", arm, arm_dir)
                     for arm, arm_dir in seeded_arms(exp, seeds, out / exp.name)]
        run_pending(work, inputs, say, progress_for, stop_requested, world)
    return [out / exp.name for exp in exps]


def resume(run_dir: Path, *, data_dir: Path | None = None, say: Say = print,
           progress_for: Callable[[Arm], Progress] = lambda arm: Progress(),
           stop_requested: Callable[[], bool] = lambda: False) -> list[Path]:
    """Continue every unfinished arm under ``run_dir`` (a `run` or `reproduce` folder)."""
    folders = find_experiments([run_dir])
    work = []
    for exp_dir in folders:
        exp = load_experiment(exp_dir / CONFIG_FILE)
        work += [(f"{exp_dir.relative_to(run_dir.parent)}/{arm_dir.relative_to(exp_dir)}", arm, arm_dir)
                 for arm, arm_dir in existing_arms(exp, exp_dir)]
    with process_group() as world:
        inputs = world.local_first(lambda: ArmInputs([arm for _, arm, _ in work], data_dir, say))
        run_pending(work, inputs, say, progress_for, stop_requested, world)
    return folders
