"""What "diverged" means, in one place: ``DEFINITION`` (the sentence every place that tells a person
uses: config help, docs/claims.md, the report), the reasons, and the loss rule (``LossWatch``,
``first_divergence``), so that the trainer, summary.json and the report cannot disagree. Torch-free:
the trainer's on-device checks are ``lambexp.training.divergence``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# The definition in one sentence, for every place that tells a person (config help, claims, report).
DEFINITION = ("the loss or a parameter became non-finite, or the logged training loss rose above its"
              " first value after falling below half of it")
NONFINITE_LOSS = "non-finite loss"
NONFINITE_PARAMETER = "non-finite parameter"


def diverged_text(step: int | None, reason: str | None) -> str:
    """How a divergence is said, the same wherever it is: "diverged at step 36 (loss rose to …)"."""
    return "diverged" + (f" at step {step}" if step is not None else "") + (f" ({reason})" if reason else "")


def loss_rise_reason(first: float, loss: float) -> str:
    return (f"loss rose to {loss:.4g}, above its first logged value {first:.4g},"
            " after falling below half of it")


@dataclass
class LossWatch:
    """Fed every logged training loss in order; says at which one the run diverged. The loss rule is
    the post's "it diverges" for a run that stays finite: it learned, then lost all it learned and more.

    State is two plain values, so it checkpoints with the loop and a resumed run decides
    exactly as an uninterrupted one."""

    first: float | None = None  # the first logged loss
    fell: bool = False  # a logged loss has been below first / 2

    def update(self, loss: float) -> str | None:
        """The reason this loss makes the run diverged, or None."""
        if not math.isfinite(loss):
            return NONFINITE_LOSS
        if self.first is None:
            self.first = loss
            return None
        if self.fell and loss > self.first:
            return loss_rise_reason(self.first, loss)
        self.fell = self.fell or loss < self.first / 2
        return None


def first_divergence(losses: Iterable[float]) -> int | None:
    """Index of the first logged loss at which a run diverged by the loss rule, or None."""
    watch = LossWatch()
    for i, loss in enumerate(losses):
        if watch.update(loss) is not None:
            return i
    return None
