"""How an experiment's arms scale with the batch size: per model and optimizer, the test accuracy
(final and best) and the optimizer steps until validation accuracy first reaches a target, at each
batch size; as a table and two figures, the second Shallue et al.'s (2019) steps to target against
batch size, log-log, beside the perfect-scaling line (steps ∝ 1/batch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lambexp.base.measures import MEASURES, fmt
from lambexp.config.schema import Arm, Experiment
from lambexp.output import optimizer_text
from lambexp.report.claims import mean_std, measure
from lambexp.report.collect import ExperimentRuns
from lambexp.report.figures import OPTIMIZER_COLORS, PALETTE, _save, plt
from lambexp.report.series import ArmSeries

# model → optimizer (and rule) → [(batch size, the seeds' values)], batch sizes in order
Points = dict[str, dict[str, list[tuple[int, list[float]]]]]
ACCURACIES = (("final_test_accuracy", "final test accuracy"), ("best_test_accuracy", "best test accuracy"))
NOT_REACHED_Y = 0.95  # where a ✕ for "no seed reached the target" sits, in axes height (above the data)
DODGE = 0.12  # the ✕s of several optimizers at one batch lie this many octaves apart
RULE_COLORS = {"lamb (blog)": "#d62728", "lamb (paper)": "#9467bd", "lamb (timm)": "#8c564b"}


def line_of(arm: Arm) -> str:
    """What a line of the scaling figures is: the optimizer, with the rule it runs where it takes
    one (``output.optimizer_text``)."""
    return optimizer_text(arm.optimizer, arm.rule, arm.bias_correction)


def applies(exp: Experiment) -> bool:
    """Whether ``exp`` is a batch-scaling experiment: 3 batch sizes or more, and one arm at most per
    model, optimizer line and batch size (a tuning's trials, or an lr sweep across batches, have
    several: pooling their lrs into one mean would say nothing; the lr figure shows them)."""
    keys = [(arm.model, line_of(arm), arm.batch_size) for arm in exp.arms]
    return len({arm.batch_size for arm in exp.arms}) >= 3 and len(set(keys)) == len(keys)


def points(runs: ExperimentRuns, value: Callable[[ArmSeries], float]) -> Points:
    """``value`` of each finished seed, by model, optimizer line and batch size."""
    pooled: dict[str, dict[str, dict[int, list[float]]]] = {}
    for arm in runs.experiment.arms:
        values = [value(s) for s in runs.arm_runs(arm.name)]
        if values:
            lines = pooled.setdefault(arm.model, {})
            lines.setdefault(line_of(arm), {}).setdefault(arm.batch_size, []).extend(values)
    return {model: {line: sorted(by_batch.items()) for line, by_batch in lines.items()}
            for model, lines in pooled.items()}


def target_of(runs: ExperimentRuns) -> float | None:
    """The accuracy the experiment's steps-to-target claims count to (the first's); None when it has
    none."""
    return next((e.target for e in runs.experiment.expect if MEASURES[e.measure].takes_target), None)


def target_text(runs: ExperimentRuns, target: float) -> str:
    """"98% validation accuracy", or test accuracy where some arm holds out no validation split
    (what steps_to_target then reads)."""
    held_out = all(arm.validation for arm in runs.experiment.arms)
    return f"{target:.0%} {'validation' if held_out else 'test'} accuracy"


def steps_to(target: float) -> Callable[[ArmSeries], float]:
    return lambda s: measure(s, "steps_to_target", target=target)


def reached(values: list[float]) -> tuple[float, int]:
    """The mean of the seeds that reached the target, and how many did not (inf); NaN mean if none did."""
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else math.nan), sum(math.isinf(v) for v in values)


def scaling_rows(runs: ExperimentRuns) -> tuple[str, list[str], list[list[str]]]:
    """What the table holds, its header, and a row per model and optimizer with a column per batch
    size: the final test accuracy (mean ± std over seeds, seeds that diverged counted), and the
    steps to target where the experiment has one."""
    target = target_of(runs)
    final = points(runs, lambda s: s.summary.final_test_accuracy)
    diverged = points(runs, lambda s: s.diverged)
    steps = points(runs, steps_to(target)) if target is not None else {}
    batches = sorted({b for lines in final.values() for pts in lines.values() for b, _ in pts})
    rows = []
    for model, lines in final.items():
        for line, pts in lines.items():
            cells, bad = dict(pts), dict(diverged[model][line])
            to = dict(steps.get(model, {}).get(line, []))
            row = [model, line]
            for b in batches:
                row.append("" if b not in cells else _accuracy_text(cells[b], sum(bad[b])) +
                           (f"; {_steps_text(to[b])}" if b in to else ""))
            rows.append(row)
    what = ("Final test accuracy at each batch size, mean ± std over seeds"
            + (f"; steps until {target_text(runs, target)} is first reached, the mean of the seeds that"
               " reached it" if target is not None else "") + ".")
    return what, ["model", "optimizer", *(f"batch {b}" for b in batches)], rows


def _accuracy_text(values: list[float | None], diverged: int) -> str:
    """Mean ± std of the seeds' accuracies (no ± for one), how many diverged, and how many did so
    before any test evaluation (no accuracy: null in summary.json)."""
    n, none = len(values), sum(v is None for v in values)
    mean, std = mean_std(values)
    if none == n:
        text = "no test accuracy"
    else:
        text = f"{mean:.2%}" + (f" ± {std:.2%}" if n - none > 1 else "")
    notes = [f"{diverged} of {n} diverged"] if diverged else []
    if 0 < none < n or (none and not diverged):
        notes.append(f"{none} of {n} without a test evaluation")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _steps_text(values: list[float]) -> str:
    mean, never = reached(values)
    if never == len(values):
        return "not reached"
    text = f"{fmt('steps_to_target', mean)} steps"
    return text + (f" ({never} of {len(values)} not reached)" if never else "")


def _batch_axis(ax: plt.Axes, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(batches))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)


def _color(line: str, index: int) -> str:
    """A LAMB rule's own colour, else the optimizer's (the first word of the line), else the palette's."""
    return RULE_COLORS.get(line) or OPTIMIZER_COLORS.get(line.split(" ")[0]) or PALETTE[index % len(PALETTE)]


