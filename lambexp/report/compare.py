"""`lambexp compare`'s figure: the training loss and test accuracy of the arms of several runs in one
figure, each run's arm a line (its seeds as a band), so runs made at different times sit side by side."""

from __future__ import annotations

from pathlib import Path

from lambexp.base.statuses import Status
from lambexp.folders.catalog import RunStatus
from lambexp.report import figures
from lambexp.report.collect import folder_labels
from lambexp.report.series import ArmSeries, load_arm


def compare_figure(runs: list[RunStatus], path: Path) -> Path | None:
    """Write the figure to ``path``; None (and nothing written) when no arm has finished."""
    lines: dict[str, list[ArmSeries]] = {}
    for run, label in zip(runs, folder_labels([(r.experiment, Path(r.folder)) for r in runs])):
        for arm in run.arms:
            if arm.status == Status.FINISHED:
                lines.setdefault(f"{label}: {arm.arm}", []).append(load_arm(Path(arm.folder), arm.seed))
    if not lines:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    epoch = next((s.samples_per_epoch for seeds in lines.values() for s in seeds if s.samples_per_epoch),
                 None)
    return figures.curves(f"{len(runs)} runs compared", lines, {}, path, samples_per_epoch=epoch)
