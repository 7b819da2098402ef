"""``Lars``: layer-wise adaptive rate scaling over momentum SGD, with the same trust statistics as Lamb."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from lambexp.optim import rules
from lambexp.optim.fast import foreach
from lambexp.optim.fast.chunks import in_cache_chunks
from lambexp.optim.trust import TrustRatioOptimizer, check_range


class Lars(TrustRatioOptimizer):
    """LARS (You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks", 2017).

    Per tensor: r1 = ‖w‖, r2 = ‖g‖ + λ‖w‖, r = η·r1/r2 (1 when a norm is 0);
    buf ← μ·buf + lr·r·(g + λ·w); w ← w − buf.

    Args:
        params: parameters, ``named_parameters()``, or param groups (dicts).
        lr: global learning rate (default 0.1).
        momentum: μ (default 0.9).
        weight_decay: λ, added to the gradient and to the ratio's denominator (default 0).
        trust_coefficient: η (default 0.001, as in the paper).
        sgd: record r, r1, r2 but update with r = 1: momentum SGD with L2 decay.
        foreach: ``True``/``None`` (default) multi-tensor step; ``False`` the reference path.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, *, sgd: bool = False,
                 foreach: bool | None = None):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, sgd=sgd, foreach=foreach)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_range("lr", group["lr"], group["lr"] >= 0, ">= 0")
        check_range("momentum", group["momentum"], 0 <= group["momentum"] < 1, "in [0, 1)")
        check_range("weight_decay", group["weight_decay"], group["weight_decay"] >= 0, ">= 0")
        eta = group["trust_coefficient"]
        check_range("trust_coefficient", eta, eta > 0, "> 0")

    def _step_tensors(self, group: dict, w: list[Tensor]):
        for p in w:
            if not self.state[p]:
                self.state[p]["buf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["foreach"] is False:
            return self._reference_step(group, w)
        return in_cache_chunks(partial(self._foreach_step, group), w)

    def _reference_step(self, group: dict, w: list[Tensor]):
        out = []
        for p in w:
            state = self.state[p]
            new = rules.lars(p, p.grad, state["buf"], lr=group["lr"], momentum=group["momentum"],
                             weight_decay=group["weight_decay"],
                             trust_coefficient=group["trust_coefficient"], sgd=group["sgd"])
            p.copy_(new.w)
            state["buf"] = new.buf
            out.append((new.r, new.r1, new.r2))
        return [torch.stack(col) for col in zip(*out)]

    def _foreach_step(self, group: dict, w: list[Tensor]):
        """``fast.foreach.lars_step`` on one cache-sized run of ``w``."""
        return foreach.lars_step(group, w, [p.grad for p in w], [self.state[p]["buf"] for p in w])
