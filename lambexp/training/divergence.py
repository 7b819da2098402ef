"""The trainer's decisions on divergence: what one check reads (``Reading``), which reason wins, and the
on-device first non-finite step. What "diverged" means, and the loss rule, are
``lambexp.base.divergence``'s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from lambexp.base.divergence import NONFINITE_LOSS, NONFINITE_PARAMETER, LossWatch

if TYPE_CHECKING:
    from torch import Tensor


class Reading(NamedTuple):
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
    def from_row(cls, values: Sequence[float]) -> Reading:
        """The host ``Reading`` of a row read back (``row(...).tolist()``)."""
        loss, first_bad, params_finite = values
        return cls(loss, int(first_bad), params_finite == 1)


def track_first_bad(first_bad: Tensor | None, loss: Tensor, step: int) -> Tensor:
    """The step of the first non-finite loss, or -1, given the one before (None at the start) and
    step ``step``'s ``loss``: kept on the device, without a host sync."""
    import torch

    bad = torch.where(torch.isfinite(loss), -1, step)
    return bad if first_bad is None else torch.where(first_bad >= 0, first_bad, bad)


def reason_at(reading: Reading, step: int, watch: LossWatch | None) -> tuple[str | None, int]:
    """Why the run diverged at this check of step ``step``, and the step that names; (None, step) if it
    did not. A non-finite loss wins, at its own step; then a non-finite parameter, now; then, at a log
    step (``watch`` given, and fed the loss), the loss rule."""
    if reading.first_bad >= 0:
        return NONFINITE_LOSS, reading.first_bad
    if not reading.params_finite:
        return NONFINITE_PARAMETER, step
    return (None if watch is None else watch.update(reading.loss)), step


class Record(Protocol):
    """The loop state's divergence fields, by the names checkpoints save (``LoopState`` has them)."""

    step: int  # optimizer steps taken
    first_loss: float | None  # LossWatch.first
    loss_fell: bool  # LossWatch.fell
    diverged_step: int | None  # the first divergence: its step …
    diverged_reason: str | None  # … and its reason


def decide(record: Record, reading: Reading, logged: bool) -> str | None:
    """Why the run diverged at this check (``reason_at``), or None; the first divergence is kept in
    ``record``, and at a log step (``logged``) the loss rule's state too."""
    watch = LossWatch(record.first_loss, record.loss_fell) if logged else None
    reason, step = reason_at(reading, record.step, watch)
    if watch is not None:
        record.first_loss, record.loss_fell = watch.first, watch.fell
    if reason is not None and record.diverged_step is None:
        record.diverged_step, record.diverged_reason = step, reason
    return reason
