"""The measures a claim can name: what each measures, its unit (how a value reads) and what it takes;
lr_range's default threshold; and how an arm pattern (``lamb_lr*``) picks arms. Validation, the report
and its figures all read this table; lambexp.report.claims computes each measure by its name here."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass

from lambexp.base.divergence import DEFINITION

DEFAULT_THRESHOLD = 0.97  # final test accuracy at which an lr "trains", fixed before any run (docs/claims.md)


def as_percent(fraction: float) -> str:
    """A threshold as a person reads it: 0.97 → 97%, 0.975 → 97.5%."""
    return f"{100 * fraction:g}%"


def _decades(value: float) -> str:
    digits = f"{value:.2g}"
    return f"{digits} decade{'' if digits == '1' else 's'}"


UNITS: dict[str, Callable[[float], str]] = {  # unit → how a value of it reads
    "fraction": lambda v: f"{v:.2%}",  # 0.9812 → 98.12%
    "yes/no": lambda v: "yes" if v else "no",  # 1.0 or 0.0
    "decades": _decades,  # log10 of a ratio: 1 decade, 1.5 decades
    "number": lambda v: f"{v:.4g}",  # 4.53, 0.0312
    "count": lambda v: "not reached" if math.isinf(v) else f"{v:,.0f}",  # 1,234; inf: never got there
}


@dataclass(frozen=True)
class Measure:
    """One measure: a number computed from an arm's run files (or from a group of arms')."""

    description: str  # what it measures
    unit: str = "number"  # a key of UNITS
    takes_layer: bool = False  # `layer:` narrows it to one parameter tensor
    takes_window: bool = False  # `within_epochs:` narrows it to the first N epochs
    over_pattern: bool = False  # of the arms an `arm` pattern (with *) matches, and a `threshold`
    takes_target: bool = False  # `target:` the accuracy to reach

    @property
    def is_boolean(self) -> bool:
        """Judged with `equals: true|false`, and never averaged over seeds."""
        return self.unit == "yes/no"

    def format(self, value: float | None) -> str:
        """A value as a person reads it; n/a for None or NaN."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return UNITS[self.unit](value)


_OF_ONE_LAYER = "(all layers, or `layer`)"
MEASURES: dict[str, Measure] = {  # in the order error messages list them
    "final_accuracy": Measure("test accuracy after the last epoch, in [0, 1]", "fraction"),
    "best_accuracy": Measure("best test accuracy over the epochs, in [0, 1]", "fraction"),
    "final_val_accuracy": Measure("validation accuracy after the last epoch, in [0, 1] (`validation:`)",
                                  "fraction"),
    "best_val_accuracy": Measure("best validation accuracy over the evaluations, in [0, 1]", "fraction"),
    "steps_to_target": Measure(
        "optimizer steps until the validation accuracy (the test accuracy, where the arm holds out no"
        " validation images) first reaches `target`, read at each evaluation (after each epoch, and"
        " every `eval_interval` steps); infinite, shown as 'not reached', when it never does", "count",
        takes_target=True),
    "samples_to_target": Measure("training samples seen at that evaluation (steps_to_target × the batch"
                                 " size); 'not reached' when it never does", "count", takes_target=True),
    "final_loss": Measure("last logged training loss"),
    "min_train_loss": Measure("lowest logged training loss (optionally within the first `within_epochs`)",
                              takes_window=True),
    "lr_range": Measure(
        "decades of learning rate (log10 of the largest over the smallest lr) of the widest run of"
        " consecutive lrs whose arms matching `arm` (a pattern with *, e.g. lamb_lr*_wd0) all reach"
        f" `threshold` (default {as_percent(DEFAULT_THRESHOLD)}) final test accuracy (an lr in between"
        " that fails ends a run); 0 for a single lr, NaN for none", "decades", over_pattern=True),
    "diverged": Measure(f"as the trainer decided (lambexp.base.divergence): {DEFINITION}", "yes/no"),
    "r_max": Measure(f"largest trust ratio r over training {_OF_ONE_LAYER}", takes_layer=True),
    "r_median": Measure(f"median of r over training {_OF_ONE_LAYER}", takes_layer=True),
    "r_start_median": Measure(f"median of r across layers at the first log {_OF_ONE_LAYER}",
                              takes_layer=True),
    "r1_final_max": Measure(f"largest weight norm r1 at the last log {_OF_ONE_LAYER}", takes_layer=True),
    "r1_growth_max": Measure(f"largest growth of r1, last log / first log {_OF_ONE_LAYER}",
                             takes_layer=True),
}


def fmt(name: str, value: float | None) -> str:
    """A value of measure ``name`` as a person reads it: 98.12%, yes/no, 1.5 decades, 4.53, n/a."""
    return MEASURES[name].format(value)


def names_where(test: Callable[[Measure], bool]) -> str:
    """The names of the measures that pass ``test``, for messages: 'a', 'a or b'."""
    return " or ".join(name for name, m in MEASURES.items() if test(m))


def is_pattern(ref: str) -> bool:
    """Whether an arm reference stands for a group of arms (``lamb_lr*_wd0``) rather than one."""
    return "*" in ref


def match_arms(pattern: str, names: list) -> list[str]:
    """The arm names ``pattern`` stands for, in the order of ``names``: itself when it is one of
    them, or with ``*`` every name it matches (``lamb_lr*_wd0``: a group of swept arms)."""
    if not is_pattern(pattern):
        return [pattern] if pattern in names else []
    return [n for n in names if isinstance(n, str) and fnmatch.fnmatchcase(n, pattern)]
