"""Optimizer names as configs spell them → a constructor with plain arguments; one table, no flag matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lambexp.base.variants import TORCH_ADAM_EPS, VARIANTS, pattern_matches
from lambexp.optim.lamb import Lamb
from lambexp.optim.lars import Lars


def excluded(name: str, param: torch.Tensor, patterns: tuple[str, ...]) -> bool:
    """Whether a tensor is kept out by ``patterns``: a regular expression found in its name (as
    TF-Addons matches), or ``ndim<=1`` for every bias and norm weight."""
    return any(pattern_matches(p, name, param.ndim) for p in patterns)


def exclusion_groups(named_params, weight_decay: float, no_decay: tuple[str, ...],
                     no_trust: tuple[str, ...]) -> list[dict]:
    """Named parameters as param groups: one per (decay, trust ratio) pair that occurs, in the order
    the tensors come; the excluded ones with weight_decay 0 or trust_ratio False."""
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in named_params:
        key = (not excluded(name, p, no_decay), not excluded(name, p, no_trust))
        group = groups.setdefault(key, {"params": [], "weight_decay": weight_decay if key[0] else 0.0,
                                        "trust_ratio": key[1], "decay_excluded": not key[0]})
        group["params"].append((name, p))
    return list(groups.values())


def _lamb(params, *, adam: bool = False, **h) -> Lamb:
    no_decay, no_trust = tuple(h.get("exclude_from_decay") or ()), tuple(h.get("exclude_from_trust") or ())
    if VARIANTS[h["rule"]].trust_list_follows_decay and not no_trust:
        no_trust = no_decay  # TF-Addons: without its own list, adaptation follows the decay list
    if no_decay or no_trust:
        params = exclusion_groups(params, h["weight_decay"], no_decay, no_trust)
    return Lamb(params, lr=h["lr"], betas=h["betas"], eps=h["eps"], weight_decay=h["weight_decay"],
                rule=h["rule"], clamp=h["clamp"], clamp_min=h.get("clamp_min"), adam=adam,
                fused=h.get("fused", False),
                bias_correction=h.get("bias_correction"), trust_clip=h.get("trust_clip"),
                always_adapt=h.get("always_adapt"), grad_clip_norm=h.get("grad_clip_norm", "rule"),
                foreach=h.get("foreach"))


def _lars(params, *, sgd: bool = False, **h) -> Lars:
    return Lars(params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                trust_coefficient=h["trust_coefficient"], sgd=sgd)


def _torch_adam(params, **h) -> torch.optim.Adam:
    eps = TORCH_ADAM_EPS if h["eps"] is None else h["eps"]
    return torch.optim.Adam(params, lr=h["lr"], betas=h["betas"], eps=eps,
                            weight_decay=h["weight_decay"])


def _torch_adamw(params, **h) -> torch.optim.AdamW:
    eps = TORCH_ADAM_EPS if h["eps"] is None else h["eps"]
    return torch.optim.AdamW(params, lr=h["lr"], betas=h["betas"], eps=eps,
                             weight_decay=h["weight_decay"])


def _nesterov(params, **h) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                           nesterov=True)


OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], str]] = {
    "lamb": (_lamb, "LAMB, the blog's or the paper's rule (docs/rules.md)"),
    "adam": (lambda params, **h: _lamb(params, adam=True, **h),
             "LAMB with r computed and logged but not applied: the blog's Adam"),
    "lars": (_lars, "LARS: momentum SGD with the layer-wise trust ratio"),
    "sgd": (lambda params, **h: _lars(params, sgd=True, **h),
            "momentum SGD with L2 decay, LARS's r logged but not applied"),
    "torch_adam": (_torch_adam, "torch.optim.Adam itself (no trust statistics)"),
    "torch_adamw": (_torch_adamw, "torch.optim.AdamW itself: decoupled weight decay (no trust statistics)"),
    "nesterov": (_nesterov, "torch.optim.SGD with Nesterov momentum, L2 decay (no trust statistics)"),
}


def build_optimizer(name: str, params, **hyper) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (a key of ``OPTIMIZERS``) over ``params``: parameters, or named
    parameters (needed where exclude_from_decay or exclude_from_trust names tensors).

    ``hyper`` holds lr, betas, eps (None: the rule's own) and weight_decay; for lamb and adam also
    rule, clamp, clamp_min (None: no lower bound of φ), bias_correction, trust_clip and
    always_adapt (None: the rule's published default),
    grad_clip_norm ("rule", the default: the rule's own), exclude_from_decay, exclude_from_trust,
    fused and foreach; for lars and sgd momentum and trust_coefficient; for nesterov momentum.
    Each optimizer takes the ones it uses.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (one of: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name][0](params, **hyper)
