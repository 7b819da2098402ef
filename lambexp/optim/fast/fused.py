"""``Lamb(fused=True)``'s step, speed only: the rules of ``rules.py`` as torch.compile'd (inductor)
kernels, a tensor's whole update in one call, and ``FusedStep``, which runs them over a param group.
Hyper-parameters travel as a tensor, so a new step size never recompiles; nothing is compiled
before the first fused step. tests/test_optim_fused.py holds them equal to the reference."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from lambexp.optim import rules
from lambexp.optim.variants import COMPILED_RULES, VARIANTS

RULES = COMPILED_RULES  # the rules compiled here (readme2019 runs paper's kernel)

# The hyper-parameter tensor ``hp``, in this order, built by ``hyper_parameters``:
# lr (blog: the step size s), 1−β1, β2, 1−β2 (both 1−β in float64 first: in float32, 1 − 0.999
# is off by 5e-5), ε, λ, c (∞ for no clamp), adam (1.0 or 0.0),
# 1−β1ᵗ and √(1−β2ᵗ) (paper only; 1.0 when bias correction is off).
HP_FIELDS = ("lr", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "weight_decay", "clamp",
             "adam", "bc1", "sqrt_bc2")

# Inductor, left to itself, recomputes a = m/(√v+ε) in the second pass and so keeps the new
# m, v in scratch buffers until that pass: two more full-size streams (slower: docs/optimizer.md).
# Storing every multi-use intermediate instead writes m, v in place in the first pass and `a`
# to a temporary, which the second pass (w ← w − s·r·a) reads back.
COMPILE_OPTIONS = {"realize_opcount_threshold": 0}

# Tensors of at most this many elements are stepped together, laid end to end, in one call:
# a call costs more in Python than such a tensor's update (docs/optimizer.md).
PACK_NUMEL = 4096


def hyper_parameters(group: dict, step: int, like: Tensor) -> Tensor:
    """The ``hp`` tensor of ``group`` at step ``step`` on ``like``'s device, in float32 or float64.

    (Never float16: ε = 1e-8 would round to 0; a 0-dim float32 tensor does not promote the result.)
    """
    beta1, beta2 = group["betas"]
    lr, bc1, bc2 = group["lr"], 1 - beta1**step, 1 - beta2**step
    correction = VARIANTS[group["rule"]].correction_for(group["bias_correction"])
    if correction == "step":  # blog: s = lr·√(1−β2ᵗ)/(1−β1ᵗ) carries the correction
        lr, bc1, bc2 = lr * math.sqrt(bc2) / bc1, 1.0, 1.0
    elif correction == "none":
        bc1, bc2 = 1.0, 1.0
    clamp = math.inf if group["clamp"] is None else group["clamp"]
    values = [lr, 1 - beta1, beta2, 1 - beta2, group["eps"], group["weight_decay"], clamp,
              float(group["adam"]), bc1, math.sqrt(bc2)]
    dtype = torch.promote_types(like.dtype, torch.float32)
    return torch.tensor(values, dtype=dtype, device=like.device)


def blog_step(w: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: Tensor, seg: Tensor | None = None,
              sizes: Tensor | None = None) -> Tensor:
    """``rules.lamb_blog`` in place on w, m, v; returns [r, r1, r2], or (3, T) when packed.

        g  ← g + λ·w
        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        a  = m / (√v + ε)
        r1 = RMS(w) ;  r2 = RMS(a) ;  r = 1 if r1 = 0 or r2 = 0, else min(r1/r2, c)
        w  ← w − s·r·a            (r replaced by 1 when adam)

    Packed: w, g, m, v hold T tensors end to end, ``seg`` (N,) gives each element's tensor and
    ``sizes`` (T,) each tensor's length; every norm and ratio is then per tensor.
    """
    s, one_minus_beta1, beta2, one_minus_beta2, eps, lam, c, adam, _, _ = hp.unbind()
    g = g + lam * w
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    a = m / (torch.sqrt(v) + eps)
    r1, r2 = _rms(w, seg, sizes), _rms(a, seg, sizes)
    r = rules.ratio(r1, r2, c)
    w.sub_(s * _each(torch.where(adam > 0, 1.0, r), seg) * a)
    return torch.stack([r, r1, r2])


def paper_step(w: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: Tensor, seg: Tensor | None = None,
               sizes: Tensor | None = None) -> Tensor:
    """``rules.lamb_paper`` in place on w, m, v; returns [r, r1, r2], or (3, T) when packed.

        m  ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
        u  = (m/(1−β1ᵗ)) / (√v/√(1−β2ᵗ) + ε) + λ·w
        r1 = min(‖w‖₂, c) ;  r2 = ‖u‖₂ ;  r = 1 if r1 = 0 or r2 = 0, else r1/r2
        w  ← w − lr·r·u           (r replaced by 1 when adam)

    ``seg``, ``sizes``: as in ``blog_step``.
    """
    lr, one_minus_beta1, beta2, one_minus_beta2, eps, lam, c, adam, bc1, sqrt_bc2 = hp.unbind()
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    u = (m / bc1) / (torch.sqrt(v) / sqrt_bc2 + eps) + lam * w
    r1 = rules.clamped(_norm(w, seg, sizes), c)
    r2 = _norm(u, seg, sizes)
    r = rules.ratio(r1, r2)
    w.sub_(lr * _each(torch.where(adam > 0, 1.0, r), seg) * u)
    return torch.stack([r, r1, r2])


def _sum_of_squares(x: Tensor, seg: Tensor | None, sizes: Tensor | None) -> Tensor:
    if seg is None:
        return (x * x).sum()
    return torch.zeros_like(sizes).index_add_(0, seg, (x * x).to(sizes.dtype))  # (T,), float64


def _rms(x: Tensor, seg: Tensor | None, sizes: Tensor | None) -> Tensor:
    n = x.numel() if sizes is None else sizes
    return torch.sqrt(_sum_of_squares(x, seg, sizes) / n).to(x.dtype)


def _norm(x: Tensor, seg: Tensor | None, sizes: Tensor | None) -> Tensor:
    return torch.sqrt(_sum_of_squares(x, seg, sizes)).to(x.dtype)


def _each(r: Tensor, seg: Tensor | None) -> Tensor:
    """Each tensor's r, spread over its elements when packed."""
    return r if seg is None else r[seg]


