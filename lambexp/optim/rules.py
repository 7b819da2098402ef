"""The update rules of docs/rules.md as pure functions: tensors and hyper-parameters in, new tensors out.

These are the reference. A LAMB step is a chain of small per-tensor pieces (``decoupled``,
``moments``, ``direction``, ``trust``), each run where the Variant says, and ``lamb_update`` chains
them: the reference runs it on one tensor, and the compiled step of ``fast/fused.py`` compiles this
same function for each variant, on tensors laid end to end. The multi-tensor step of
``fast/foreach.py`` runs the elementwise pieces with ``torch._foreach_*`` ops and takes ``trust``,
``hyper``, ``rms_each`` from here; every fast path is tested against this file, never the other way round.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lambexp.base.variants import VARIANTS, Variant


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


def floored(x: Tensor, floor: float | Tensor) -> Tensor:
    """max(x, γ_l): the lower bound of the paper's φ on ‖w‖ (0: x itself, as norms are ≥ 0)."""
    if isinstance(floor, Tensor):
        return torch.maximum(x, floor)
    return torch.clamp(x, min=floor) if floor else x


def ratio(r1: Tensor, r2: Tensor, clamp: float | Tensor | None = None, guard: bool = True) -> Tensor:
    """r = 1 if r1 = 0 or r2 = 0, else r1/r2 clipped at ``clamp`` (None: not clipped).
    ``guard=False``: r1/r2 even there (0 where r1 = 0; ∞ or NaN where r2 = 0)."""
    if not guard:
        return clamped(r1 / r2, clamp)
    return torch.where((r1 > 0) & (r2 > 0), clamped(r1 / r2, clamp), 1.0)


class Hyper(NamedTuple):
    """One step's numbers, resolved once from a param group and the step count t (``hyper``).

    Python floats and bools in the reference; in the compiled step (``fast/fused.py``) 0-dim tensors
    of one vector, so that a new lr never recompiles: there ∞ stands for no clamp and 1.0/0.0 for
    the flags. Either way the pieces below read them alike."""

    lr: float  # the group's lr (decoupled decay shrinks w by lr·λ)
    s: float  # the step size: lr, or lr·√(1−β2ᵗ)/(1−β1ᵗ) where the correction goes there ("step")
    one_minus_beta1: float  # 1−β1 and 1−β2 in float64 first: in float32, 1 − 0.999 is off by 5e-5
    beta2: float
    one_minus_beta2: float
    eps: float
    weight_decay: float
    clamp: float | None  # c (None: none)
    clamp_min: float  # γ_l, φ's lower bound on ‖w‖ (0: none)
    trust_clip: float | None  # r ≤ this (None: none)
    bc1: float  # 1−β1ᵗ where the correction divides the moments ("moments"), else 1
    sqrt_bc2: float  # √(1−β2ᵗ) likewise, else 1
    kept_out: bool  # r = 1: the tensor is kept out of the ratio
    adam: bool  # r computed, 1 applied


def hyper(variant: Variant, t: int, *, lr: float, beta1: float, beta2: float, eps: float,
          weight_decay: float, clamp: float | None, bias_correction: bool = True,
          trust_clip: float | None = None, adapt: bool = True, adam: bool = False,
          clamp_min: float | None = None) -> Hyper:
    """The numbers of step ``t`` of ``variant``: where its bias correction goes decides s, bc1
    and √bc2 (``Variant.correction_for``), so that the pieces never branch on it. ``clamp_min``
    None (no lower bound) is 0."""
    correction = variant.correction_for(bias_correction)
    s, bc1, sqrt_bc2 = lr, 1.0, 1.0
    if correction == "step":
        s = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    elif correction == "moments":
        bc1, sqrt_bc2 = 1 - beta1**t, math.sqrt(1 - beta2**t)
    return Hyper(lr, s, 1 - beta1, beta2, 1 - beta2, eps, weight_decay, clamp, clamp_min or 0.0,
                 trust_clip, bc1, sqrt_bc2, not adapt, adam)


class Whole:
    """Norms over one whole tensor, as the reference takes them; the compiled step's packed
    tensors bring their own (``fast/fused.py``), per tensor laid end to end."""

    @staticmethod
    def norm(x: Tensor, kind: str) -> Tensor:
        return rms(x) if kind == "rms" else torch.linalg.vector_norm(x)

    @staticmethod
    def each(r: Tensor) -> Tensor:
        """r spread over the elements of its tensor: a 0-dim r broadcasts as it is."""
        return r


def one_where(flag: bool | Tensor, r: Tensor) -> Tensor:
    """1 where ``flag`` (a bool, or 1.0/0.0 in a tensor), else r."""
    if isinstance(flag, Tensor):
        return torch.where(flag > 0, 1.0, r)
    return torch.ones_like(r) if flag else r


def decoupled(variant: Variant, w: Tensor, h: Hyper) -> Tensor:
    """w ← w − lr·λ·w before the ratio sees w (decay "decoupled", AdamW's); else w."""
    return w - h.lr * h.weight_decay * w if variant.decay == "decoupled" else w


