"""``Lamb(fused=True)``'s step, speed only: ``rules.lamb_update`` compiled by torch.compile
(inductor) for each variant, a tensor's whole update in one call, and ``FusedStep``, which runs it
over a param group. The compiled function is the reference's own chain of pieces, read from the
Variant, so every rule compiles and none is written here. Hyper-parameters travel as a tensor, so a
new step size never recompiles; nothing is compiled before the first fused step.
tests/test_optim_fused.py holds it equal to the reference."""

from __future__ import annotations

import functools
import math
import types
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from lambexp.base.variants import VARIANTS, Variant
from lambexp.optim import rules

# Inductor, left to itself, recomputes a = m/(√v+ε) in the second pass and so keeps the new
# m, v in scratch buffers until that pass: two more full-size streams (slower: docs/optimizer.md).
# Storing every multi-use intermediate instead writes m, v in place in the first pass and `a`
# to a temporary, which the second pass (w ← w − s·r·a) reads back.
COMPILE_OPTIONS = {"realize_opcount_threshold": 0}

# Tensors of at most this many elements are stepped together, laid end to end, in one call:
# a call costs more in Python than such a tensor's update (docs/optimizer.md).
PACK_NUMEL = 4096


def hyper_parameters(h: rules.Hyper, like: Tensor) -> Tensor:
    """A step's numbers (``rules.hyper``) as one vector on ``like``'s device, in float32 or float64,
    in the order of ``rules.Hyper``: ∞ for no clamp, 1.0/0.0 for the flags.

    (Never float16: ε = 1e-8 would round to 0; a 0-dim float32 tensor does not promote the result.)
    """
    values = [math.inf if x is None else float(x) for x in h]
    dtype = torch.promote_types(like.dtype, torch.float32)
    return torch.tensor(values, dtype=dtype, device=like.device)


def compiled_step(w: Tensor, g: Tensor, m: Tensor, v: Tensor, hp: Tensor, seg: Tensor | None = None,
                  sizes: Tensor | None = None, *, variant: Variant = VARIANTS["blog"]) -> Tensor:
    """``rules.lamb_update`` of ``variant`` in place on w, m, v; returns [r, r1, r2], or (3, T)
    when packed: w, g, m, v then hold T tensors end to end, ``seg`` (N,) gives each element's
    tensor and ``sizes`` (T,) each tensor's length, and every norm and ratio is per tensor.
    ``kernel`` sets ``variant`` for each rule."""
    new = rules.lamb_update(variant, w, g, m, v, rules.Hyper(*hp.unbind()), Segments(seg, sizes))
    w.copy_(new.w)
    m.copy_(new.m)
    v.copy_(new.v)
    return torch.stack([new.r, new.r1, new.r2])


class Segments(NamedTuple):
    """The norms of ``rules.lamb_update`` over one tensor (``seg`` None) or per tensor of several
    laid end to end, summed in float64 (``sizes``' dtype) so that long runs keep their digits."""

    seg: Tensor | None
    sizes: Tensor | None

    def norm(self, x: Tensor, kind: str) -> Tensor:
        if self.seg is None:
            squares = (x * x).sum()
        else:
            squares = torch.zeros_like(self.sizes).index_add_(0, self.seg, (x * x).to(self.sizes.dtype))
        if kind == "rms":
            squares = squares / (x.numel() if self.sizes is None else self.sizes)
        return torch.sqrt(squares).to(x.dtype)

    def each(self, r: Tensor) -> Tensor:
        """Each tensor's r, spread over its elements when packed."""
        return r if self.seg is None else r[self.seg]


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
    """The compiled step of ``rule`` (a name of ``variants.VARIANTS``), called as
    ``compiled_step`` is, less the variant.

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
    compiled = torch.compile(own_copy(compiled_step, rule, variant=VARIANTS[rule]), fullgraph=True,
                             dynamic=True, options=options)

    def step(*args: Tensor | None) -> Tensor:
        try:
            return compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            raise CompileFailed(str(err)) from err

    return step


def own_copy(fn: Callable, rule: str, variant: Variant) -> Callable:
    """``fn`` with ``variant`` as its default, under a code object of its own. torch.compile keeps
    one cache per code object, of at most 8 graphs (``recompile_limit``), and each rule brings up
    to 4 (packed or not, float32 or float64): a shared code object (or a ``partial``) would stop
    compiling at the third rule."""
    name = f"{fn.__name__}_{rule}"
    copy = types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__)
    copy.__kwdefaults__ = {**(fn.__kwdefaults__ or {}), "variant": variant}
    return copy


class FusedStep:
    """The compiled step over one param group's tensors: one kernel call per large tensor, one for
    all the small ones laid end to end. If torch.compile fails, it warns once, steps the tensors
    not yet stepped with ``foreach``, and ``failed`` stays set (later steps take foreach)."""

    def __init__(self):
        self.failed = False
        self._layouts: dict[tuple, tuple[Tensor, Tensor]] = {}  # (device, sizes) -> seg, sizes

    def __call__(self, group: dict, w: list[Tensor], state: dict, *,
                 hyper: Callable[[int], rules.Hyper],
                 reference: Callable[[dict, list[Tensor]], list[Tensor]],
                 foreach: Callable[[list[Tensor]], list[Tensor]]) -> list[Tensor]:
        """Step ``w`` (their moments in ``state``); returns r, r1, r2 as vectors in the order of
        ``w``. ``hyper`` gives step t's numbers; ``reference`` steps an empty tensor (whose RMS
        would divide 0 by 0); ``foreach`` is the fallback."""
        done, stats = [], []  # indices into w stepped so far, and their (3, k) columns r, r1, r2
        try:
            step = kernel(group["rule"])
            for t, index in _by_step(state, w).items():
                hp = hyper_parameters(hyper(t), w[index[0]])
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
