"""The variants × settings view of an experiment that runs several LAMB rules (configs/beyond/
lamb_variants.yaml): one row per variant, one column per (lr, weight decay), each cell the seeds'
final test accuracy, how many diverged, and r's max and median. The report shows it as a table
and as a figure (``figures.variant_grid``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lambexp.base.variants import uses_lamb_rule
from lambexp.config.sweep import value_text
from lambexp.report.claims import mean_std, measure
from lambexp.report.collect import ExperimentRuns

MIN_RULES = 3  # an experiment is a comparison of variants when its LAMB arms use this many rules


@dataclass(frozen=True)
class Cell:
    """One variant at one setting, over its finished seeds."""

    accuracies: tuple[float, ...]  # final test accuracy of each seed, in [0, 1]
    diverged: int  # seeds that diverged
    r_max: float  # mean over seeds of the largest r over training and layers
    r_median: float  # mean over seeds of the median r
    stopped: int = 0  # seeds that diverged and stopped there: their "final" accuracy is at the stop

    @property
    def seeds(self) -> int:
        return len(self.accuracies)

    @property
    def accuracy(self) -> tuple[float, float]:
        """Mean and standard deviation of the final test accuracy over the seeds."""
        return mean_std(list(self.accuracies))


@dataclass(frozen=True)
class Grid:
    rows: tuple[str, ...]  # variants: the arm names without their "_lr…_wd…" part, in config order
    columns: tuple[tuple[float, float], ...]  # (lr, weight decay), ascending
    cells: dict[tuple[str, tuple[float, float]], Cell]  # finished cells only

    @staticmethod
    def column_text(column: tuple[float, float]) -> str:
        return f"lr {column[0]:g}, wd {column[1]:g}"


def variant_grid(runs: ExperimentRuns) -> Grid | None:
    """The grid of ``runs``, or None when it is not a comparison of variants: fewer than MIN_RULES
    rules among its LAMB arms, two arms in one cell (they differ in something else too), or lrs set per
    arm by tuning (``ExperimentRuns.lr_per_arm``)."""
    arms = [a for a in runs.experiment.arms if uses_lamb_rule(a.optimizer)]
    if len({a.rule for a in arms}) < MIN_RULES or runs.lr_per_arm:
        return None
    rows: dict[str, None] = {}
    place: dict[tuple[str, tuple[float, float]], str] = {}
    for arm in arms:
        column = (arm.lr, arm.weight_decay)
        row = variant_name(arm.name, *column)
        if (row, column) in place:
            return None
        rows[row] = None
        place[row, column] = arm.name
    cells = {}
    for key, name in place.items():
        series = runs.arm_runs(name)
        if series:
            cells[key] = Cell(tuple(s.summary.final_test_accuracy for s in series),
                              sum(s.diverged for s in series),
                              *(mean_std([measure(s, m) for s in series])[0] for m in ("r_max", "r_median")),
                              stopped=sum(stopped_early(s) for s in series))
    columns = tuple(sorted({column for _, column in place}))
    return Grid(tuple(rows), columns, cells)


def variant_name(arm: str, lr: float, weight_decay: float) -> str:
    """``blog_lr0.1_wd0`` → ``blog``: the name a sweep over lr and weight decay gave the arm, less
    the sweep's part (``config.sweep``); any other name is its own variant."""
    lr_part, wd_part = f"_lr{value_text(lr)}", f"_wd{value_text(weight_decay)}"
    for suffix in (lr_part + wd_part, wd_part + lr_part, lr_part, wd_part):  # either sweep order
        if arm.endswith(suffix) and len(arm) > len(suffix):
            return arm[: -len(suffix)]
    return arm


def stopped_early(s) -> bool:
    """The arm diverged and stopped before its last step (``on_divergence: stop``): its last
    evaluation, the summary's "final" accuracy, is of the weights at the stop."""
    return s.diverged and s.summary.settings is not None and \
        s.summary.epochs_done < s.summary.settings.get("epochs", s.summary.epochs_done)


def cell_text(cell: Cell | None) -> str:
    """"98.91% ± 0.05%", with "· k of n diverged" when any did, and "(m stopped: accuracy at the
    stop)" when their last evaluation came before the budget's end; "not tested" when no seed
    reached an evaluation (each diverged, and stopped, within its first epoch); empty when not
    finished."""
    if cell is None:
        return ""
    mean, std = cell.accuracy
    text = f"{mean:.2%} ± {std:.2%}" if math.isfinite(mean) else "not tested"
    if cell.diverged:
        text += f" · {cell.diverged} of {cell.seeds} diverged"
    if cell.stopped and math.isfinite(mean):
        text += f" ({cell.stopped} stopped: accuracy at the stop)"
    return text


def table(grid: Grid) -> tuple[list[str], list[list[str]]]:
    """The grid as a table: header and rows, one per variant."""
    header = ["variant", *(Grid.column_text(c) for c in grid.columns)]
    return header, [[row, *(cell_text(grid.cells.get((row, c))) for c in grid.columns)]
                    for row in grid.rows]
