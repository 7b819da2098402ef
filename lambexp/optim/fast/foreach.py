"""The multi-tensor steps: ``rules.lamb`` and ``rules.lars`` over many tensors at once, speed only.

Each function here runs the equations of ``rules.py`` in the same order with ``torch._foreach_*`` ops
(one kernel for many tensors on an accelerator) and, on the CPU, with its temporaries in reused
scratch buffers. It decides nothing: the variant and the step's numbers (``rules.hyper``: the bias
correction, whether the tensors are adapted) arrive as arguments, and the ratio is ``rules.trust``.
tests/test_optim_torch.py and tests/test_variants.py hold every path equal to the reference to
float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, partial

import torch
from torch import Tensor

from lambexp.base.variants import Variant
from lambexp.optim import rules
from lambexp.optim.fast import chunks
from lambexp.optim.fast.chunks import Scratch
from lambexp.optim.rules import Hyper


def lamb_step(w: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor], steps: list[int],
              *, variant: Variant, hyper: Callable[[int], Hyper], scratch: Scratch
              ) -> tuple[Tensor, Tensor, Tensor]:
    """``rules.lamb_update`` on the tensors ``w`` in place (m, v too); returns their r, r1, r2.
    ``hyper`` gives step t's numbers (``rules.hyper`` of the group).

    The elementwise part (the moments and the direction u the rule scales by r) is ``direction``;
    a CPU tensor too large to share a cache chunk takes ``adam_kernel_direction`` instead. Then
    the norms over whole tensors, ``rules.trust``, and w ← w − s·r·u."""
    by_step = {t: hyper(t) for t in set(steps)}  # one Hyper per distinct step count
    hs = [by_step[t] for t in steps]
    h = hs[0]  # what does not depend on t: λ, c, the flags
    if variant.decay == "decoupled" and h.weight_decay:
        torch._foreach_mul_(w, 1 - h.lr * h.weight_decay)  # rules.decoupled, before r1 reads w
    cpu = w[0].device.type == "cpu"
    if cpu and adam_kernel_fits(w, g, m, v):
        d, r1, r2, coef = adam_kernel_direction(w[0], g[0], m[0], v[0], steps[0], hs[0],
                                                variant=variant, scratch=scratch)
    else:
        d = direction(w, g, m, v, hs, scratch.like(2, w) if cpu else None, variant=variant,
                      scratch=scratch)
        norms = rules.rms_each if variant.norm == "rms" else norm_each
        r1, r2 = norms(w), norms(d)
        coef = [x.s for x in hs]
    r, r1 = rules.trust(variant, r1, r2, h)
    descend(w, d, coef, None if h.adam else r)
    return r, r1, r2


def direction(w: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor], hs: list[Hyper],
              out: list[Tensor] | None, *, variant: Variant, scratch: Scratch) -> list[Tensor]:
    """``rules.moments`` in place on m, v and ``rules.direction`` (the u the rule scales by r),
    piece by piece: λ·w added to g first (decay "gradient") or to u (decay "update");
    u = m̂/(√v̂ + ε), the division by bc1 and √bc2 skipped where they are 1.
    On the CPU (``out`` given) it is written into ``out`` and the temporaries into ``scratch``;
    elsewhere (``out`` None) the foreach ops make new tensors."""
    h = hs[0]
    lam, eps = h.weight_decay, h.eps

    def into(dest, foreach_op, op, *args: list) -> list[Tensor]:
        """``foreach_op(*args)``, or on the CPU the same ``op`` tensor by tensor written into
        ``dest``: a list of tensors, or the number of a scratch slot (nothing allocated)."""
        if out is None:
            return foreach_op(*args)
        dest = scratch.like(dest, args[0]) if isinstance(dest, int) else dest
        for *xs, o in zip(*args, dest):
            op(*xs, out=o)
        return dest

    if variant.decay == "gradient" and lam:
        g = into(0, partial(torch._foreach_add, alpha=lam), partial(torch.add, alpha=lam), g, w)
    torch._foreach_lerp_(m, g, h.one_minus_beta1)  # m ← β1·m + (1−β1)·g
    torch._foreach_mul_(v, h.beta2)
    torch._foreach_addcmul_(v, g, g, value=h.one_minus_beta2)  # v ← β2·v + (1−β2)·g²
    uncorrected = all(x.bc1 == 1 and x.sqrt_bc2 == 1 for x in hs)  # dividing by 1 changes nothing
    if uncorrected and not (variant.decay == "update" and lam):
        denom = into(out, torch._foreach_sqrt, torch.sqrt, v)
        torch._foreach_add_(denom, eps)
        return into(out, torch._foreach_div, torch.div, m, denom)  # u = m / (√v + ε)
    denom = into(1, torch._foreach_sqrt, torch.sqrt, v)
    torch._foreach_div_(denom, [x.sqrt_bc2 for x in hs])
    torch._foreach_add_(denom, eps)  # √v̂ + ε
    u = into(out, torch._foreach_div, torch.div, m, [x.bc1 for x in hs])  # m̂
    torch._foreach_div_(u, denom)
    if variant.decay == "update" and lam:
        torch._foreach_add_(u, w, alpha=lam)  # u = m̂/(√v̂ + ε) + λ·w
    return u


def adam_kernel_direction(w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, h: Hyper, *,
                          variant: Variant, scratch: Scratch):
    """``direction`` and the norms for one large CPU tensor, in fewer passes over memory:
    LAMB's direction is Adam's, so torch's fused Adam kernel makes it, with the moments, in
    one pass; the norms are dot products, which use every thread (``_foreach_norm`` one).
    Equal to the rule to float rounding (tested); LeNet's fc1.weight (400,000) is one.

    The kernel, run with lr 1 on a scratch tensor d as its parameter, always divides m and v by
    (1−β1ᵗ) and (1−β2ᵗ): d ← d − m̂/(√v̂ + ε'). Where the rule divides by bc1 and √bc2 of its
    own (``rules.hyper``: those, or 1), c = √(1−β2ᵗ)/(1−β1ᵗ)·bc1/√bc2 and ε' = ε·√bc2/√(1−β2ᵗ)
    make that d − c·m̃/(√ṽ + ε) with m̃ = m/bc1, √ṽ = √v/√bc2: the rule's u, scaled by c.
    Starting from d = −c·λ·w (decay "update"; decay "gradient" puts λ·w into g), d = −c·u.
    Returns [d], r1, r2 and the coefficient of d in w ← w − s·r·u = w + (s/c)·r·d."""
    beta1, beta2 = 1 - h.one_minus_beta1, h.beta2
    lam, sqrt_bc2 = h.weight_decay, math.sqrt(1 - beta2**t)
    c = sqrt_bc2 / (1 - beta1**t) * h.bc1 / h.sqrt_bc2
    d = scratch.like(2, [w])[0]
    if variant.decay == "gradient" and lam:
        g = torch.add(g, w, alpha=lam, out=scratch.like(0, [g])[0])  # g + λ·w
    if variant.decay == "update" and lam:
        torch.mul(w, -c * lam, out=d)
    else:
        d.zero_()
    torch._fused_adam_([d], [g], [m], [v], [], [torch.tensor(float(t))], lr=1.0,
                       beta1=beta1, beta2=beta2, weight_decay=0.0,
                       eps=h.eps * h.sqrt_bc2 / sqrt_bc2, amsgrad=False, maximize=False)
    flat_w, flat_d = w.view(-1), d.view(-1)
    norm_w, norm_dir = torch.dot(flat_w, flat_w).sqrt(), torch.dot(flat_d, flat_d).sqrt() / c
    if variant.norm == "rms":
        root_n = math.sqrt(w.numel())
        norm_w, norm_dir = norm_w / root_n, norm_dir / root_n
    return [d], norm_w[None], norm_dir[None], [-h.s / c]


def adam_kernel_fits(w: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor]) -> bool:
    """A CPU chunk of one tensor too large to share a cache chunk, which torch's fused Adam
    kernel can step: contiguous, in a floating dtype it takes."""
    return (len(w) == 1 and w[0].numel() > chunks.CPU_CHUNK_NUMEL
            and w[0].dtype in (torch.float32, torch.float64)
            and all(x.is_contiguous() for x in (w[0], g[0], m[0], v[0])) and cpu_adam_kernel())


@cache
def cpu_adam_kernel() -> bool:
    """Whether this torch has a fused Adam kernel for the CPU (torch 2.4 and later); tried once,
    on one-element tensors. Without it, large tensors take the foreach step."""
    try:
        one = [[torch.zeros(1)] for _ in range(4)]
        torch._fused_adam_(*one, [], [torch.ones(())], lr=1.0, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def descend(w: list[Tensor], d: list[Tensor], coef: list[float], r: Tensor | None) -> None:
    """w ← w − coefᵢ·rᵢ·dᵢ for each tensor i (r = None: r = 1), without reading r on the host."""
    if r is None:
        if len(set(coef)) == 1:
            torch._foreach_add_(w, d, alpha=-coef[0])
        else:
            torch._foreach_add_(w, torch._foreach_mul(d, [-c for c in coef]))
        return
    if len(set(coef)) == 1:
        scale = r * -coef[0]
    else:
        scale = r * torch.tensor([-c for c in coef], dtype=r.dtype).to(r.device, non_blocking=True)
    torch._foreach_addcmul_(w, d, list(scale.unbind()))


def norm_each(xs: list[Tensor]) -> Tensor:
    """‖x‖ of each tensor of ``xs``, as one vector, in one multi-tensor norm."""
    return torch.stack(torch._foreach_norm(xs))


def lars_step(group: dict, w: list[Tensor], g: list[Tensor], buf: list[Tensor]):
    """``rules.lars`` on the tensors ``w`` in place (buf too); returns their r, r1, r2."""
    lam = group["weight_decay"]
    r1 = norm_each(w)
    r2 = norm_each(g) + lam * r1
    r = rules.ratio(group["trust_coefficient"] * r1, r2)
    d = torch._foreach_add(g, w, alpha=lam) if lam else g  # g + λ·w
    torch._foreach_mul_(buf, group["momentum"])
    if group["sgd"]:
        torch._foreach_add_(buf, d, alpha=group["lr"])
    else:
        torch._foreach_addcmul_(buf, d, list((r * group["lr"]).unbind()))
    torch._foreach_sub_(w, buf)  # w ← w − buf
    return r, r1, r2
