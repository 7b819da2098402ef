"""A watched training drawn and summed up: the report's trust-ratio ridges, r of every tensor over
time as a heat map, the relative step and r per layer kind, and a table of what LAMB would do to each
kind (``lambexp lens FOLDER``).

At the same learning rate LAMB takes, per tensor, a step of lr·‖w‖ in the direction of the update:
the lens's r = ‖w‖ / (‖Δw‖/lr) is the factor by which it would multiply the step this training took.
r > 1: LAMB would speed that tensor up; r < 1: slow it down.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lambexp.base.statuses import Status
from lambexp.folders.layout import Summary
from lambexp.lens.folder import Watched
from lambexp.lens.kinds import KINDS
from lambexp.output import table_lines
from lambexp.report.figures import PALETTE, _save, plt, trust_ridges
from lambexp.report.series import ArmSeries

STEPS = "optimizer steps"  # the x of a watched training
FIGURES = ("lens_trust.png", "lens_r_per_tensor.png", "lens_kinds.png")


def as_series(w: Watched) -> ArmSeries:
    """The watched tables in the shape the report's figures take."""
    empty = np.zeros((0, 2))
    return ArmSeries(arm=w.folder.name, seed=0, train_loss=empty, test_loss=empty, test_accuracy=empty,
                     trust_steps=w.steps, names=w.names, r=w.tables["r"], r1=w.tables["r1"],
                     r2=w.tables["r2"], summary=Summary(Status.FINISHED, arm=w.folder.name),
                     folder=w.folder)


def draw(w: Watched, out: Path) -> list[Path]:
    """The three figures of ``FIGURES`` in ``out``."""
    title = f"lambexp.watch: {w.folder}"
    return [trust_ridges(title, {w.folder.name: as_series(w)}, {w.folder.name: PALETTE[2]},
                         out / FIGURES[0], x_label=STEPS),
            r_heat_map(title, w, out / FIGURES[1]),
            by_kind(title, w, out / FIGURES[2])]


def r_heat_map(title: str, w: Watched, path: Path) -> Path:
    """r of every tensor (rows, in parameter order) at every watched step (columns), on a log colour
    scale centred on 1: red where LAMB would speed the tensor up, blue where it would slow it down."""
    r = w.tables["r"]
    logs = np.log10(np.where(np.isfinite(r) & (r > 0), r, np.nan))
    span = max(float(np.nanmax(np.abs(logs))) if np.isfinite(logs).any() else 1.0, 0.5)
    fig, ax = plt.subplots(figsize=(10, max(3.0, 1.5 + 0.16 * len(w.names))))
    image = ax.imshow(logs.T, aspect="auto", cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest",
                      extent=(-0.5, len(w.steps) - 0.5, len(w.names) - 0.5, -0.5))
    ax.set_yticks(range(len(w.names)), [f"{n} ({w.kinds[n]})" for n in w.names],
                  fontsize=max(4, min(9, 600 // max(len(w.names), 1))))
    ticks = np.unique(np.linspace(0, len(w.steps) - 1, min(len(w.steps), 8)).round().astype(int))
    ax.set_xticks(ticks, [f"{w.steps[t]:.0f}" for t in ticks])
    ax.set_xlabel(STEPS)
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.set_label("log10 r  (red: LAMB would speed up, blue: slow down)")
    ax.set_title(f"{title}\nr = ‖w‖ / (‖Δw‖/lr) of every tensor at every watched step", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def by_kind(title: str, w: Watched, path: Path) -> Path:
    """Per layer kind, over time: the median (line) and the range (band) over its tensors of the
    relative step ‖Δw‖/‖w‖ (left) and of r (right), log y."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    for i, kind in enumerate(present_kinds(w)):
        columns = [j for j, n in enumerate(w.names) if w.kinds[n] == kind]
        for ax, key in zip(axes, ("relative_step", "r")):
            values = w.tables[key][:, columns]
            values = np.where(np.isfinite(values) & (values > 0), values, np.nan)
            with _quiet_nan_warnings():
                lo, mid, hi = (np.nanmin(values, 1), np.nanmedian(values, 1), np.nanmax(values, 1))
            color = PALETTE[i % len(PALETTE)]
            ax.fill_between(w.steps, lo, hi, color=color, alpha=0.15, lw=0)
            ax.plot(w.steps, mid, color=color, lw=1.6, label=f"{kind} ({len(columns)})")
    axes[0].set(yscale="log", xlabel=STEPS, title="relative step ‖Δw‖/‖w‖ (median, band: min–max)")
    axes[1].set(yscale="log", xlabel=STEPS, title="r: the factor LAMB would apply to the step")
    axes[1].axhline(1.0, color="black", lw=0.8, ls=":")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(title="layer kind (tensors)", fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def present_kinds(w: Watched) -> list[str]:
    return [k for k in KINDS if k in w.kinds.values()]


def kind_table(w: Watched, last: float = 0.5) -> list[str]:
    """One line per layer kind over the last ``last`` fraction of the watched steps: its tensors, the
    median relative step and median r over them, and what LAMB would do (speed up or slow down, ×r)."""
    rows = []
    recent = slice(int(len(w.steps) * (1 - last)), None)
    for kind in present_kinds(w):
        columns = [j for j, n in enumerate(w.names) if w.kinds[n] == kind]
        rel, r = (w.tables[k][recent][:, columns] for k in ("relative_step", "r"))
        with _quiet_nan_warnings():
            rel_mid, r_mid = np.nanmedian(rel[np.isfinite(rel)]), np.nanmedian(r[np.isfinite(r)])
        would = "speed up" if r_mid > 1 else "slow down" if r_mid < 1 else "keep"
        rows.append((kind, len(columns), f"{rel_mid:.3g}", f"{r_mid:.3g}", f"{would} ×{r_mid:.3g}"))
    header = ("layer kind", "tensors", "median ‖Δw‖/‖w‖", "median r", "LAMB would (same lr)")
    return table_lines(header, rows)


@contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: a kind not measured then
        yield
