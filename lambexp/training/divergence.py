"""What "diverged" means (``DEFINITION``; docs/claims.md) and every decision on it: a check's
readings (``Check``), which reason wins, the on-device first non-finite step and the loss rule
(``LossWatch``), so that the trainer, summary.json and the report cannot disagree. Torch-free at
import: the report reads it too."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from torch import Tensor

# The definition in one sentence, for every place that tells a person (config help, claims, report).
DEFINITION = ("the loss or a parameter became non-finite, or the logged training loss rose above its"
              " first value after falling below half of it")
NONFINITE_LOSS = "non-finite loss"
NONFINITE_PARAMETER = "non-finite parameter"


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


class Check(NamedTuple):
    """What one check reads: on the device (0-d tensors) until ``row`` and ``from_row`` bring it to
    the host in one sync. The row is these fields in this order; ``World.agree`` reduces it over ranks."""

    loss: float  # the batch's training loss
    first_bad: int  # the step of the first non-finite loss so far, or -1
    params_finite: bool  # every parameter is finite

    @property
    def finite(self) -> bool:
        """No non-finite loss so far and no non-finite parameter (host values only)."""
        return self.first_bad < 0 and self.params_finite

    def row(self) -> Tensor:
        """(3,) float64: the fields, each a tensor on the device, in order; no host sync."""
        import torch

        return torch.stack([value.double() for value in self])

    @classmethod
    def from_row(cls, values: Sequence[float]) -> Check:
        """The host ``Check`` of a row read back (``row(...).tolist()``)."""
        loss, first_bad, params_finite = values
        return cls(loss, int(first_bad), params_finite == 1)


def track_first_bad(first_bad: Tensor | None, loss: Tensor, step: int) -> Tensor:
    """The step of the first non-finite loss, or -1, given the one before (None at the start) and
    step ``step``'s ``loss``: kept on the device, without a host sync."""
    import torch

    bad = torch.where(torch.isfinite(loss), -1, step)
    return bad if first_bad is None else torch.where(first_bad >= 0, first_bad, bad)


def verdict(check: Check, step: int, watch: LossWatch | None) -> tuple[str | None, int]:
    """Why the run diverged at this check of step ``step``, and the step that names; (None, step) if it
    did not. A non-finite loss wins, at its own step; then a non-finite parameter, now; then, at a log
    step (``watch`` given, and fed the loss), the loss rule."""
    if check.first_bad >= 0:
        return NONFINITE_LOSS, check.first_bad
    if not check.params_finite:
        return NONFINITE_PARAMETER, step
    return (None if watch is None else watch.update(check.loss)), step


class Record(Protocol):
    """The loop state's divergence fields, by the names checkpoints save (``LoopState`` has them)."""

    step: int  # optimizer steps taken
    first_loss: float | None  # LossWatch.first
    loss_fell: bool  # LossWatch.fell
    diverged_step: int | None  # the first divergence: its step …
    diverged_reason: str | None  # … and its reason


def decide(record: Record, check: Check, logged: bool) -> str | None:
    """Why the run diverged at this check (``verdict``), or None; the first divergence is kept in
    ``record``, and at a log step (``logged``) the loss rule's state too."""
    watch = LossWatch(record.first_loss, record.loss_fell) if logged else None
    reason, step = verdict(check, record.step, watch)
    if watch is not None:
        record.first_loss, record.loss_fell = watch.first, watch.fell
    if reason is not None and record.diverged_step is None:
        record.diverged_step, record.diverged_reason = step, reason
    return reason
