"""The update rules of docs/rules.md as pure functions: tensors and hyper-parameters in, new tensors out.

These are the reference. Each line is one equation of docs/rules.md; the fast steps (the multi-tensor
step in ``lamb.py`` / ``lars.py``, the compiled kernels of ``fused.py``) are tested against them,
never the other way round, and share their small pieces from here: ``rms``/``rms_each``,
``clamped`` (the paper's φ) and ``ratio``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class LambStep(NamedTuple):
    w: Tensor  # new weights
    m: Tensor  # new first moment
    v: Tensor  # new second moment
    r: Tensor  # trust ratio (0-dim); the one applied unless adam=True
    r1: Tensor  # weight-norm part
    r2: Tensor  # update-norm part


class LarsStep(NamedTuple):
    w: Tensor
    buf: Tensor  # momentum buffer
    r: Tensor
    r1: Tensor
    r2: Tensor


def rms(x: Tensor) -> Tensor:
    """Root mean square √mean(x²), as a 0-dim tensor (0 for an empty tensor)."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def rms_each(xs: list[Tensor]) -> Tensor:
    """``rms`` of each tensor of ``xs``, as one vector, in one multi-tensor norm."""
    norms = torch._foreach_norm(xs)
    torch._foreach_div_(norms, [math.sqrt(max(x.numel(), 1)) for x in xs])
    return torch.stack(norms)


def clamped(x: Tensor, clamp: float | Tensor | None) -> Tensor:
    """min(x, c): the paper's φ on ‖w‖ and the blog's clip of r (None: x itself)."""
    if clamp is None:
        return x
    return torch.minimum(x, clamp) if isinstance(clamp, Tensor) else torch.clamp(x, max=clamp)


def ratio(r1: Tensor, r2: Tensor, clamp: float | Tensor | None = None) -> Tensor:
    """r = 1 if r1 = 0 or r2 = 0, else r1/r2 clipped at ``clamp`` (None: not clipped)."""
    return torch.where((r1 > 0) & (r2 > 0), clamped(r1 / r2, clamp), 1.0)


def lamb_blog(w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, *, lr: float,
              beta1: float, beta2: float, eps: float, weight_decay: float,
              clamp: float | None, adam: bool = False) -> LambStep:
    """LAMB as the blog's experiments ran it (pytorch-lamb, May 2019).

        g  ← g + λ·w
        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        s  = lr · √(1−β2ᵗ) / (1−β1ᵗ)
        a  = m / (√v + ε)
        r1 = RMS(w) ;  r2 = RMS(a)
        r  = 1 if r1 = 0 or r2 = 0, else min(r1/r2, c)
        w  ← w − s·r·a            (r replaced by 1 when adam=True)
    """
    g = g + weight_decay * w
    m = torch.lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    s = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    a = m / (torch.sqrt(v) + eps)
    r1, r2 = rms(w), rms(a)
    r = ratio(r1, r2, clamp)
    applied = torch.ones_like(r) if adam else r
    return LambStep(w - s * applied * a, m, v, r, r1, r2)


def lamb_paper(w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, *, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float,
               clamp: float | None, bias_correction: bool = True,
               adam: bool = False) -> LambStep:
    """LAMB as in the final paper (You et al., 2020) and later implementations.

        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²      (raw gradient)
        m̂ = m/(1−β1ᵗ) ;  v̂ = v/(1−β2ᵗ)                   (when bias_correction)
        u  = m̂ / (√v̂ + ε) + λ·w
        r1 = min(‖w‖₂, c) ;  r2 = ‖u‖₂                    (c = None: no clamp)
        r  = 1 if r1 = 0 or r2 = 0, else r1/r2
        w  ← w − lr·r·u           (r replaced by 1 when adam=True)
    """
    m = torch.lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if bias_correction else (1.0, 1.0)
    u = (m / bc1) / (torch.sqrt(v) / math.sqrt(bc2) + eps) + weight_decay * w
    r1 = clamped(torch.linalg.vector_norm(w), clamp)
    r2 = torch.linalg.vector_norm(u)
    r = ratio(r1, r2)
    applied = torch.ones_like(r) if adam else r
    return LambStep(w - lr * applied * u, m, v, r, r1, r2)


def lars(w: Tensor, g: Tensor, buf: Tensor, *, lr: float, momentum: float,
         weight_decay: float, trust_coefficient: float, sgd: bool = False) -> LarsStep:
    """LARS (You et al., 2017, Algorithm 1) as the blog describes it.

        r1 = ‖w‖₂ ;  r2 = ‖g‖₂ + λ‖w‖₂
        r  = η·r1/r2, or 1 if r1 = 0 or r2 = 0
        buf ← μ·buf + lr·r·(g + λ·w)
        w  ← w − buf              (r replaced by 1 when sgd=True: momentum SGD with L2 decay)
    """
    r1 = torch.linalg.vector_norm(w)
    r2 = torch.linalg.vector_norm(g) + weight_decay * r1
    r = ratio(trust_coefficient * r1, r2)
    applied = torch.ones_like(r) if sgd else r
    buf = momentum * buf + lr * applied * (g + weight_decay * w)
    return LarsStep(w - buf, buf, r, r1, r2)
