"""The update rules of docs/rules.md as pure functions: tensors and hyper-parameters in, new tensors out.

These are the reference. Each line is one equation of docs/rules.md; the fast steps of ``optim/fast/``
(the multi-tensor steps of ``foreach.py``, the compiled kernels of ``fused.py``) are tested against them,
never the other way round, and share their small pieces from here: ``rms``/``rms_each``,
``clamped`` (the paper's φ) and ``ratio``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lambexp.optim.variants import VARIANTS, Variant


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


def lamb(variant: Variant, w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, *, lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float, clamp: float | None,
         bias_correction: bool = True, trust_clip: float | None = None, adapt: bool = True,
         adam: bool = False) -> LambStep:
    """One LAMB step of ``variant`` (lambexp.optim.variants) on one tensor; each line an equation,
    run only where the variant's piece says so (docs/rules.md gives each variant's):

        g  ← g + λ·w                                   (decay "gradient": L2)
        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        m̂ = m/(1−β1ᵗ) ;  v̂ = v/(1−β2ᵗ)                 (correction "moments"; else m, v)
        u  = m̂ / (√v̂ + ε)
        u  ← u + λ·w                                   (decay "update")
        r1 = ‖w‖ ;  r2 = ‖u‖                           (norm "l2"; "rms": ‖·‖/√n)
        r1 ← min(r1, c)                                (clamp_on "w_norm": the paper's φ)
        r  = 1 if r1 = 0 or r2 = 0, else r1/r2
        r  ← min(r, c) ;  r ← min(r, trust_clip)       (clamp_on "r"; trust_clip given: LAMBC)
        r  ← 1                                         (not adapt: a tensor kept out of the ratio)
        s  = lr·√(1−β2ᵗ)/(1−β1ᵗ)                       (correction "step"; else s = lr)
        w  ← w − s·r·u                                 (r replaced by 1 when adam=True)

    The global gradient clip (``grad_clip_norm``) scales g before this, over every tensor at once.
    """
    correction = variant.correction_for(bias_correction)
    if variant.decay == "gradient":
        g = g + weight_decay * w
    m = torch.lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = (1 - beta1**t, 1 - beta2**t) if correction == "moments" else (1.0, 1.0)
    u = (m / bc1) / (torch.sqrt(v) / math.sqrt(bc2) + eps)
    if variant.decay == "update":
        u = u + weight_decay * w
    norm = rms if variant.norm == "rms" else torch.linalg.vector_norm
    r1, r2 = norm(w), norm(u)
    if variant.clamp_on == "w_norm":
        r1 = clamped(r1, clamp)
    r = ratio(r1, r2, clamp if variant.clamp_on == "r" else None)
    if trust_clip is not None:
        r = clamped(r, trust_clip)
    if not adapt:
        r = torch.ones_like(r)
    s = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) if correction == "step" else lr
    applied = torch.ones_like(r) if adam else r
    return LambStep(w - s * applied * u, m, v, r, r1, r2)


def lamb_blog(w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, **hp) -> LambStep:
    """LAMB as the blog's experiments ran it (pytorch-lamb, May 2019): ``lamb`` of "blog"."""
    return lamb(VARIANTS["blog"], w, g, m, v, t, **hp)


def lamb_paper(w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, **hp) -> LambStep:
    """LAMB as in the final paper (You et al., 2020): ``lamb`` of "paper"."""
    return lamb(VARIANTS["paper"], w, g, m, v, t, **hp)


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
