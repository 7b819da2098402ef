"""``Lamb``: every published LAMB (``variants.VARIANTS``), stepped by the reference of ``rules.py``
or, by default, by a multi-tensor step that reads the same pieces."""

from __future__ import annotations

import math
import warnings
from functools import cache, partial

import torch
from torch import Tensor

from lambexp.optim import fused, rules, trust
from lambexp.optim.trust import (
    Scratch,
    TrustRatioOptimizer,
    check_range,
    in_cache_chunks,
)
from lambexp.optim.variants import RULES, VARIANTS


class Lamb(TrustRatioOptimizer):
    """LAMB (You et al., "Large Batch Optimization for Deep Learning", 2019/2020).

    Args:
        params: parameters, ``named_parameters()``, or param groups (dicts); every option
            below may be set per group, e.g. ``{"params": biases, "weight_decay": 0, "adam": True}``
            keeps biases out of decay and out of the trust-ratio adaptation.
        lr: learning rate (default 1e-3).
        betas: (β1, β2), the moment decay rates (default (0.9, 0.999); the blog ran (0.9, 0.99)).
        eps: ε added to √v; default ``None`` picks the rule's own (1e-8 for blog, 1e-6 for the
            others: ``variants.VARIANTS``).
        weight_decay: λ (default 0). The blog rule adds λ·w to the gradient (L2); the others add
            it to the update.
        rule: a name of ``variants.VARIANTS`` (docs/rules.md): ``"blog"`` (default), ``"paper"``,
            ``"readme2019"``, ``"timm"``, ``"nvlamb"``, ``"optax"``, ``"torch_optimizer"``,
            ``"tfa"``. The blog rule is the default because lambexp exists to reproduce the blog's
            experiments, which ran it.
        clamp: c (default 10), for the rules that have one: blog clips r at c; paper, readme2019
            and torch_optimizer clamp ‖w‖ at c (the paper's φ). ``None``: no clip or clamp.
        adam: compute and record r, r1, r2 but update with r = 1 (the blog's Adam baseline).
        bias_correction: where the rule has the switch (paper, timm, nvlamb: the moments;
            torch_optimizer: its ``debias``, folded into the step size). ``None`` (default): the
            rule's published default. The blog rule always folds it into the step size.
        trust_clip: r ≤ this (timm's ``trust_clip``: 1, LAMBC); ``None`` (default): no clip.
        always_adapt: ``False``: the ratio only on tensors whose weight decay is not 0 (timm's and
            apex's default); ``None`` (default): the rule's own.
        grad_clip_norm: before the step, every gradient g ← g / max(1, G / this), G the L2 norm
            over all of them (in place, as ``torch.nn.utils.clip_grad_norm_``); ``"rule"``
            (default): the rule's own (1.0 for timm and nvlamb, else none); ``None``: none. Read
            from the constructor, for every group. G before the clip is kept in ``grad_norm``.
        trust_ratio: ``False`` keeps a group out of the trust ratio: r = 1, applied and logged
            (e.g. ``{"params": biases, "trust_ratio": False}``, TF-Addons' exclusion). Default True.
        foreach: ``True`` or ``None`` (default): the multi-tensor ``torch._foreach_*`` step;
            ``False``: one tensor at a time through the reference functions of ``rules.py``.
        fused: ``True``: the step as kernels that ``torch.compile`` (inductor) generates from
            ``fused.py``: one call per tensor over ``fused.PACK_NUMEL`` elements, one for all
            smaller tensors laid end to end; each does the whole update in two passes over
            memory (moments, r1, r2 in the first; w in the second). The first step compiles,
            which needs a C++ compiler and takes seconds; worth it for runs of more than a few
            hundred steps (docs/optimizer.md has the measured speeds and compile times). If
            torch.compile cannot run here, Lamb warns once and takes the foreach step. Cannot
            be combined with ``foreach=False``. Default ``False``.

    After each step, :meth:`trust_stats` returns the latest r, r1, r2 of every tensor, kept on
    the device. Sparse gradients are refused; parameters without a gradient are skipped.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float | None = None, weight_decay: float = 0.0, *, rule: str = "blog",
                 clamp: float | None = 10.0, adam: bool = False, bias_correction: bool | None = None,
                 trust_clip: float | None = None, always_adapt: bool | None = None,
                 grad_clip_norm: float | str | None = "rule", trust_ratio: bool = True,
                 foreach: bool | None = None, fused: bool = False):
        if grad_clip_norm == "rule":
            grad_clip_norm = VARIANTS[rule].grad_clip_norm if rule in VARIANTS else None
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rule=rule,
                        clamp=clamp, adam=adam, bias_correction=bias_correction, trust_clip=trust_clip,
                        always_adapt=always_adapt, grad_clip_norm=grad_clip_norm,
                        trust_ratio=trust_ratio, foreach=foreach, fused=fused)
        self.grad_norm: Tensor | None = None  # G before the last step's clip (when clipping)
        self._compile_failed = False  # set when torch.compile failed: fused groups take foreach
        self._layouts: dict[tuple, tuple[Tensor, Tensor]] = {}  # fused: (device, sizes) -> seg, sizes
        self._scratch = Scratch()  # the CPU foreach step's temporaries, reused
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_range("rule", group["rule"], group["rule"] in RULES, f"one of {', '.join(RULES)}")
        variant = VARIANTS[group["rule"]]
        for key, value in (("eps", variant.eps), ("bias_correction", variant.corrected_by_default),
                           ("always_adapt", variant.always_adapt)):
            if group[key] is None:
                group[key] = value
        validate_group(group)

    def __setstate__(self, state: dict) -> None:
        """After ``load_state_dict``: groups saved before an option existed get its default."""
        super().__setstate__(state)
        for group in self.param_groups:
            variant = VARIANTS.get(group.get("rule"), VARIANTS["blog"])
            group.setdefault("trust_clip", None)
            group.setdefault("always_adapt", variant.always_adapt)
            group.setdefault("grad_clip_norm", None)
            group.setdefault("trust_ratio", True)

    def _kept_out(self, group: dict) -> bool:
        return not adapts(group)

    def _before_groups(self) -> None:
        """The global gradient clip, over every gradient of every group, in place."""
        limit = self.defaults["grad_clip_norm"]
        if limit is None:
            return
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self.grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_div_(grads, torch.clamp(self.grad_norm / limit, min=1.0))

    def _step_tensors(self, group: dict, w: list[Tensor]):
        for p in w:
            self._advance(p)
        if group["foreach"] is False:
            return self._reference_step(group, w)
        if group.get("fused") and not self._compile_failed:
            return self._fused_step(group, w)
        return in_cache_chunks(partial(self._foreach_step, group), w)

    def _advance(self, p: Tensor) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1

    def _reference_step(self, group: dict, w: list[Tensor]):
        beta1, beta2 = group["betas"]
        out = []
        for p in w:
            state = self.state[p]
            new = rules.lamb(VARIANTS[group["rule"]], p, p.grad, state["m"], state["v"], state["step"],
                             lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                             weight_decay=group["weight_decay"], clamp=group["clamp"],
                             bias_correction=group["bias_correction"], trust_clip=group["trust_clip"],
                             adapt=adapts(group), adam=group["adam"])
            p.copy_(new.w)
            state["m"], state["v"] = new.m, new.v
            out.append((new.r, new.r1, new.r2))
        return [torch.stack(col) for col in zip(*out)]

    def _fused_step(self, group: dict, w: list[Tensor]):
        """fused.py's compiled step: one call per large tensor, one for all the small ones.

        If torch.compile fails, warn and step the tensors not yet stepped with foreach.
        """
        done, stats = [], []  # indices into w stepped so far, and their (3, k) columns r, r1, r2
        try:
            kernel = fused.kernel(group["rule"])
            for t, index in _by_step(self.state, w).items():
                hp = fused.hyper_parameters(group, t, w[index[0]])
                small = [j for j in index if fused.packable(w[j], self.state[w[j]])]
                if small:  # even one: its own graph would bring one more compile
                    stats.append(self._packed_step(kernel, [w[j] for j in small], hp))
                    done += small
                for j in sorted(set(index) - set(done)):
                    p, state = w[j], self.state[w[j]]
                    if p.numel() == 0:  # the kernel's RMS would divide 0 by 0
                        stats.append(torch.stack(self._reference_step(group, [p])))
                    else:
                        stats.append(kernel(*_flat(p, p.grad, state["m"], state["v"]), hp)[:, None])
                    done.append(j)
        except fused.CompileFailed as err:
            self._compile_failed = True
            warnings.warn(f"Lamb(fused=True): torch.compile failed, using the foreach step "
                          f"instead ({str(err).strip().splitlines()[0]})", stacklevel=3)
            rest = sorted(set(range(len(w))) - set(done))
            stats.append(torch.stack(in_cache_chunks(partial(self._foreach_step, group),
                                                     [w[j] for j in rest])))
            done += rest
        table = torch.cat(stats, dim=1)
        if done != sorted(done):  # back to the order of w
            table = table[:, torch.tensor(done, device=table.device).argsort()]
        return list(table)

    def _packed_step(self, kernel, w: list[Tensor], hp: Tensor) -> Tensor:
        """Small tensors laid end to end through one kernel call; returns their (3, T) stats."""
        sizes = tuple(p.numel() for p in w)
        key = (w[0].device, sizes)
        if key not in self._layouts:
            if len(self._layouts) >= 16:  # the set of tensors with a gradient keeps changing
                self._layouts.clear()
            self._layouts[key] = fused.pack(w)
        flat_w = [p.view(-1) for p in w]
        flat_m = [self.state[p]["m"].view(-1) for p in w]
        flat_v = [self.state[p]["v"].view(-1) for p in w]
        packed = [torch.cat(xs) for xs in (flat_w, [p.grad.reshape(-1) for p in w], flat_m, flat_v)]
        stats = kernel(*packed, hp, *self._layouts[key])
        for xs, x in zip((flat_w, flat_m, flat_v), (packed[0], packed[2], packed[3])):
            torch._foreach_copy_(xs, x.split(sizes))
        return stats

    def _foreach_step(self, group: dict, w: list[Tensor]):
        """The rule on the tensors ``w``: the elementwise part (the moments and the direction the
        rule scales by r), the norms over whole tensors, then the update.

        The elementwise part is ``_direction``: ``torch._foreach_*`` ops equation by equation as
        in ``rules.py``, on the CPU with every temporary in reused scratch buffers (``Scratch``).
        A CPU tensor too large to share a cache chunk takes ``_adam_kernel_step`` instead."""
        steps = [self.state[p]["step"] for p in w]
        g = [p.grad for p in w]
        m = [self.state[p]["m"] for p in w]
        v = [self.state[p]["v"] for p in w]
        cpu = w[0].device.type == "cpu"
        variant = VARIANTS[group["rule"]]
        if cpu and _adam_kernel_fits(w, g, m, v):
            d, r1, r2, coef = self._adam_kernel_step(group, w[0], g[0], m[0], v[0], steps[0])
        else:
            d = self._direction(group, w, g, m, v, steps, self._scratch.like(2, w) if cpu else None)
            norms = rules.rms_each if variant.norm == "rms" else _norm_each
            r1, r2 = norms(w), norms(d)
            beta1, beta2 = group["betas"]
            step_size = _corrected(group) == "step"
            coef = [group["lr"] * (math.sqrt(1 - beta2**t) / (1 - beta1**t) if step_size else 1.0)
                    for t in steps]
        if variant.clamp_on == "w_norm":
            r1 = rules.clamped(r1, group["clamp"])
        r = rules.ratio(r1, r2, group["clamp"] if variant.clamp_on == "r" else None)
        if group["trust_clip"] is not None:
            r = rules.clamped(r, group["trust_clip"])
        if not adapts(group):
            r = torch.ones_like(r)
        _descend(w, d, coef, None if group["adam"] else r)
        return r, r1, r2

    def _adam_kernel_step(self, group: dict, w: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int):
        """``_foreach_step``'s first part for one large CPU tensor, in fewer passes over memory:
        LAMB's direction is Adam's, so torch's fused Adam kernel makes it, with the moments, in
        one pass; the norms are dot products, which use every thread (``_foreach_norm`` one).
        Equal to the rule to float rounding (tested); LeNet's fc1.weight (400,000) is one.

        The kernel, run with lr 1 on a scratch tensor d as its parameter, writes
        d ← d − c·m̂/(√v̂ + ε'). With c = 1 and ε' = ε where the rule divides m and v by their
        bias corrections (paper), else c = √(1−β2ᵗ)/(1−β1ᵗ) and ε' = ε/√(1−β2ᵗ), that is
        d − c·m/(√v + ε). Starting from d = −c·λ·w (the paper's decoupled decay; the blog's
        λ·w goes into g), d = −c·direction. Returns d, r1, r2 and the coefficient of d in the
        update w ← w − coef·r·d."""
        beta1, beta2 = group["betas"]
        lam, eps = group["weight_decay"], group["eps"]
        variant, correction = VARIANTS[group["rule"]], _corrected(group)
        corrected = correction == "moments"
        c = 1.0 if corrected else math.sqrt(1 - beta2**t) / (1 - beta1**t)
        d = self._scratch.like(2, [w])[0]
        if variant.decay == "gradient" and lam:
            g = torch.add(g, w, alpha=lam, out=self._scratch.like(0, [g])[0])  # g + λ·w
        if variant.decay == "update" and lam:
            torch.mul(w, -c * lam, out=d)
        else:
            d.zero_()
        torch._fused_adam_([d], [g], [m], [v], [], [torch.tensor(float(t))], lr=1.0,
                           beta1=beta1, beta2=beta2, weight_decay=0.0,
                           eps=eps if corrected else eps / math.sqrt(1 - beta2**t),
                           amsgrad=False, maximize=False)
        flat_w, flat_d = w.view(-1), d.view(-1)
        norm_w, norm_dir = torch.dot(flat_w, flat_w).sqrt(), torch.dot(flat_d, flat_d).sqrt() / c
        if variant.norm == "rms":
            root_n = math.sqrt(w.numel())
            norm_w, norm_dir = norm_w / root_n, norm_dir / root_n
        # w ← w − s·r·u with d = −c·u: coef·d, coef = −s/c; s = lr·c when the step carries it
        coef = -group["lr"] if correction == "step" else -group["lr"] / c
        return [d], norm_w[None], norm_dir[None], [coef]

    def _direction(self, group: dict, w: list[Tensor], g: list[Tensor], m: list[Tensor],
                   v: list[Tensor], steps: list[int], out: list[Tensor] | None) -> list[Tensor]:
        """m ← β1·m + (1−β1)·g and v ← β2·v + (1−β2)·g² in place, and the direction u the rule
        scales by r, piece by piece as ``rules.lamb``: λ·w added to g first (decay "gradient") or
        to u (decay "update"); u = m̂/(√v̂ + ε) with the correction "moments", else m/(√v + ε).
        On the CPU (``out`` given) it is written into ``out`` and the temporaries into scratch;
        elsewhere (``out`` None) the foreach ops make new tensors."""
        beta1, beta2 = group["betas"]
        lam, eps = group["weight_decay"], group["eps"]

        def into(dest, foreach_op, op, *args: list) -> list[Tensor]:
            """``foreach_op(*args)``, or on the CPU the same ``op`` tensor by tensor written into
            ``dest``: a list of tensors, or the number of a scratch slot (nothing allocated)."""
            if out is None:
                return foreach_op(*args)
            dest = self._scratch.like(dest, args[0]) if isinstance(dest, int) else dest
            for *xs, o in zip(*args, dest):
                op(*xs, out=o)
            return dest

        variant = VARIANTS[group["rule"]]
        if variant.decay == "gradient" and lam:
            g = into(0, partial(torch._foreach_add, alpha=lam), partial(torch.add, alpha=lam), g, w)
        torch._foreach_lerp_(m, g, 1 - beta1)  # m ← β1·m + (1−β1)·g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)  # v ← β2·v + (1−β2)·g²
        if _corrected(group) != "moments" and not (variant.decay == "update" and lam):
            denom = into(out, torch._foreach_sqrt, torch.sqrt, v)
            torch._foreach_add_(denom, eps)
            return into(out, torch._foreach_div, torch.div, m, denom)  # u = m / (√v + ε)
        bc1, bc2 = _bias_corrections(steps, beta1, beta2, _corrected(group) == "moments")
        denom = into(1, torch._foreach_sqrt, torch.sqrt, v)
        torch._foreach_div_(denom, [math.sqrt(b) for b in bc2])
        torch._foreach_add_(denom, eps)  # √v̂ + ε
        u = into(out, torch._foreach_div, torch.div, m, bc1)  # m̂
        torch._foreach_div_(u, denom)
        if lam:
            torch._foreach_add_(u, w, alpha=lam)  # u = m̂/(√v̂ + ε) + λ·w
        return u


def _adam_kernel_fits(w: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor]) -> bool:
    """A CPU chunk of one tensor too large to share a cache chunk, which torch's fused Adam
    kernel can step: contiguous, in a floating dtype it takes."""
    return (len(w) == 1 and w[0].numel() > trust.CPU_CHUNK_NUMEL
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


def _bias_corrections(steps: list[int], beta1: float, beta2: float, on: bool):
    if not on:
        return [1.0] * len(steps), [1.0] * len(steps)
    return [1 - beta1**t for t in steps], [1 - beta2**t for t in steps]


def _descend(w: list[Tensor], d: list[Tensor], coef: list[float], r: Tensor | None) -> None:
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


def _corrected(group: dict) -> str:
    """The group's bias correction: "moments", "step" or "none" (``Variant.correction_for``)."""
    return VARIANTS[group["rule"]].correction_for(group["bias_correction"])


def _norm_each(xs: list[Tensor]) -> Tensor:
    """‖x‖ of each tensor of ``xs``, as one vector, in one multi-tensor norm."""
    return torch.stack(torch._foreach_norm(xs))


def adapts(group: dict) -> bool:
    """Whether the group's tensors get the trust ratio: unless kept out of it (``trust_ratio``), or
    the rule adapts only tensors with weight decay (timm, apex) and this group has none."""
    return bool(group["trust_ratio"] and (group["always_adapt"] or group["weight_decay"] != 0))


def validate_group(group: dict) -> None:
    """Refuse impossible hyper-parameters with a ValueError naming the argument and value."""
    variant = VARIANTS[group["rule"]]
    if not group["bias_correction"] and variant.switch is None:
        raise ValueError(f"rule {group['rule']!r} has no bias-correction switch (bias_correction=False)")
    beta1, beta2 = group["betas"]
    check_range("lr", group["lr"], group["lr"] >= 0, ">= 0")
    check_range("betas[0]", beta1, 0 <= beta1 < 1, "in [0, 1)")
    check_range("betas[1]", beta2, 0 <= beta2 < 1, "in [0, 1)")
    check_range("eps", group["eps"], group["eps"] is not None and group["eps"] >= 0, ">= 0")
    check_range("weight_decay", group["weight_decay"], group["weight_decay"] >= 0, ">= 0")
    clamp = group["clamp"]
    check_range("clamp", clamp, clamp is None or clamp > 0, "> 0 or None")
    trust_clip = group.get("trust_clip")
    check_range("trust_clip", trust_clip, trust_clip is None or trust_clip > 0, "> 0 or None")
    if group.get("fused") and group["rule"] not in fused.RULES:
        raise ValueError(f"fused=True compiles the {' and '.join(fused.RULES)} rules; rule"
                         f" {group['rule']!r} takes the default step (fused=False)")
    if group.get("fused") and not (group["trust_clip"] is None and group["always_adapt"]
                                   and group["trust_ratio"]):
        raise ValueError("fused=True compiles the ratio on every tensor, unclipped: it cannot take"
                         " trust_clip, always_adapt=False or trust_ratio=False (use fused=False)")
    if group.get("fused") and group["foreach"] is False:
        raise ValueError("fused=True and foreach=False cannot be combined: fused=True replaces "
                         "the foreach step; foreach=False asks for the reference step")
