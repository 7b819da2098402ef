"""The report's figures as PNG files: training curves, the post's trust-ratio ridge plots, per-layer norms,
accuracy against learning rate, and the grid of LAMB variants. Every function takes plain
data (``ArmSeries``, dicts, a ``Grid``) and returns the path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

from lambexp.base.divergence import first_divergence
from lambexp.base.measures import DEFAULT_THRESHOLD, as_percent
from lambexp.folders.layout import replaced_atomically
from lambexp.report.series import ArmSeries
from lambexp.report.variants import Grid

matplotlib.use("Agg")  # files only, never a window: the report runs headless
# A folder or arm name in a script DejaVu Sans lacks (CJK, say) draws as boxes; matplotlib's
# warning for each missing glyph would bury the command's own output on stderr.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)

DPI = 110
MIN_ACCURACY_SPAN = 5.0  # percentage points: the test-accuracy axis never zooms in further
OPTIMIZER_COLORS = {"adam": "#1f77b4", "torch_adam": "#1f77b4", "torch_adamw": "#17becf",
                    "lamb": "#d62728", "lars": "#2ca02c", "sgd": "#7f7f7f",
                    "nesterov": "#ff7f0e"}  # the post: Adam blue, LAMB red
PALETTE = ("#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TRUST_TITLES = {"r": "r (trust ratio)", "r1": "r₁ (weight norm)", "r2": "r₂ (update norm)"}
MAX_RIDGES = 40  # rows drawn per ridge panel; more logged steps are subsampled evenly
RIDGE_GRID = 256  # points on each ridge's x grid
RIDGE_BANDWIDTH = 1 / 60  # Gaussian kernel width as a fraction of the column's x span (log10 or linear)
RIDGE_OVERLAP = 2.5  # the tallest ridge in a figure, in row spacings
THRESHOLD_STYLES = ("--", ":", "-.")  # the lr figure's threshold lines, when claims set several
SAMPLES = "training samples seen"  # the x of a lambexp run; a watched training's is optimizer steps


def arm_colors(arms: list[tuple[str, str]]) -> dict[str, str]:
    """Colour per arm from (arm name, optimizer name) pairs: by optimizer (the post's Adam blue,
    LAMB red) when that tells the arms apart, else by arm order (the post: lr 0.01 blue, lr 0.1 green).
    """
    by_optimizer = [OPTIMIZER_COLORS.get(opt) for _, opt in arms]
    if None not in by_optimizer and len(set(by_optimizer)) == len(arms):
        return {name: color for (name, _), color in zip(arms, by_optimizer)}
    return {name: PALETTE[i % len(PALETTE)] for i, (name, _) in enumerate(arms)}


def fmt_samples(x: float, _pos=None) -> str:
    """60000 → '60k', 1200000 → '1.2M': tick labels for training samples seen."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write the figure as ``path`` whole or not at all (a full disk leaves no partial PNG, and the
    OSError names ``path``), never through a link planted there: ``replaced_atomically``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced_atomically(path) as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _color(colors: dict[str, str], key: str, index: int) -> str:
    return colors.get(key, PALETTE[index % len(PALETTE)])


