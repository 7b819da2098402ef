"""The seed: pytorch-lamb's per-tensor Lamb in its two 2019 states, kept faithful as the reference the
E-configs are tested against (tests/test_optim_2019.py) and as the benchmarks' baseline, host syncs
(``r1 == 0``, ``min(r1/r2, 10)``, ``float(r)``) included. Written from what each version computed,
in its order of operations; the deprecated ``add_(scalar, tensor)`` calls of 2019 are spelled with
``alpha=`` / ``value=``, which computes the same.

- ``SeedLamb``: May 2019, the blog's runs (E1-E5): L2 decay in the gradient, bias correction folded
  into the step size, RMS norms, r clipped at 10, eps 1e-8; ``adam=True`` logs r but applies 1.
- ``SeedLambJune2019``: June 2019 (commit 207f672, the README's lr 0.02 run, E6): the paper rule
  without bias correction, eps 1e-6, decoupled decay added to the Adam step, ‖w‖ clamped at 10, no
  clip of the ratio and no guard for a zero norm; ``adam=True`` applies 1.
"""

import math

import torch
from torch.optim import Optimizer


class _PerTensor2019(Optimizer):
    """What both versions share: the arguments, the per-tensor loop, the state; ``update`` is the rule."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, adam=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.adam = adam
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                self.update(p, p.grad, state, group)
        return loss


class SeedLamb(_PerTensor2019):
    def update(self, p, grad, state, group):
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        if group["weight_decay"] != 0:
            grad.add_(p, alpha=group["weight_decay"])
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
        adam_step = exp_avg / denom
        r1 = p.pow(2).mean().sqrt()
        r2 = adam_step.pow(2).mean().sqrt()
        r = 1 if r1 == 0 or r2 == 0 else min(r1 / r2, 10)
        state["r1"], state["r2"], state["r"] = r1, r2, r
        if self.adam:
            r = 1
        p.add_(adam_step, alpha=-step_size * float(r))


class SeedLambJune2019(_PerTensor2019):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0, adam=False):
        super().__init__(params, lr, betas, eps, weight_decay, adam)

    def update(self, p, grad, state, group):
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = group["lr"]  # no bias correction
        weight_norm = p.pow(2).sum().sqrt().clamp(0, 10)
        adam_step = exp_avg / exp_avg_sq.sqrt().add(group["eps"])
        if group["weight_decay"] != 0:
            adam_step.add_(p, alpha=group["weight_decay"])
        adam_norm = adam_step.pow(2).sum().sqrt()
        trust_ratio = weight_norm / adam_norm
        state["weight_norm"], state["adam_norm"], state["trust_ratio"] = weight_norm, adam_norm, trust_ratio
        if self.adam:
            trust_ratio = 1
        p.add_(adam_step, alpha=-step_size * float(trust_ratio))
