"""Optimizer names as configs spell them → a constructor with plain arguments; one table, no flag matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lambexp.optim.defaults import TORCH_ADAM_EPS
from lambexp.optim.lamb import Lamb
from lambexp.optim.lars import Lars


def _lamb(params, *, adam: bool = False, **h) -> Lamb:
    return Lamb(params, lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                rule=h["rule"], clamp=h["clamp"], adam=adam, fused=h.get("fused", False),
                bias_correction=h.get("bias_correction"), trust_clip=h.get("trust_clip"),
                always_adapt=h.get("always_adapt"), grad_clip_norm=h.get("grad_clip_norm", "rule"))


def _lars(params, *, sgd: bool = False, **h) -> Lars:
    return Lars(params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                trust_coefficient=h["trust_coefficient"], sgd=sgd)


def _torch_adam(params, **h) -> torch.optim.Adam:
    eps = TORCH_ADAM_EPS if h["eps"] is None else h["eps"]
    return torch.optim.Adam(params, lr=h["lr"], betas=h["betas"], eps=eps,
                            weight_decay=h["weight_decay"])


OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], str]] = {
    "lamb": (_lamb, "LAMB, the blog's or the paper's rule (docs/rules.md)"),
    "adam": (lambda params, **h: _lamb(params, adam=True, **h),
             "LAMB with r computed and logged but not applied: the blog's Adam"),
    "lars": (_lars, "LARS: momentum SGD with the layer-wise trust ratio"),
    "sgd": (lambda params, **h: _lars(params, sgd=True, **h),
            "momentum SGD with L2 decay, LARS's r logged but not applied"),
    "torch_adam": (_torch_adam, "torch.optim.Adam itself (no trust statistics)"),
}


def build_optimizer(name: str, params, **hyper) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``.

    ``hyper`` holds lr, betas, eps (None: the rule's default), weight_decay, rule,
    bias_correction (the paper rule's switch; default True), clamp,
    momentum and trust_coefficient; each optimizer takes the ones it uses.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (one of: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name][0](params, **hyper)