def _stack(tables: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' (n_i, 2) tables on their union x grid: x (k,) and y (S, k), NaN where a seed has no finite
    value (seeds that diverged or stopped early are simply shorter or NaN there)."""
    xs = np.unique(np.concatenate([t[:, 0] for t in tables]))
    ys = np.full((len(tables), len(xs)), np.nan)
    for i, t in enumerate(tables):
        ys[i, np.searchsorted(xs, t[:, 0])] = t[:, 1]
    ys[~np.isfinite(ys)] = np.nan
    return xs, ys


def _divergence_mark(s: ArmSeries) -> tuple[float, float] | None:
    """(x, loss) where a diverged run diverged: the logged loss at which the rule of
    lambexp.base.divergence fired, or the last finite loss before it when that loss is NaN/inf (or the
    last one logged, when a parameter went bad). None when the run did not diverge."""
    if not s.diverged or not len(s.train_loss):
        return None
    at = first_divergence(s.train_loss[:, 1])
    at = len(s.train_loss) if at is None else at
    finite = np.flatnonzero(np.isfinite(s.train_loss[: at + 1, 1]))
    if not len(finite):
        return None
    return float(s.train_loss[finite[-1], 0]), float(s.train_loss[finite[-1], 1])


def _plot_seeds(ax: plt.Axes, tables: list[np.ndarray], color: str, label: str, scale: float = 1.0) -> None:
    """Mean over seeds as a line and, for two or more seeds, their min–max as a band — both only where
    every seed is finite; where some are not (diverged, or ended early) the rest are drawn one by one, thin.
    """
    xs, ys = _stack([t for t in tables if len(t)] or [np.empty((0, 2))])
    ax.plot(xs, ys.mean(axis=0) * scale, color=color, lw=1.8, label=label)  # gaps where any seed is NaN
    if len(ys) < 2:
        return
    ax.fill_between(xs, ys.min(axis=0) * scale, ys.max(axis=0) * scale, color=color, alpha=0.2, lw=0)
    full = xs[np.isfinite(ys).all(axis=0)]
    for t in tables:
        t = t[np.isfinite(t[:, 1])]
        own = ~np.isin(t[:, 0], full)
        own[:-1] |= own[1:]  # and the point before each stretch, to join the mean line
        lone = "." if own.sum() == 1 else ""  # a single point draws no line
        ax.plot(t[own, 0], t[own, 1] * scale, color=color, lw=0.9, alpha=0.8, marker=lone)


def _samples_axis(ax: plt.Axes, samples_per_epoch: int | None, x_label: str = SAMPLES) -> None:
    """x label and 60k-style ticks for training samples seen; an epoch axis on top when the epoch is known."""
    ax.set_xlabel(x_label)
    ax.xaxis.set_major_formatter(FuncFormatter(fmt_samples))
    if samples_per_epoch:
        top = ax.secondary_xaxis("top", functions=(lambda x: x / samples_per_epoch,
                                                   lambda e: e * samples_per_epoch))
        top.set_xlabel("epoch", fontsize=9)


def _widen_accuracy(ax: plt.Axes) -> None:
    """At least MIN_ACCURACY_SPAN points of y within [0, 100]: noise of one point must not fill the panel."""
    lo, hi = ax.get_ylim()
    pad = max(0.0, MIN_ACCURACY_SPAN - (hi - lo)) / 2
    ax.set_ylim(max(lo - pad, 0.0), min(hi + pad, 100.0))


def _loss_legend(ax: plt.Axes) -> None:
    """The arms' legend, plus what ✕ means when the panel has one."""
    handles, labels = ax.get_legend_handles_labels()
    if any(line.get_marker() == "X" for line in ax.lines):
        handles.append(Line2D([], [], ls="", marker="X", ms=9, color="grey", mec="black"))
        labels.append("where it diverged (last finite loss)")
    ax.legend(handles, labels, fontsize=9)


def curves(title: str, runs: dict[str, list[ArmSeries]], colors: dict[str, str], path: Path,
           samples_per_epoch: int | None = None) -> Path:
    """Training loss (log scale) and test accuracy (%) against training samples seen, one colour per arm:
    the mean over seeds as a line, the min–max over seeds as a band, ✕ at a diverged seed's last
    finite loss. ``samples_per_epoch`` adds an epoch axis on top.
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for i, (arm, seeds) in enumerate(runs.items()):
        color = _color(colors, arm, i)
        diverged = sum(s.diverged for s in seeds)
        note = f", diverged {diverged}/{len(seeds)}" if diverged else ""
        label = f"{arm} ({len(seeds)} seed{'s' * (len(seeds) > 1)}{note})"
        _plot_seeds(ax_loss, [s.train_loss for s in seeds], color, label)
        _plot_seeds(ax_acc, [s.test_accuracy for s in seeds], color, label, scale=100.0)
        for x, y in filter(None, map(_divergence_mark, seeds)):
            ax_loss.plot(x, y, "X", ms=11, color=color, mec="black", mew=0.8, zorder=5)
    ax_loss.set(yscale="log", ylabel="training loss (log scale)", title="training loss")
    ax_acc.set(ylabel="test accuracy (%)", title="test accuracy")
    _widen_accuracy(ax_acc)
    _loss_legend(ax_loss)
    ax_acc.legend(fontsize=9)
    for ax in (ax_loss, ax_acc):
        _samples_axis(ax, samples_per_epoch)
        ax.grid(alpha=0.3)
    several = max(map(len, runs.values()), default=0) >= 2
    fig.suptitle(title + ("\nline: mean over seeds · band: min–max over seeds · thin lines: single seeds "
                          "where another has no finite value" if several else ""), fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def curves_by_group(title: str, groups: dict[str, dict[str, list[ArmSeries]]], path: Path,
                    samples_per_epoch: int | None = None) -> Path:
    """``curves`` for many arms (a sweep): one row per group (e.g. optimizer and weight decay), its
    training loss and test accuracy side by side, one line per arm of the group in the order given
    (e.g. by learning rate, from dark to light), the mean over seeds with ✕ where a seed diverged."""
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 0.8 + 2.9 * len(groups)), sharex=True,
                             squeeze=False)
    for (ax_loss, ax_acc), (group, lines) in zip(axes, groups.items()):
        shades = plt.cm.viridis(np.linspace(0, 0.9, max(len(lines), 2)))
        for color, (label, seeds) in zip(shades, lines.items()):
            diverged = sum(s.diverged for s in seeds)
            note = f" (diverged {diverged}/{len(seeds)})" if diverged else ""
            _plot_seeds(ax_loss, [s.train_loss for s in seeds], color, label + note)
            _plot_seeds(ax_acc, [s.test_accuracy for s in seeds], color, label + note, scale=100.0)
            for x, y in filter(None, map(_divergence_mark, seeds)):
                ax_loss.plot(x, y, "X", ms=9, color=color, mec="black", mew=0.8, zorder=5)
        ax_loss.set(yscale="log", ylabel=f"{group}\ntraining loss (log)")
        ax_acc.set(ylabel="test accuracy (%)", ylim=(0, 100))
        ax_acc.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
    axes[0, 0].set_title("training loss")
    axes[0, 1].set_title("test accuracy")
    for ax in axes[-1]:
        _samples_axis(ax, None)
    if samples_per_epoch:
        for ax in axes[0]:
            _samples_axis(ax, samples_per_epoch)
            ax.set_xlabel("")
    fig.suptitle(f"{title}\none row per group, one line per arm (mean over seeds); ✕: where a seed"
                 " diverged (last finite loss)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig.get_figheight()))  # room for the two-line title
    return _save(fig, path)


def _ridge_axis(values: list[np.ndarray]) -> tuple[bool, float, float]:
    """(log10 scale?, lo, hi) for one column: log when nothing is negative and the positive finite values
    span more than 20× (norms decay to 0 in a dead network: zeros then sit at the left edge)."""
    v = np.concatenate([a[np.isfinite(a)].ravel() for a in values])
    pos = v[v > 0]
    log = len(pos) > 0 and v.min() >= 0 and pos.max() / pos.min() > 20
    if len(v) == 0:
        return False, 0.0, 1.0
    lo, hi = (np.log10(pos.min()), np.log10(pos.max())) if log else (v.min(), v.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    return log, lo - 0.05 * span, hi + 0.05 * span


def _densities(table: np.ndarray, log: bool, grid: np.ndarray) -> np.ndarray:
    """(T, len(grid)) Gaussian-kernel density of each row's finite values (one per layer) on ``grid``;
    in log10 space when ``log``, zeros then at the grid's left end. Unnormalised: one bump per layer."""
    width = (grid[-1] - grid[0]) * RIDGE_BANDWIDTH
    v = np.where(np.isfinite(table), table, np.nan)
    if log:
        v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.where(v == 0, grid[0], np.nan))
    z = (grid[None, None, :] - v[:, :, None]) / width  # (T, L, G)
    return np.nansum(np.exp(-0.5 * z**2), axis=1)


