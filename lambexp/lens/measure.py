"""What the lens measures of one optimizer step, per parameter tensor, from the weights before and
after it: the post's r = r1 / r2 with r1 = ‖w‖ and r2 = ‖Δw‖ / lr, and the relative step ‖Δw‖ / ‖w‖
(cs231n's update-to-weight ratio). Pure torch; the numbers stay on the weights' device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lambexp.training.sinks import LENS_KEYS, TRUST_KEYS

KEYS = TRUST_KEYS + LENS_KEYS  # the rows of ``step_stats``'s table, in order: r, r1, r2, relative_step


@torch.no_grad()
def take_norms(before: list[Tensor], after: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(‖w_before‖, ‖w_before − w_after‖) of each pair, as two float64 vectors on the first
    tensor's device (half-precision weights are summed in float32). ``before`` is overwritten with
    the difference, so the lens never holds more than its one copy of the weights."""
    r1 = _norms(before)
    for b, a in zip(before, after):
        b.sub_(a)  # b ← w_before − w_after
    return r1, _norms(before)


def _norms(tensors: list[Tensor]) -> Tensor:
    device = tensors[0].device
    return torch.stack([torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))
                        .to(device, torch.float64) for t in tensors])


def step_stats(r1: Tensor, step: Tensor, lr: Tensor) -> Tensor:
    """The (4, n) table of ``KEYS`` for n tensors, from their weight norms ``r1`` = ‖w‖ before the
    step, their step norms ``step`` = ‖Δw‖ and the learning rate ``lr`` each was stepped with.

        r2 = ‖Δw‖ / lr                      the update per unit of learning rate; 0 where lr = 0
        r  = r1 / r2                        1 where r1 or r2 is 0
        relative_step = ‖Δw‖ / ‖w‖          0 where neither moved nor weighed; inf where w = 0 moved

    r is the trust ratio a LAMB with an L2 norm and no clamp would have given this update."""
    lr = lr.to(r1.device, r1.dtype)
    r2 = torch.where(lr > 0, step / torch.where(lr > 0, lr, 1.0), 0.0)
    r = torch.where((r1 > 0) & (r2 > 0), r1 / torch.where(r2 > 0, r2, 1.0), 1.0)
    relative = torch.where(r1 > 0, step / torch.where(r1 > 0, r1, 1.0),
                           torch.where(step > 0, float("inf"), 0.0))
    return torch.stack([r, r1, r2, relative])
