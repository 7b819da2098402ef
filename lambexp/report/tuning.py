"""A tuned experiment's picks in the report: per arm, the validation accuracy at every point it
tried, the point chosen, a flag where it lies at the lr grid's edge, and the chosen point's test
accuracy over the seeds; and the tuning curves as a figure (read from tuning.json, which
lambexp.runner.tuning writes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lambexp.base.files import TUNING_FILE
from lambexp.report.claims import mean_std
from lambexp.report.collect import ExperimentRuns
from lambexp.report.document import Block, Image, Para, Table
from lambexp.report.figures import PALETTE, _save, plt

EDGE = "at the grid's edge: the best lr may lie outside it"


def read_picks(runs: ExperimentRuns) -> dict | None:
    path = runs.folder / TUNING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _value(point: dict) -> str:
    if point["diverged"]:
        return "diverged"
    return "n/a" if point["value"] is None else f"{point['value']:.2%}"


def pick_rows(runs: ExperimentRuns, picks: dict) -> list[list[str]]:
    rows = []
    for entry in picks["arms"]:
        c = entry["chosen"]
        tried = ", ".join(f"{p['lr']:g}/{p['warmup_epochs']:g}: {_value(p)}" for p in entry["tried"])
        series = runs.arm_runs(entry["arm"])
        acc = mean_std([s.summary.final_test_accuracy for s in series])
        test = "not finished" if math.isnan(acc[0]) else \
            f"{acc[0]:.2%} ± {acc[1]:.2%} ({len(series)} seed{'s' * (len(series) != 1)})"
        rows.append([entry["arm"], f"{c['lr']:g}", f"{c['warmup_epochs']:g}", _value(c),
                     EDGE if entry["edge"] else "inside", test, tried])
    return rows


def tuning_curves(title: str, picks: dict, path: Path, panel_of: dict[str, str] | None = None) -> Path:
    """Validation accuracy against lr (log x), a line per arm and warm-up; ★ the chosen point, ✕ a
    point that diverged (on the panel's floor). ``panel_of``: arm → panel title, a panel per title
    (a model and batch size, say), so that 36 arms are not 36 lines in one; each panel's accuracy
    axis runs from just under its lowest point to 100%."""
    groups: dict[str, list[dict]] = {}
    for entry in picks["arms"]:
        groups.setdefault((panel_of or {}).get(entry["arm"], ""), []).append(entry)
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8, 4.8) if len(groups) == 1 else (6 * cols, 4.4 * rows),
                             squeeze=False)
    for ax, (panel, entries) in zip(axes.flat, groups.items()):
        values = [100 * p["value"] for e in entries for p in e["tried"] if p["value"] is not None
                  and not p["diverged"]]
        floor = max(0.0, math.floor(min(values)) - 1.0) if values else 0.0
        for i, entry in enumerate(entries):
            _tuning_lines(ax, entry, PALETTE[i % len(PALETTE)], floor)
        ax.set_xscale("log")
        ax.set(xlabel="learning rate (log scale)", ylabel=f"{picks['by'].replace('_', ' ')} (%)",
               title=panel or f"{title}: tuning on validation", ylim=(floor, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="★ chosen, ✕ diverged (on the floor)", title_fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if len(groups) > 1:
        fig.suptitle(f"{title}: tuning on validation", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _tuning_lines(ax: plt.Axes, entry: dict, color: str, floor: float) -> None:
    """One arm's points tried, a line per warm-up, its diverged points on ``floor`` and its pick."""
    warmups = sorted({p["warmup_epochs"] for p in entry["tried"]})
    for j, w in enumerate(warmups):
        pts = sorted((p["lr"], np.nan if p["value"] is None or p["diverged"] else 100 * p["value"],
                      p["diverged"]) for p in entry["tried"] if p["warmup_epochs"] == w)
        label = entry["arm"] + (f", warm-up {w:g}" if len(warmups) > 1 else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker="o", ms=4,
                ls=("-", "--", ":", "-.")[j % 4], label=label)
        bad = [p[0] for p in pts if p[2]]
        if bad:  # an empty unclipped line would stretch the panel's layout box to the figure's corner
            ax.plot(bad, [floor] * len(bad), "X", color=color, mec="black", ms=9, ls="", clip_on=False)
    c = entry["chosen"]
    if c["value"] is not None and not c["diverged"]:
        ax.plot([c["lr"]], [100 * c["value"]], "*", ms=16, color=color, mec="black", zorder=5)


def panels(runs: ExperimentRuns) -> dict[str, str] | None:
    """Arm → "lenet, batch 256" where the tuning has more arms than one panel reads well and they
    differ in model or batch size; None otherwise (one panel)."""
    arms = runs.experiment.arms
    titles = {arm.name: f"{arm.model}, batch {arm.batch_size}" for arm in arms}
    return titles if len(arms) > len(PALETTE) and len(set(titles.values())) > 1 else None


def stale(runs: ExperimentRuns, picks: dict) -> list[str]:
    """The arms of tuning.json whose chosen point is not what the folder's config says they trained
    at (or that it no longer has): a record from another tuning, not to be shown as this one's."""
    trained = {arm.name: (arm.lr, arm.warmup_epochs) for arm in runs.experiment.arms}
    return [e["arm"] for e in picks["arms"]
            if trained.get(e["arm"]) != (e["chosen"]["lr"], e["chosen"]["warmup_epochs"])]


def tuning_blocks(runs: ExperimentRuns, out_dir: Path, label: str) -> list[Block]:
    """The picks' table and the tuning curves, for an experiment tuned with `tune:`; [] otherwise.
    Arms whose record is stale (``stale``) are left out, and said."""
    picks = read_picks(runs)
    if picks is None:
        return []
    old = stale(runs, picks)
    picks = {**picks, "arms": [e for e in picks["arms"] if e["arm"] not in old]}
    note = [Para(f"{TUNING_FILE} does not match the points these runs trained at for {', '.join(old)}"
                 " (it records another tuning): left out here; run `lambexp reproduce` with the tuned"
                 " config again to renew it.")] if old else []
    if not picks["arms"]:
        return note
    path = out_dir / "figures" / f"{label}_tuning.png"
    tuning_curves(runs.experiment.name, picks, path, panels(runs))
    return [*note, Para(f"Each arm's lr and warm-up were picked on {picks['by']} (held-out training"
                 " images, never the test set), one seed per point; the chosen point then trained over"
                 " the seeds below."),
            Table(["arm", "chosen lr", "warm-up", "validation", "edge", "test accuracy (chosen, seeds)",
                   "tried (lr/warm-up: validation)"], pick_rows(runs, picks)),
            Image(path.relative_to(out_dir), "validation accuracy against learning rate, per arm")]
