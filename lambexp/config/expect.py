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
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

MEASURES = {  # name → what it is (the report computes each from the run files)
    "final_accuracy": "test accuracy after the last epoch, in [0, 1]",
    "best_accuracy": "best test accuracy over the epochs, in [0, 1]",
    "final_loss": "last logged training loss",
    "min_train_loss": "lowest logged training loss (optionally within the first `within_epochs`)",
    "lr_range": ("decades of learning rate (log10 of the largest over the smallest lr) of the widest"
                 " run of consecutive lrs whose arms matching `arm` (a pattern with *, e.g."
                 " lamb_lr*_wd0) all reach `threshold` final test accuracy (an lr in between that"
                 " fails ends a run); 0 for a single lr, NaN for none"),
    "diverged": ("as the trainer decided (lambexp.training.divergence): loss or a parameter"
                 " non-finite, or the loss rose above its first logged value after falling below half"
                 " of it"),
    "r_max": "largest trust ratio r over training (all layers, or `layer`)",
    "r_median": "median of r over training (all layers, or `layer`)",
    "r_start_median": "median of r across layers at the first log",
    "r1_final_max": "largest weight norm r1 at the last log (all layers, or `layer`)",
    "r1_growth_max": "largest growth of r1, last log / first log (all layers, or `layer`)",
}
Measure = Literal[tuple(MEASURES)]  # type: ignore[valid-type]
Number = Annotated[float, Field(allow_inf_nan=False)]
Pair = tuple[str, str]  # [a, b]: arm a's measure minus arm b's
COMPARATORS = ("above", "below", "equals", "between")


def _names(ref) -> list[str]:
    return [ref] if isinstance(ref, str) else list(ref)


class Expectation(BaseModel):
    """One claim: `arm`'s `measure` is above / below / equals / between something."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    claim: str = Field(description="the claim in words, as the report prints it")
    quote: str | None = Field(None, description="the source's own sentence that the claim tests")
    source: str = Field("the post", description=(
        "where the quote comes from, e.g. 'pytorch-lamb README, commit 207f672'"))
    arm: str | Pair = Field(description="the arm measured, or [a, b]: a's measure minus b's")
    measure: Measure = Field(description="what is measured: " + "; ".join(MEASURES))
    layer: str | None = Field(None, description="a parameter name (e.g. fc1.weight); r/r1 only")
    within_epochs: Annotated[float, Field(gt=0)] | None = Field(None, description=(
        "min_train_loss only: the losses logged in the first N epochs"))
    threshold: Annotated[float, Field(gt=0, le=1)] = Field(0.97, description=(
        "lr_range only: the final test accuracy an lr must reach to count"))
    judge: Literal["each_seed", "mean"] = Field("each_seed", description=(
        "each_seed: the claim is checked on every seed and reported k of n; mean: once, on the mean"
        " over seeds of the measure and of what it is compared with"))
    also: tuple[Measure, ...] = Field((), description=(
        "measures shown beside the value in the report, not judged (e.g. r_max beside r_median)"))
    above: Number | str | Pair | None = Field(None, description=(
        "a number, an arm's same measure, or [a, b]: a's minus b's"))
    below: Number | str | Pair | None = Field(None, description=(
        "a number, an arm's same measure, or [a, b]: a's minus b's"))
    equals: StrictBool | None = Field(None, description="for diverged: true or false")
    between: tuple[Number, Number] | None = Field(None, description="[low, high], inclusive")

    @model_validator(mode="after")
    def _one_comparator(self) -> Expectation:
        given = [c for c in COMPARATORS if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(COMPARATORS)}"
                             f" (got {', '.join(given) or 'none'})")
        if (self.measure == "diverged") != (self.equals is not None):
            raise ValueError("measure diverged takes `equals: true|false`; other measures take"
                             " above, below or between")
        if self.judge == "mean" and self.measure == "diverged":
            raise ValueError("judge: mean needs a number to average; diverged is yes or no per seed")
        if (self.measure == "lr_range") != any("*" in a for a in _names(self.arm)):
            raise ValueError("measure lr_range takes a pattern of arms (with *), e.g."
                             " arm: lamb_lr*_wd0; other measures take arm names")
        if self.within_epochs is not None and self.measure != "min_train_loss":
            raise ValueError("within_epochs applies to measure min_train_loss only")
        if self.between is not None and not self.between[0] <= self.between[1]:
            raise ValueError(f"between: low must be <= high (got {list(self.between)})")
        return self

    @property
    def comparator(self) -> str:
        return next(c for c in COMPARATORS if getattr(self, c) is not None)

    @property
    def reference(self):
        return getattr(self, self.comparator)
