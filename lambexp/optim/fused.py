"""``Lamb(fused=True)``'s step: one tensor's whole LAMB update as one torch.compile'd (inductor) kernel.

The equations are those of ``rules.py``; the hyper-parameters travel as one small tensor, so a new
step size or learning rate never recompiles. Nothing is compiled until the first fused step.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

# The hyper-parameter tensor ``hp``, in this order, built by ``hyper_parameters``:
# lr (blog: the step size s), 1−β1, β2, 1−β2 (both 1−β in float64 first: in float32, 1 − 0.999
# is off by 5e-5), ε, λ, c (∞ for no clamp), adam (1.0 or 0.0),
# 1−β1ᵗ and √(1−β2ᵗ) (paper only; 1.0 when bias correction is off).
HP_FIELDS = ("lr", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "weight_decay", "clamp",
             "adam", "bc1", "sqrt_bc2")

# Inductor, left to itself, recomputes a = m/(√v+ε) in the second pass and then keeps the new
# m, v in scratch buffers until that pass: two more full-size streams, ~1.5× slower on the CPU.
# Storing every multi-use intermediate instead writes m, v in place in the first pass.
COMPILE_OPTIONS = {"realize_opcount_threshold": 0}


def hyper_parameters(group: dict, step: int, like: Tensor) -> Tensor:
    """The ``hp`` tensor of ``group`` at step ``step``, on ``like``'s device and in its dtype."""
    beta1, beta2 = group["betas"]
    clamp = math.inf if group["clamp"] is None else group["clamp"]
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    if group["variant"] == "blog":
        lr, bc1, bc2 = group["lr"] * math.sqrt(bc2) / bc1, 1.0, 1.0  # s, folded in
    elif not group["bias_correction"]:
        bc1, bc2 = 1.0, 1.0
    values = [lr if group["variant"] == "blog" else group["lr"], 1 - beta1, beta2, 1 - beta2,
              group["eps"], group["weight_decay"], clamp, float(group["adam"]), bc1, math.sqrt(bc2)]
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def blog_step(w: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: Tensor) -> Tensor:
    """``rules.lamb_blog`` in place on w, m, v; returns [r, r1, r2].

        g  ← g + λ·w
        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        a  = m / (√v + ε)
        r1 = RMS(w) ;  r2 = RMS(a) ;  r = 1 if r1 = 0 or r2 = 0, else min(r1/r2, c)
        w  ← w − s·r·a            (r replaced by 1 when adam)
    """
    s, one_minus_beta1, beta2, one_minus_beta2, eps, lam, c, adam, _, _ = hp.unbind()
    g = g + lam * w
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    a = m / (torch.sqrt(v) + eps)
    r1, r2 = _rms(w), _rms(a)
    r = _ratio(r1, r2, c)
    w.sub_(s * torch.where(adam > 0, 1.0, r) * a)
    return torch.stack([r, r1, r2])


def paper_step(w: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: Tensor) -> Tensor:
    """``rules.lamb_paper`` in place on w, m, v; returns [r, r1, r2].

        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        u  = (m/(1−β1ᵗ)) / (√v/√(1−β2ᵗ) + ε) + λ·w
        r1 = min(‖w‖₂, c) ;  r2 = ‖u‖₂ ;  r = 1 if r1 = 0 or r2 = 0, else r1/r2
        w  ← w − lr·r·u           (r replaced by 1 when adam)
    """
    lr, one_minus_beta1, beta2, one_minus_beta2, eps, lam, c, adam, bc1, sqrt_bc2 = hp.unbind()
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    u = (m / bc1) / (torch.sqrt(v) / sqrt_bc2 + eps) + lam * w
    r1 = torch.minimum(torch.linalg.vector_norm(w), c)
    r2 = torch.linalg.vector_norm(u)
    r = _ratio(r1, r2, None)
    w.sub_(lr * torch.where(adam > 0, 1.0, r) * u)
    return torch.stack([r, r1, r2])


def _rms(x: Tensor) -> Tensor:
    return torch.sqrt((x * x).sum() / x.numel())


def _ratio(r1: Tensor, r2: Tensor, c: Tensor | None) -> Tensor:
    q = r1 / r2 if c is None else torch.minimum(r1 / r2, c)
    return torch.where((r1 > 0) & (r2 > 0), q, 1.0)


class CompileFailed(RuntimeError):
    """torch.compile cannot build the fused step here (no C++ compiler, unsupported Python, ...)."""


@functools.cache
def kernel(variant: str):
    """The compiled step of ``variant`` ("blog" or "paper"): ``kernel(w, g, m, v, hp) -> [r, r1, r2]``.

    Compiles on its first call for each dtype and device, once more for tensors of at most 4096
    elements (inductor sums longer ones in a cascade) and for sizes 0 and 1 (which torch.compile
    treats as constants). Step sizes and hyper-parameters arrive in ``hp`` and never recompile.
    Raises CompileFailed when torch.compile cannot run or its compiler fails.
    """
    import torch._dynamo
    import torch._inductor.config

    if not torch._dynamo.is_dynamo_supported():
        raise CompileFailed("torch.compile does not support this Python")
    options = {k: v for k, v in COMPILE_OPTIONS.items() if hasattr(torch._inductor.config, k)}
    compiled = torch.compile(blog_step if variant == "blog" else paper_step, fullgraph=True,
                             dynamic=True, options=options)

    def step(w: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: Tensor) -> Tensor:
        try:
            return compiled(w, g, m, v, hp)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            raise CompileFailed(str(err)) from err

    return step
