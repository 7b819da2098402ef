"""Expectations: the blog's claims stated as data beside the arms, checked by the report.

Each is one comparison of a measured quantity of one arm (optionally one layer) with a number,
a boolean, or the same quantity of another arm:

    expect:
      - claim: LAMB reaches the better final test accuracy
        arm: lamb
        measure: final_accuracy
        above: adam              # an arm name (same measure there) or a number
      - claim: at lr 0.1 LAMB diverges
        arm: lamb_lr0.1
        measure: diverged
        equals: true
      - claim: Adam loses more accuracy from batch 512 to 16384 than LAMB
        arm: [adam_b16384, adam_b512]      # a pair: the first arm's measure minus the second's
        measure: final_accuracy
        below: [lamb_b16384, lamb_b512]
      - claim: at lr 0.1 LAMB converges almost at once
        quote: "it converges almost instantly during the warmup"   # the words it tests
        arm: lamb_lr0.1
        measure: min_train_loss
        within_epochs: 1          # only the losses logged in the first epoch
        below: 0.5
      - claim: with weight decay at lr 0.1 r stays below 1
        arm: lamb_wd0.01
        measure: r_median
        also: [r_max]             # shown beside the value, not judged
        below: 1.0

What each measure is, its unit and what it takes (layer, within_epochs, a pattern of arms) are
lambexp.base.measures'; this module checks that a claim gives its measure what it takes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from lambexp.base.measures import DEFAULT_THRESHOLD, MEASURES, as_percent, is_pattern, names_where

MeasureName = Literal[tuple(MEASURES)]  # type: ignore[valid-type]
Number = Annotated[float, Field(allow_inf_nan=False)]
Pair = tuple[str, str]  # [a, b]: arm a's measure minus arm b's
COMPARATORS = ("above", "below", "equals", "between")


class Expectation(BaseModel):
    """One claim: `arm`'s `measure` is above / below / equals / between something."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    claim: str = Field(description="the claim in words, as the report prints it")
    quote: str | None = Field(None, description="the source's own sentence that the claim tests")
    source: str = Field("the post", description=(
        "where the quote comes from, e.g. 'pytorch-lamb README, commit 207f672'"))
    arm: str | Pair = Field(description=(
        "the arm measured, or [a, b]: a's measure minus b's (or over b's: `pair`)"))
    pair: Literal["difference", "ratio"] = Field("difference", description=(
        "how a pair [a, b] combines its two measures: a − b, or a / b (e.g. steps_to_target at batch"
        " 256 over batch 1024: how many times fewer steps)"))
    measure: MeasureName = Field(description="what is measured: " + "; ".join(MEASURES))
    layer: str | None = Field(None, description=(
        f"a parameter name (e.g. fc1.weight), for {names_where(lambda x: x.takes_layer)}"))
    within_epochs: Annotated[float, Field(gt=0)] | None = Field(None, description=(
        f"{names_where(lambda x: x.takes_window)} only: the losses logged in the first N epochs"))
    threshold: Annotated[float, Field(gt=0, le=1)] = Field(DEFAULT_THRESHOLD, description=(
        f"{names_where(lambda x: x.over_pattern)} only: the final test accuracy an lr must reach to count"
        f" (default {as_percent(DEFAULT_THRESHOLD)})"))
    target: Annotated[float, Field(gt=0, le=1)] | None = Field(None, description=(
        f"{names_where(lambda x: x.takes_target)} only: the accuracy to reach, e.g. 0.98"))
    judge: Literal["each_seed", "mean"] = Field("each_seed", description=(
        "each_seed: the claim is checked on every seed and reported k of n; mean: once, on the mean"
        " over seeds of the measure and of what it is compared with"))
    also: tuple[MeasureName, ...] = Field((), description=(
        "measures shown beside the value in the report, not judged (e.g. r_max beside r_median)"))
    above: Number | str | Pair | None = Field(None, description=(
        "a number, an arm's same measure, or [a, b]: a's minus b's"))
    below: Number | str | Pair | None = Field(None, description=(
        "a number, an arm's same measure, or [a, b]: a's minus b's"))
    equals: StrictBool | None = Field(None, description=(
        f"for {names_where(lambda x: x.is_boolean)}: true or false"))
    between: tuple[Number, Number] | None = Field(None, description="[low, high], inclusive")

    @model_validator(mode="after")
    def _one_comparator(self) -> Expectation:
        given = [c for c in COMPARATORS if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(COMPARATORS)}"
                             f" (got {', '.join(given) or 'none'})")
        wrong = self._misfit()
        if wrong:
            raise ValueError(wrong)
        if self.between is not None and not self.between[0] <= self.between[1]:
            raise ValueError(f"between: low must be <= high (got {list(self.between)})")
        return self

    def _misfit(self) -> str | None:
        """What the claim gives that its measure does not take (lambexp.base.measures), or None."""
        m = MEASURES[self.measure]
        if m.is_boolean != (self.equals is not None):
            return (f"measure {names_where(lambda x: x.is_boolean)} takes `equals: true|false`; other"
                    " measures take above, below or between")
        if self.judge == "mean" and m.is_boolean:
            return f"judge: mean needs a number to average; {self.measure} is yes or no per seed"
        if any(is_pattern(name) != m.over_pattern for name in self._arm_references()):
            return (f"measure {names_where(lambda x: x.over_pattern)} takes a pattern of arms (with *),"
                    " e.g. arm: lamb_lr*_wd0; other measures take arm names")
        unlike = [name for name in self.also if MEASURES[name].over_pattern != m.over_pattern]
        if unlike:
            return (f"also: {', '.join(unlike)} cannot be shown beside {self.measure}: one measures a"
                    " pattern of arms, the other one arm")
        if m.takes_target != (self.target is not None):
            return (f"measure {names_where(lambda x: x.takes_target)} takes `target:` (an accuracy to"
                    " reach, e.g. 0.98); other measures do not")
        untargeted = [name for name in self.also if MEASURES[name].takes_target and self.target is None]
        if untargeted:
            return f"also: {', '.join(untargeted)} needs `target:` (an accuracy to reach)"
        if self.pair == "ratio" and isinstance(self.arm, str):
            return "pair: ratio combines a pair of arms, [a, b]; arm names one"
        if self.within_epochs is not None and not m.takes_window:
            return f"within_epochs applies to measure {names_where(lambda x: x.takes_window)} only"
        return None

    def _arm_references(self) -> list[str]:
        """The arm names and patterns in `arm`, `above` and `below`."""
        refs = [ref for ref in (self.arm, self.above, self.below) if isinstance(ref, str | tuple)]
        return [name for ref in refs for name in ([ref] if isinstance(ref, str) else ref)]

    @property
    def comparator(self) -> str:
        return next(c for c in COMPARATORS if getattr(self, c) is not None)

    @property
    def reference(self):
        return getattr(self, self.comparator)