def _ridge_panel(ax: plt.Axes, steps: np.ndarray, dens: np.ndarray, x: np.ndarray, color: str,
                 height: float) -> None:
    """One ridge per row of ``dens``, first at the top, later rows drawn in front and darker;
    a note where the rows turn empty (every value NaN/inf)."""
    n = len(dens)
    if n == 0:  # e.g. torch's own Adam, which computes no trust ratio
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="0.3")
        ax.yaxis.set_major_locator(NullLocator())
        return
    rgb = np.array(to_rgb(color))
    for i, d in enumerate(dens):
        base, shown = n - 1 - i, d > 2e-3 * d.max()  # trimmed to where the ridge is visible
        shade = 0.75 * (1 - i / max(n - 1, 1))  # early rows pale, late rows the arm's full colour
        ax.fill_between(x, base, base + d * height, where=shown, color=rgb + (1 - rgb) * shade, lw=0,
                        zorder=2 * i)
        ax.plot(x, np.where(shown, base + d * height, np.nan), color=rgb * 0.8, lw=0.7, zorder=2 * i + 1)
    empty = np.flatnonzero(~dens.any(axis=1))
    if len(empty):
        ax.text(0.5, n - 1 - empty[0], f"no finite values from {fmt_samples(steps[empty[0]])} ↓",
                transform=blended_transform_factory(ax.transAxes, ax.transData), ha="center", va="center",
                color="0.3", fontsize=9, bbox={"fc": "white", "ec": "0.7", "boxstyle": "round"})
    ticks = np.unique(np.linspace(0, n - 1, min(n, 6)).round().astype(int))
    ax.yaxis.set_major_locator(FixedLocator(n - 1 - ticks))
    ax.set_yticklabels([fmt_samples(s) for s in steps[ticks]])
    ax.set_ylim(-0.5, n - 0.7 + RIDGE_OVERLAP)


