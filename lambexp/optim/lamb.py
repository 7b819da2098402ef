"""``Lamb``: every published LAMB (``variants.VARIANTS``) as a torch optimizer.

This file turns a param group into the rule's pieces (the variant, its bias correction, whether the
tensors are adapted, all in ``hyper``) and hands them to a step: the reference of ``rules.py``
(``foreach=False``), or, for speed, the multi-tensor step or the compiled one of ``optim/fast/``,
both tested against it. The equations are in ``rules.py``; which pieces each variant takes, in
``variants.py``."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from lambexp.base.variants import RULES, VARIANTS
from lambexp.optim import rules
from lambexp.optim.fast import foreach
from lambexp.optim.fast.chunks import Scratch, in_cache_chunks
from lambexp.optim.fast.fused import FusedStep
from lambexp.optim.trust import TrustRatioOptimizer, check_range


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
        weight_decay: λ (default 0), where the rule puts it: the blog rule adds λ·w to the
            gradient (L2), the paper's and most others to the update, a "decoupled" one shrinks w.
        rule: a name of ``variants.VARIANTS`` (docs/rules.md, ``lambexp rules``): ``"blog"``
            (default), ``"paper"``, or a published code's own. The blog rule is the default
            because lambexp exists to reproduce the blog's experiments, which ran it.
        clamp: c (default 10), for the rules that have one: blog clips r at c; paper, readme2019
            and torch_optimizer clamp ‖w‖ at c (the paper's φ). ``None``: no clip or clamp.
        clamp_min: γ_l, the lower bound of the paper's φ: φ(‖w‖) = min(max(‖w‖, clamp_min), clamp)
            (GluonNLP's LAMB: 1e-3). Only for the rules that clamp ‖w‖ (paper, readme2019,
            torch_optimizer); set on another rule it is refused. ``None`` (default): no lower bound.
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
            the rule's own ``rules.lamb_update``, any rule and option (``optim/fast/fused.py``):
            one call per tensor over ``fused.PACK_NUMEL`` elements, one for all
            smaller tensors laid end to end; each does the whole update in two passes over
            memory (moments, r1, r2 in the first; w in the second). The first step compiles,
            which needs a C++ compiler and takes seconds; worth it for runs of more than a few
            hundred steps (docs/optimizer.md has the measured speeds and compile times). If
            torch.compile cannot run here, Lamb warns once and takes the foreach step. Cannot
            be combined with ``foreach=False``. Default ``False``.

    After each step, :meth:`trust_stats` returns the latest r, r1, r2 of every tensor, kept on
    the device. Sparse gradients are refused; parameters without a gradient are skipped. The step
    count t of the bias correction is the rule's ``step_counter``: the tensor's own steps
    (pytorch-lamb, torch-optimizer), or every ``step()`` of its group (timm, apex) or of the
    optimizer (optax, TF-Addons, the paper), kept in the group's ``"step"``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float | None = None, weight_decay: float = 0.0, *, rule: str = "blog",
                 clamp: float | None = 10.0, adam: bool = False, bias_correction: bool | None = None,
                 trust_clip: float | None = None, always_adapt: bool | None = None,
                 grad_clip_norm: float | str | None = "rule", trust_ratio: bool = True,
                 foreach: bool | None = None, fused: bool = False, clamp_min: float | None = None):
        if rule in VARIANTS:  # an unknown rule is refused by add_param_group
            grad_clip_norm = VARIANTS[rule].resolve({"grad_clip_norm": grad_clip_norm})["grad_clip_norm"]
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rule=rule,
                        clamp=clamp, clamp_min=clamp_min, adam=adam, bias_correction=bias_correction,
                        trust_clip=trust_clip, always_adapt=always_adapt, grad_clip_norm=grad_clip_norm,
                        trust_ratio=trust_ratio, foreach=foreach, fused=fused)
        self.grad_norm: Tensor | None = None  # G before the last step's clip (when clipping)
        self._fused = FusedStep()  # the compiled step's layouts; failed: take foreach
        self._scratch = Scratch()  # the CPU foreach step's temporaries, reused
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_range("rule", group["rule"], group["rule"] in RULES, f"one of {', '.join(RULES)}")
        options = {key: group[key] for key in ("eps", "bias_correction", "always_adapt")}
        group.update(VARIANTS[group["rule"]].resolve(options))
        validate_group(group)
        # the step() calls counted so far: none for a new group, unless the count is the optimizer's
        group.setdefault("step", 0 if VARIANTS[group["rule"]].step_counter != "global"
                         else max((g.get("step", 0) for g in self.param_groups[:-1]), default=0))

    def __setstate__(self, state: dict) -> None:
        """After ``load_state_dict``: groups saved before an option existed get its default."""
        super().__setstate__(state)
        for group in self.param_groups:
            variant = VARIANTS.get(group.get("rule"), VARIANTS["blog"])
            group.setdefault("trust_clip", None)
            group.setdefault("always_adapt", variant.always_adapt)
            group.setdefault("grad_clip_norm", None)
            group.setdefault("trust_ratio", True)
            group.setdefault("clamp_min", None)
            group.setdefault("step", max((self.state[p].get("step", 0) for p in group["params"]
                                          if p in self.state), default=0))

    def _kept_out(self, group: dict) -> bool:
        return not adapts(group)

    def _before_groups(self) -> None:
        """Each group's count of step() calls (the t of the rules counting per group or globally),
        then the global gradient clip, over every gradient of every group, in place."""
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
        limit = self.defaults["grad_clip_norm"]
        if limit is None:
            return
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self.grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_div_(grads, torch.clamp(self.grad_norm / limit, min=1.0))

    def _step_tensors(self, group: dict, w: list[Tensor]):
        own = VARIANTS[group["rule"]].step_counter == "tensor"
        for p in w:
            self._advance(p, None if own else group["step"])
        if group["foreach"] is False:
            return self._reference_step(group, w)
        if group.get("fused") and not self._fused.failed:
            return self._fused(group, w, self.state, hyper=partial(hyper, group),
                               reference=self._reference_step, foreach=partial(self._foreach_step, group))
        return self._foreach_step(group, w)

    def _advance(self, p: Tensor, t: int | None) -> None:
        """The tensor's step count: its own plus one, or ``t``, its group's (or the optimizer's)."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] = state["step"] + 1 if t is None else t

    def _reference_step(self, group: dict, w: list[Tensor]):
        variant, out = VARIANTS[group["rule"]], []
        for p in w:
            state = self.state[p]
            new = rules.lamb_update(variant, p, p.grad, state["m"], state["v"],
                                    hyper(group, state["step"]))
            p.copy_(new.w)
            state["m"], state["v"] = new.m, new.v
            out.append((new.r, new.r1, new.r2))
        return [torch.stack(col) for col in zip(*out)]

    def _foreach_step(self, group: dict, w: list[Tensor]):
        """``fast.foreach.lamb_step`` over the cache-sized runs of ``w``."""
        pieces = dict(variant=VARIANTS[group["rule"]], hyper=partial(hyper, group), scratch=self._scratch)

        def run(ws: list[Tensor]):
            state = [self.state[p] for p in ws]
            return foreach.lamb_step(ws, [p.grad for p in ws], [s["m"] for s in state],
                                     [s["v"] for s in state], [s["step"] for s in state], **pieces)

        return in_cache_chunks(run, w)


def hyper(group: dict, t: int) -> rules.Hyper:
    """The numbers of step ``t`` of a param group (``rules.hyper``), for every path of the step."""
    beta1, beta2 = group["betas"]
    return rules.hyper(VARIANTS[group["rule"]], t, lr=group["lr"], beta1=beta1, beta2=beta2,
                       eps=group["eps"], weight_decay=group["weight_decay"], clamp=group["clamp"],
                       bias_correction=group["bias_correction"], trust_clip=group["trust_clip"],
                       adapt=adapts(group), adam=group["adam"], clamp_min=group.get("clamp_min"))


def adapts(group: dict) -> bool:
    """Whether the group's tensors get the trust ratio: unless kept out of it (``trust_ratio``), or
    the rule adapts only tensors with weight decay (timm, apex) and this group has none."""
    return bool(group["trust_ratio"] and (group["always_adapt"] or group["weight_decay"] != 0))


def validate_group(group: dict) -> None:
    """Refuse impossible hyper-parameters with a ValueError naming the argument and value."""
    VARIANTS[group["rule"]].correction_for(group["bias_correction"])  # a switch the rule lacks: refused
    beta1, beta2 = group["betas"]
    check_range("lr", group["lr"], group["lr"] >= 0, ">= 0")
    check_range("betas[0]", beta1, 0 <= beta1 < 1, "in [0, 1)")
    check_range("betas[1]", beta2, 0 <= beta2 < 1, "in [0, 1)")
    check_range("eps", group["eps"], group["eps"] is not None and group["eps"] >= 0, ">= 0")
    check_range("weight_decay", group["weight_decay"], group["weight_decay"] >= 0, ">= 0")
    clamp = group["clamp"]
    check_range("clamp", clamp, clamp is None or clamp > 0, "> 0 or None")
    clamp_min = group.get("clamp_min")
    if clamp_min is not None:
        variant = VARIANTS[group["rule"]]
        if not variant.has_switch("clamp_min"):
            raise ValueError(variant.without("clamp_min", f"clamp_min={clamp_min!r}"))
        check_range("clamp_min", clamp_min, clamp_min > 0 and (clamp is None or clamp_min <= clamp),
                    "> 0 and at most clamp, or None")
    trust_clip = group.get("trust_clip")
    check_range("trust_clip", trust_clip, trust_clip is None or trust_clip > 0, "> 0 or None")
    if group.get("fused") and group["foreach"] is False:
        raise ValueError("fused=True and foreach=False cannot be combined: fused=True replaces "
                         "the foreach step; foreach=False asks for the reference step")