def accuracy_vs_batch(title: str, panels: dict[str, Points], diverged: Points, path: Path) -> Path:
    """Test accuracy against batch size (log2 x): a column per measure (``panels``: its label →
    points), a row per model, a line per optimizer; mean ± 1 std over seeds, in %; ✕ on a point
    where a seed diverged (``diverged``: the seeds' flags, as points)."""
    models = sorted({m for pts in panels.values() for m in pts})
    fig, axes = plt.subplots(len(models), len(panels), figsize=(6.5 * len(panels), 4.2 * len(models)),
                             squeeze=False)
    for col, (label, pts) in enumerate(panels.items()):
        for row, model in enumerate(models):
            ax = axes[row][col]
            lines = pts.get(model, {})
            for i, (line, by_batch) in enumerate(lines.items()):
                b = [batch for batch, _ in by_batch]
                mean, std = zip(*(mean_std(v) for _, v in by_batch)) if by_batch else ((), ())
                ax.errorbar(b, 100 * np.asarray(mean, dtype=float), yerr=100 * np.asarray(std, dtype=float),
                            color=_color(line, i), marker="o", ms=5, lw=1.8, capsize=4, label=line)
                flags = dict(diverged.get(model, {}).get(line, []))
                bad = [(x, 100 * m) for x, m in zip(b, mean) if any(flags.get(x, ())) and math.isfinite(m)]
                ax.plot([x for x, _ in bad], [y for _, y in bad], "X", color=_color(line, i), mec="black",
                        ms=9, ls="")
            _batch_axis(ax, sorted({b for by_batch in lines.values() for b, _ in by_batch}))
            ax.set(xlabel="batch size (log2 scale)", ylabel=f"{label} (%)", title=f"{model}: {label}")
            ax.legend(title="mean ± 1 std over seeds; ✕ a seed diverged", fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def steps_vs_batch(title: str, pts: Points, target: str, path: Path) -> Path:
    """Optimizer steps to ``target`` (its text: "98% validation accuracy") against batch size,
    log-log: a panel per model, a line per optimizer (the mean of the seeds that reached it; ✕ near
    the top where no seed did, side by side where several did not), and the perfect-scaling line,
    steps ∝ 1/batch, through the geometric mean of the optimizers that reached it at the smallest
    batch any of them did. A panel where nothing reached it says so."""
    models = sorted(pts)
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        lines = pts[model]
        batches = sorted({b for by_batch in lines.values() for b, _ in by_batch})
        missed: dict[int, list[str]] = {}  # batch → the colours of the optimizers that never reached it
        got: list[tuple[int, float]] = []  # (batch, mean steps) of every optimizer that reached it
        for i, (line, by_batch) in enumerate(lines.items()):
            means = [(b, *reached(v)) for b, v in by_batch]
            ok = [(b, m) for b, m, _ in means if math.isfinite(m)]
            got += ok
            ax.plot([b for b, _ in ok], [m for _, m in ok], color=_color(line, i), marker="o", ms=5, lw=1.8,
                    label=line)
            for b, m, _ in means:
                if not math.isfinite(m):
                    missed.setdefault(b, []).append(_color(line, i))
        ax.set_yscale("log")
        if got:  # through the smallest batch any optimizer reached it at, their geometric mean
            b0 = min(b for b, _ in got)
            s0 = math.exp(float(np.mean([math.log(m) for b, m in got if b == b0])))
            ax.plot(batches, [s0 * b0 / b for b in batches], color="grey", ls="--", lw=1.2,
                    label="perfect scaling (steps ∝ 1/batch)")
            if missed:  # head room for the crosses, above the highest point
                low, high = ax.get_ylim()
                ax.set_ylim(low, high * (high / low) ** 0.15)
        else:
            ax.text(0.5, 0.5, f"no optimizer reached {target}\nat any batch size", transform=ax.transAxes,
                    ha="center", va="center", fontsize=10)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:.1g}"[0] in "25" else ""))
        for b, colors in missed.items():  # no seed reached the target: crosses near the top, side by side
            for k, color in enumerate(colors):
                x = b * 2 ** (DODGE * (k - (len(colors) - 1) / 2))
                ax.plot([x], [NOT_REACHED_Y], "X", color=color, mec="black", ms=8,
                        transform=ax.get_xaxis_transform())
        if not got:  # no steps to read: no step scale
            ax.tick_params(axis="y", which="both", left=False, labelleft=False)
        _batch_axis(ax, batches)
        ax.set(xlabel="batch size (log2 scale)", ylabel=f"steps to {target} (log)",
               title=f"{model}: steps to target")
        ax.legend(title="✕ near the top: no seed reached it", fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def scaling_figures(runs: ExperimentRuns, title: str, folder: Path, label: str) -> list[tuple[Path, str]]:
    """The accuracy figure, and the steps figure where the experiment has a target: (path, alt)."""
    panels = {name: points(runs, lambda s, key=key: getattr(s.summary, key)) for key, name in ACCURACIES}
    diverged = points(runs, lambda s: s.diverged)
    made = [(accuracy_vs_batch(title, panels, diverged, folder / f"{label}_batch.png"),
             "final and best test accuracy against batch size, per optimizer (mean ± std over seeds)")]
    target = target_of(runs)
    if target is not None:
        path, text = folder / f"{label}_steps.png", target_text(runs, target)
        made.append((steps_vs_batch(title, points(runs, steps_to(target)), text, path),
                     f"steps to {text} against batch size, with perfect scaling"))
    return made