def trust_ridges(title: str, runs: dict[str, ArmSeries], colors: dict[str, str], path: Path,
                 x_label: str = SAMPLES) -> Path:
    """The post's histogram figure: per arm (rows) and per r, r1, r2 (columns) a ridge plot, one ridge per
    logged step (first at the top) showing the spread of that quantity over the layers as a Gaussian-kernel
    density (log10 x when a column spans decades). Columns share x across arms; NaN/inf are skipped.
    """
    keys = list(TRUST_TITLES)
    picks = {arm: np.unique(np.linspace(0, len(s.trust_steps) - 1, MAX_RIDGES).round().astype(int))
             if len(s.trust_steps) else np.zeros(0, int) for arm, s in runs.items()}
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 0.6 + 4.4 * len(runs)), sharex="col", squeeze=False)
    for col, key in enumerate(keys):
        log, lo, hi = _ridge_axis([getattr(s, key)[picks[a]] for a, s in runs.items()])
        grid = np.linspace(lo, hi, RIDGE_GRID)
        dens = {a: _densities(getattr(s, key)[picks[a]], log, grid) for a, s in runs.items()}
        peak = max([d.max() for d in dens.values() if d.size] + [1e-12])
        for row, (arm, s) in enumerate(runs.items()):
            ax = axes[row, col]
            _ridge_panel(ax, s.trust_steps[picks[arm]], dens[arm], 10**grid if log else grid,
                         _color(colors, arm, row), RIDGE_OVERLAP / peak)
            ax.set_xscale("log" if log else "linear")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short decades
            ax.grid(axis="x", alpha=0.3, which="both")
            ax.set_title(TRUST_TITLES[key] if row == 0 else "", fontsize=11)
            if col == 0:
                ax.set_ylabel(f"{arm}\n{x_label} ↓", fontsize=11)
            else:
                ax.yaxis.set_major_locator(NullLocator())
            if log:
                ax.set_xlim(10**lo, 10**hi)
        zeros = log and any((getattr(s, key)[picks[a]] == 0).any() for a, s in runs.items())
        scale = " (log scale; 0 at the left edge)" if zeros else " (log scale)" if log else ""
        axes[-1, col].set_xlabel(f"{key} per layer{scale}")
    fig.suptitle(f"{title}\none ridge per logged step: density of the value over the layers", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def layer_norms(title: str, runs: dict[str, ArmSeries], path: Path, key: str = "r1") -> Path:
    """``key`` (r1, the weight norm, by default) of every layer over training, one panel per arm, one line
    per parameter tensor (biases dashed), log y shared across panels; a dotted line where values turn NaN/inf.
    """
    fig, axes = plt.subplots(1, len(runs), figsize=(1 + 5 * len(runs), 4.5), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (arm, s) in zip(axes[0], runs.items()):
        table = getattr(s, key)
        layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in s.names))  # one colour per module
        for j, name in enumerate(s.names):
            y = np.where(np.isfinite(table[:, j]) & (table[:, j] > 0), table[:, j], np.nan)
            color = plt.cm.tab10(layers.index(name.rsplit(".", 1)[0]) % 10)
            ls = "--" if name.endswith("bias") else "-"
            kept_out = name in s.kept_out  # no trust ratio: r = 1, applied and logged
            ax.plot(s.trust_steps, y, color=color, ls=":" if kept_out else ls, lw=1.5,
                    label=f"{name} (kept out of r)" if kept_out else name)
        bad = np.flatnonzero(~np.isfinite(table).all(axis=1)) if table.size else []
        if len(bad):
            ax.axvline(s.trust_steps[bad[0]], color="black", ls=":", lw=1.2, label="first NaN/inf")
        ax.set(yscale="log", title=arm)
        _samples_axis(ax, None)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel(f"{TRUST_TITLES.get(key, key)}, log scale")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    axes[0, -1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1),
                       fontsize=9, title="parameter (-- bias, ·· kept out of r)", title_fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_lr(title: str, points: dict[str, list[tuple[float, list[float], int]]], path: Path,
                   threshold: float | Sequence[float] = DEFAULT_THRESHOLD) -> Path:
    """Final test accuracy against learning rate (log x), one line per optimizer (and weight decay):
    each point is (lr, the seeds' final accuracies in [0, 1], seeds that diverged); the mean as a
    line, the min–max over seeds as a band, ✕ where a seed diverged, and the threshold the lr_range
    claims use (several: one line each) dashed, its value in the legend."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (label, pts) in enumerate(points.items()):
        pts = sorted(pts)
        lrs = np.array([lr for lr, _, _ in pts])
        accs = [np.array(a, dtype=float) * 100 for _, a, _ in pts]
        mean = np.array([a.mean() if len(a) else np.nan for a in accs])
        color = PALETTE[i % len(PALETTE)]
        ax.plot(lrs, mean, color=color, marker="o", ms=4, lw=1.8, label=label)
        if any(len(a) > 1 for a in accs):
            ax.fill_between(lrs, [a.min() for a in accs], [a.max() for a in accs], color=color,
                            alpha=0.15, lw=0)
        bad = [(lr, m) for (lr, _, d), m in zip(pts, mean) if d]
        if bad:
            ax.plot(*zip(*bad), "X", ms=10, color=color, mec="black", mew=0.8, zorder=5)
    levels = [threshold] if isinstance(threshold, float | int) else list(threshold)
    for level, ls in zip(levels, cycle(THRESHOLD_STYLES)):
        ax.axhline(level * 100, color="grey", ls=ls, lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="final test accuracy (%)", title=title,
           ylim=(0, 100))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], ls=ls, color="grey") for _, ls in zip(levels, cycle(THRESHOLD_STYLES))]
    labels += [f"{as_percent(level)}: lr_range's threshold" for level in levels]
    handles.append(Line2D([], [], ls="", marker="X", ms=9, color="grey", mec="black"))
    labels.append("a seed diverged")
    ax.legend(handles, labels, fontsize=8, title="mean over seeds, band: min–max", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


ACCURACY_FLOOR = 0.90  # the variant grid's colour scale starts here: every cell below reads alike
R_COLOUR_CEILING = 1e3  # and its r scale ends here: a run-away r (1e33) would flatten the others


def _ink(image, value: float) -> str:
    """Black or white text, whichever reads on the cell's colour (its luminance)."""
    if not np.isfinite(value) or value <= 0 and image.norm.__class__.__name__ == "LogNorm":
        return "black"
    r, g, b, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def variant_grid(title: str, grid: Grid, path: Path) -> Path:
    """Two heat maps of ``grid`` (``report.variants``), variants down, settings across: the final
    test accuracy (mean over seeds, its colour clipped below ACCURACY_FLOOR; ✕ k/n: seeds that
    diverged) and the largest trust ratio r (mean over seeds of the max over training and layers,
    log colour scale). Unfinished cells stay blank; "not tested": every seed diverged, and stopped,
    before its first evaluation."""
    rows, columns = list(grid.rows), list(grid.columns)
    acc = np.full((len(rows), len(columns)), np.nan)
    r_max = np.full_like(acc, np.nan)
    for (row, column), cell in grid.cells.items():
        i, j = rows.index(row), columns.index(column)
        acc[i, j], r_max[i, j] = cell.accuracy[0], cell.r_max
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.45 * len(rows)), sharey=True)
    shown = np.where(np.isfinite(acc), np.maximum(acc, ACCURACY_FLOOR), np.nan)
    acc_image = axes[0].imshow(shown * 100, cmap="RdYlGn", vmin=ACCURACY_FLOOR * 100, vmax=100, aspect="auto")
    fig.colorbar(acc_image, ax=axes[0], label=f"final test accuracy (%), ≤ {ACCURACY_FLOOR:.0%} alike")
    positive = r_max[np.isfinite(r_max) & (r_max > 0)]
    low = positive.min() if positive.size else 0.1
    high = min(positive.max(), R_COLOUR_CEILING) if positive.size else 10
    norm = matplotlib.colors.LogNorm(low, high if high > low else low * 10, clip=True)
    r_image = axes[1].imshow(np.where(r_max > 0, r_max, np.nan), cmap="viridis", norm=norm, aspect="auto")
    bar = fig.colorbar(r_image, ax=axes[1], extend="max" if positive.size and positive.max() > high else
                       "neither", label=f"largest r over training and layers (log; ≥ {high:g} alike)")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}" if f"{x:g}"[0] in "25" else ""))
    for (row, column), cell in grid.cells.items():
        i, j = rows.index(row), columns.index(column)
        mean, std = cell.accuracy
        text = f"{mean:.1%}\n± {std:.1%}" if np.isfinite(mean) else "not tested"
        if cell.diverged:
            text += f"\n✕ {cell.diverged}/{cell.seeds} diverged"
        axes[0].text(j, i, text, ha="center", va="center", fontsize=7,
                     color=_ink(acc_image, shown[i, j] * 100))
        axes[1].text(j, i, f"{cell.r_max:.3g}" if np.isfinite(cell.r_max) else "n/a", ha="center",
                     va="center", fontsize=8, color=_ink(r_image, r_max[i, j]))
    for ax, what in zip(axes, ("final test accuracy, mean ± std over seeds", "max r, mean over seeds")):
        ax.set_facecolor("#e8e8e8")  # a cell without a value: not tested (or not finished)
        ax.set_xticks(range(len(columns)), [grid.column_text(c) for c in columns], fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=9)
        ax.set_title(what, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