def packable(p: Tensor, state: dict) -> bool:
    """Whether ``p`` is small enough to share a packed kernel call (and laid out for it)."""
    return (0 < p.numel() <= PACK_NUMEL and p.is_contiguous() and state["m"].is_contiguous()
            and state["v"].is_contiguous())


def pack(xs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``seg`` and ``sizes`` for tensors ``xs`` laid end to end (all on one device)."""
    sizes = torch.tensor([x.numel() for x in xs], device=xs[0].device)
    seg = torch.repeat_interleave(torch.arange(len(xs), device=xs[0].device, dtype=torch.int32),
                                  sizes)
    return seg, sizes.to(torch.float64)


class CompileFailed(RuntimeError):
    """torch.compile cannot build the fused step here (no C++ compiler, unsupported Python, ...)."""


@functools.cache
def kernel(rule: str):
    """The compiled step of ``rule`` (one of RULES), called as ``blog_step`` is.

    Compiles on its first call for each dtype and device: one graph for packed tensors and one
    for single tensors (over ``PACK_NUMEL`` elements; a non-contiguous tensor adds one per
    layout). Step sizes and hyper-parameters arrive in ``hp`` and never recompile.
    Raises CompileFailed when torch.compile cannot run here.
    """
    import torch._dynamo
    import torch._inductor.config

    if not torch._dynamo.is_dynamo_supported():
        raise CompileFailed("torch.compile does not support this Python")
    options = {k: v for k, v in COMPILE_OPTIONS.items() if hasattr(torch._inductor.config, k)}
    compiled = torch.compile(blog_step if rule == "blog" else paper_step, fullgraph=True,
                             dynamic=True, options=options)

    def step(*args: Tensor | None) -> Tensor:
        try:
            return compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            raise CompileFailed(str(err)) from err

    return step


class FusedStep:
    """The compiled step over one param group's tensors: one kernel call per large tensor, one for
    all the small ones laid end to end. If torch.compile fails, it warns once, steps the tensors
    not yet stepped with ``foreach``, and ``failed`` stays set (later steps take foreach)."""

    def __init__(self):
        self.failed = False
        self._layouts: dict[tuple, tuple[Tensor, Tensor]] = {}  # (device, sizes) -> seg, sizes

    def __call__(self, group: dict, w: list[Tensor], state: dict, *,
                 reference: Callable[[dict, list[Tensor]], list[Tensor]],
                 foreach: Callable[[list[Tensor]], list[Tensor]]) -> list[Tensor]:
        """Step ``w`` (their moments in ``state``); returns r, r1, r2 as vectors in the order of
        ``w``. ``reference`` steps an empty tensor (whose RMS would divide 0 by 0); ``foreach``
        is the fallback."""
        done, stats = [], []  # indices into w stepped so far, and their (3, k) columns r, r1, r2
        try:
            step = kernel(group["rule"])
            for t, index in _by_step(state, w).items():
                hp = hyper_parameters(group, t, w[index[0]])
                small = [j for j in index if packable(w[j], state[w[j]])]
                if small:  # even one: its own graph would bring one more compile
                    stats.append(self._packed(step, [w[j] for j in small], state, hp))
                    done += small
                for j in sorted(set(index) - set(done)):
                    p = w[j]
                    if p.numel() == 0:
                        stats.append(torch.stack(reference(group, [p])))
                    else:
                        stats.append(step(*_flat(p, p.grad, state[p]["m"], state[p]["v"]), hp)[:, None])
                    done.append(j)
        except CompileFailed as err:
            self.failed = True
            warnings.warn(f"Lamb(fused=True): torch.compile failed, using the foreach step "
                          f"instead ({str(err).strip().splitlines()[0]})", stacklevel=3)
            rest = sorted(set(range(len(w))) - set(done))
            stats.append(torch.stack(foreach([w[j] for j in rest])))
            done += rest
        table = torch.cat(stats, dim=1)
        if done != sorted(done):  # back to the order of w
            table = table[:, torch.tensor(done, device=table.device).argsort()]
        return list(table)

    def _packed(self, step, w: list[Tensor], state: dict, hp: Tensor) -> Tensor:
        """Small tensors laid end to end through one kernel call; returns their (3, T) stats."""
        sizes = tuple(p.numel() for p in w)
        key = (w[0].device, sizes)
        if key not in self._layouts:
            if len(self._layouts) >= 16:  # the set of tensors with a gradient keeps changing
                self._layouts.clear()
            self._layouts[key] = pack(w)
        flat_w = [p.view(-1) for p in w]
        flat_m = [state[p]["m"].view(-1) for p in w]
        flat_v = [state[p]["v"].view(-1) for p in w]
        packed = [torch.cat(xs) for xs in (flat_w, [p.grad.reshape(-1) for p in w], flat_m, flat_v)]
        stats = step(*packed, hp, *self._layouts[key])
        for xs, x in zip((flat_w, flat_m, flat_v), (packed[0], packed[2], packed[3])):
            torch._foreach_copy_(xs, x.split(sizes))
        return stats


def _by_step(state: dict, w: list[Tensor]) -> dict[int, list[int]]:
    """Indices of ``w`` by step count (one entry unless tensors joined at different steps)."""
    index: dict[int, list[int]] = {}
    for j, p in enumerate(w):
        index.setdefault(state[p]["step"], []).append(j)
    return index


def _flat(*xs: Tensor) -> list[Tensor]:
    """1-D views of same-shaped tensors when all are contiguous, so one graph fits every shape."""
    if all(x.is_contiguous() for x in xs):
        return [x.view(-1) for x in xs]
    return list(xs)