def moments(variant: Variant, w: Tensor, g: Tensor, m: Tensor, v: Tensor,
            h: Hyper) -> tuple[Tensor, Tensor]:
    """g ← g + λ·w (decay "gradient": L2); m ← β1·m + (1−β1)·g ; v ← β2·v + (1−β2)·g²."""
    if variant.decay == "gradient":
        g = g + h.weight_decay * w
    return torch.lerp(m, g, h.one_minus_beta1), h.beta2 * v + h.one_minus_beta2 * g * g


def direction(variant: Variant, w: Tensor, m: Tensor, v: Tensor, h: Hyper) -> Tensor:
    """u = m̂/(√v̂ + ε), m̂ = m/bc1 and √v̂ = √v/√bc2 (1 unless the correction is "moments");
    u ← u + λ·w (decay "update")."""
    u = (m / h.bc1) / (torch.sqrt(v) / h.sqrt_bc2 + h.eps)
    return u + h.weight_decay * w if variant.decay == "update" else u


def trust(variant: Variant, r1: Tensor, r2: Tensor, h: Hyper) -> tuple[Tensor, Tensor]:
    """The ratio from the norms r1 = ‖w‖, r2 = ‖u‖ (0-dim, or one per tensor): φ on r1 (clamp_on
    "w_norm": min(max(r1, clamp_min), c)), r = r1/r2 (1 if either is 0, unless the variant's
    zero_norm is "ratio"), c on r (clamp_on "r"), trust_clip, and r = 1 on a tensor kept out.
    Returns r and r1 as logged (r1 after φ). The multi-tensor step calls it too."""
    if variant.clamp_on == "w_norm":
        r1 = clamped(floored(r1, h.clamp_min), h.clamp)
    r = ratio(r1, r2, h.clamp if variant.clamp_on == "r" else None, variant.zero_norm == "one")
    return one_where(h.kept_out, clamped(r, h.trust_clip)), r1


def lamb_update(variant: Variant, w: Tensor, g: Tensor, m: Tensor, v: Tensor, h: Hyper,
                tensors=Whole) -> LambStep:
    """One step of ``variant`` as its chain of pieces, each run only where the variant says:
    ``decoupled``, ``moments``, ``direction``, the norms (``variant.norm``), ``trust``, and
    w ← w − s·r·u. The reference (``lamb``) and the compiled step (``fast/fused.py``, with packed
    ``tensors``) both run this function; ``tensors`` takes the norms and spreads r back."""
    w = decoupled(variant, w, h)
    m, v = moments(variant, w, g, m, v, h)
    u = direction(variant, w, m, v, h)
    r2 = tensors.norm(u, variant.norm)
    r, r1 = trust(variant, tensors.norm(w, variant.norm), r2, h)
    return LambStep(w - h.s * tensors.each(one_where(h.adam, r)) * u, m, v, r, r1, r2)


def lamb(variant: Variant, w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, *, lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float, clamp: float | None,
         bias_correction: bool = True, trust_clip: float | None = None, adapt: bool = True,
         adam: bool = False, clamp_min: float | None = None) -> LambStep:
    """One LAMB step of ``variant`` (lambexp.base.variants) on one tensor; each line an equation,
    run only where the variant's piece says so (docs/rules.md gives each variant's):

        w  ← w − lr·λ·w                                (decay "decoupled": AdamW's, before r)
        g  ← g + λ·w                                   (decay "gradient": L2)
        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        m̂ = m/(1−β1ᵗ) ;  v̂ = v/(1−β2ᵗ)                 (correction "moments"; else m, v)
        u  = m̂ / (√v̂ + ε)
        u  ← u + λ·w                                   (decay "update")
        r1 = ‖w‖ ;  r2 = ‖u‖                           (norm "l2"; "rms": ‖·‖/√n)
        r1 ← min(max(r1, γ_l), c)                      (clamp_on "w_norm": the paper's φ)
        r  = 1 if r1 = 0 or r2 = 0, else r1/r2         (zero_norm "ratio": r1/r2 even there)
        r  ← min(r, c) ;  r ← min(r, trust_clip)       (clamp_on "r"; trust_clip given: LAMBC)
        r  ← 1                                         (not adapt: a tensor kept out of the ratio)
        s  = lr·√(1−β2ᵗ)/(1−β1ᵗ)                       (correction "step"; else s = lr)
        w  ← w − s·r·u                                 (r replaced by 1 when adam=True)

    γ_l is ``clamp_min`` (None: none). The global gradient clip (``grad_clip_norm``) scales g
    before this, over every tensor at once; t is the count of the variant's ``step_counter``.
    """
    h = hyper(variant, t, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
              clamp=clamp, bias_correction=bias_correction, trust_clip=trust_clip, adapt=adapt,
              adam=adam, clamp_min=clamp_min)
    return lamb_update(variant, w, g, m, v, h)


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
