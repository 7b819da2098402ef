"""How each measure of lambexp.base.measures is computed from an arm's run files (a table keyed by
its name), and each claim's verdict over seeds: REPRODUCED, NOT REPRODUCED, or MIXED (k of n)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lambexp.base.measures import MEASURES, match_arms
from lambexp.base.statuses import NO_DATA, NOT_REPRODUCED, REPRODUCED, mixed
from lambexp.config.expect import Expectation
from lambexp.report.series import ArmSeries


def _trust(s: ArmSeries, key: str, layer: str | None) -> np.ndarray:
    """(T, L) values of r, r1 or r2; one column when ``layer`` names a parameter."""
    table = getattr(s, key)
    if layer is None:
        return table
    if layer not in s.names:
        raise KeyError(f"no layer {layer!r} in arm {s.arm} (layers: {', '.join(s.names)})")
    return table[:, [s.names.index(layer)]]


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def _or_nan(values: np.ndarray, reduce) -> float:
    values = _finite(np.asarray(values, dtype=float).ravel())
    return float(reduce(values)) if len(values) else math.nan


def _r1_growth(r1: np.ndarray) -> float:
    if len(r1) == 0:
        return math.nan
    last = np.array([_or_nan(col, lambda v: v[-1]) for col in r1.T])  # last finite per layer
    with np.errstate(divide="ignore", invalid="ignore"):
        return _or_nan(last / r1[0], np.max)


def _losses(s: ArmSeries, within_epochs: float | None) -> np.ndarray:
    """The logged training losses, those at x < within_epochs epochs when given."""
    loss = s.train_loss if len(s.train_loss) else np.empty((0, 2))
    if within_epochs is not None:
        per_epoch = s.samples_per_epoch
        if per_epoch is None:
            return np.array([])
        loss = loss[loss[:, 0] < within_epochs * per_epoch]
    return loss[:, 1]


def _accuracy(s: ArmSeries) -> np.ndarray:
    return s.test_accuracy[:, 1] if len(s.test_accuracy) else np.array([])


def _to_target(s: ArmSeries, target: float, unit: str) -> float:
    """The ``unit`` ("step" or "samples") of the first evaluation whose validation accuracy (test
    accuracy, for an arm without a validation split) reaches ``target``; inf when none does."""
    history = s.summary.history
    on = "val/accuracy" if any("val/accuracy" in h for h in history) else "test/accuracy"
    return next((float(h[unit]) for h in history if h.get(on, -math.inf) >= target), math.inf)


def _or_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _last(values: np.ndarray) -> float:
    """The last value as logged (NaN too), or NaN when none was."""
    return float(values[-1]) if len(values) else math.nan


# How each measure of lambexp.base.measures is computed: of one arm (with the claim's `layer` and
# `within_epochs` where the measure takes them), or of a group of arms and a threshold (lr_range).
ON_ARM: dict[str, Callable[..., float]] = {
    "final_accuracy": lambda s: _last(_accuracy(s)),
    "best_accuracy": lambda s: _or_nan(_accuracy(s), np.max),
    "final_val_accuracy": lambda s: _or_none(s.summary.final_val_accuracy),
    "best_val_accuracy": lambda s: _or_none(s.summary.best_val_accuracy),
    "steps_to_target": lambda s, target: _to_target(s, target, "step"),
    "samples_to_target": lambda s, target: _to_target(s, target, "samples"),
    "final_loss": lambda s: _or_nan(_losses(s, None), lambda v: v[-1]),  # the last finite one
    "min_train_loss": lambda s, within_epochs: _or_nan(_losses(s, within_epochs), np.min),
    "diverged": lambda s: float(s.diverged),
    "r_max": lambda s, layer: _or_nan(_trust(s, "r", layer), np.max),
    "r_median": lambda s, layer: _or_nan(_trust(s, "r", layer), np.median),
    "r_start_median": lambda s, layer: _or_nan(_trust(s, "r", layer)[:1], np.median),
    "r1_final_max": lambda s, layer: _or_nan(_trust(s, "r1", layer)[-1:], np.max),
    "r1_growth_max": lambda s, layer: _r1_growth(_trust(s, "r1", layer)),
}


def measure(s: ArmSeries, name: str, layer: str | None = None,
            within_epochs: float | None = None, target: float | None = None) -> float:
    """The value of measure ``name`` (see lambexp.base.measures) on one arm; diverged is 1.0 or
    0.0. NaN when the run logged nothing to compute it from."""
    if name not in ON_ARM:
        raise ValueError(f"unknown measure {name!r}, or not one of a single arm")
    takes = MEASURES[name]
    given = {"layer": layer} if takes.takes_layer else {}
    if takes.takes_window:
        given["within_epochs"] = within_epochs
    if takes.takes_target:
        given["target"] = target
    return ON_ARM[name](s, **given)


@dataclass
class ClaimResult:
    expectation: Expectation
    seeds: list[int]
    values: list[float]  # the arm's measure, per seed
    references: list[float | None]  # what it was compared with, per seed (None: a boolean claim)
    holds: list[bool]
    also: dict[str, list[float]] = field(default_factory=dict)  # measures shown beside, per seed

    @property
    def holds_on_mean(self) -> bool:
        """The claim on the means over seeds (NaN anywhere makes the mean NaN: not held)."""
        mean = statistics.fmean(self.values)
        refs = [r for r in self.references if r is not None]
        return _holds(self.expectation, mean, statistics.fmean(refs) if refs else None)

    @property
    def verdict(self) -> str:
        k, n = sum(self.holds), len(self.holds)
        if n == 0:
            return NO_DATA
        if self.expectation.judge == "mean":
            return REPRODUCED if self.holds_on_mean else NOT_REPRODUCED
        if k == n:
            return REPRODUCED
        return NOT_REPRODUCED if k == 0 else mixed(k, n)


def _holds(e: Expectation, value: float, reference: float | None) -> bool:
    if e.comparator == "equals":
        return value == float(e.equals)
    if e.comparator == "between":
        return e.between[0] <= value <= e.between[1]
    if e.comparator == "above":
        return value > reference
    return value < reference


def _arms_named(ref) -> list[str]:
    """The arm names an `arm`/`above`/`below` value refers to (none for a number)."""
    if isinstance(ref, str):
        return [ref]
    return list(ref) if isinstance(ref, tuple | list) else []


def _value(ref, arms: dict[str, ArmSeries], e: Expectation) -> float:
    """An arm's measure, or for a pair [a, b] a's measure minus b's (or over b's: ``e.pair``)."""
    return _value_of(ref, arms, e, e.measure)


def decades(lrs: list[float]) -> float:
    """log10 of the largest over the smallest: 0 for one lr, NaN for none."""
    return math.log10(max(lrs) / min(lrs)) if lrs else math.nan


def widest_run(lrs: list[float], passing: set[float]) -> list[float]:
    """The longest run of consecutive learning rates of ``lrs`` (the grid, in any order) that are
    all in ``passing``, by decades covered: a rate in between that fails ends a run, since a band
    with a hole in it is not a range the optimizer works over. Empty when none passes."""
    best: list[float] = []
    run: list[float] = []
    for lr in sorted(set(lrs)):
        run = run + [lr] if lr in passing else []
        if run and (not best or decades(run) > decades(best)):
            best = run
    return best


def lr_range(group: list[ArmSeries], threshold: float) -> float:
    """Decades of the widest run of consecutive lrs whose arms reached ``threshold`` final test
    accuracy (``widest_run``, ``decades``): NaN when none did."""
    lrs = [s.lr for s in group if s.lr]
    passing = {s.lr for s in group if s.lr and measure(s, "final_accuracy") >= threshold}
    return decades(widest_run(lrs, passing))


ON_GROUP: dict[str, Callable[[list[ArmSeries], float], float]] = {  # of the arms a pattern matches
    "lr_range": lr_range,
}


def _value_of(ref, arms: dict[str, ArmSeries], e: Expectation, name: str) -> float:
    if isinstance(ref, str) and MEASURES[name].over_pattern:
        return ON_GROUP[name]([arms[n] for n in match_arms(ref, list(arms))], e.threshold)
    if isinstance(ref, str):
        return measure(arms[ref], name, e.layer, e.within_epochs, e.target)
    a, b = (_value_of(x, arms, e, name) for x in ref)
    if e.pair == "difference":
        return a - b
    return math.nan if b == 0 or math.isinf(b) and math.isinf(a) else a / b


def judge(e: Expectation, runs: dict[int, dict[str, ArmSeries]]) -> ClaimResult:
    """Check ``e`` on each seed that has every arm it needs. ``runs``: seed → arm name → series."""
    refs = _arms_named(e.arm) + (_arms_named(e.reference) if e.comparator != "between" else [])
    every = sorted({name for arms in runs.values() for name in arms})
    needed = [n for ref in refs for n in match_arms(ref, every) or [ref]]  # [ref]: in no seed, no data
    result = ClaimResult(e, [], [], [], [])
    for seed, arms in sorted(runs.items()):
        if not all(name in arms for name in needed):
            continue
        value = _value(e.arm, arms, e)
        if e.comparator in ("above", "below"):
            is_number = isinstance(e.reference, float | int)
            reference = float(e.reference) if is_number else _value(e.reference, arms, e)
        else:
            reference = None
        result.seeds.append(seed)
        result.values.append(value)
        result.references.append(reference)
        result.holds.append(bool(_holds(e, value, reference)))  # NaN compares False: not held
        for name in e.also:
            result.also.setdefault(name, []).append(_value_of(e.arm, arms, e, name))
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0
