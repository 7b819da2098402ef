"""Which LAMB is this? Each published LAMB as one row of named pieces: where weight decay enters,
where the bias correction goes, the norm, what the clamp c clips, the trust ratio's own clip,
global gradient clipping, which tensors get the ratio, and the published ε, betas and source.

``rules.lamb`` executes a Variant piece by piece, and the compiled step compiles that same code; the
multi-tensor step reads the same pieces. All are tested against the reference, so a rule made of
these pieces is one row here plus its parity test. Torch-free: configs and `lambexp rules` read this
table too, and ``Variant.resolve`` is where both Lamb and a config fill in what is left to the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# λ·w added to g before the moments (L2), or to the update u; or w shrunk by lr·λ before r (AdamW's)
Decay = Literal["gradient", "update", "decoupled"]
Correction = Literal["moments", "step", "none"]  # m̂, v̂ before the ratio; folded into the step size
Norm = Literal["l2", "rms"]  # ‖x‖, or ‖x‖/√n (the ratio is the same; the logged r1, r2 are not)
ClampOn = Literal["r", "w_norm", "none"]  # what c clips: r itself (blog), or ‖w‖ (the paper's φ)


@dataclass(frozen=True)
class Variant:
    """One LAMB, as its code runs it by default."""

    name: str
    decay: Decay
    correction: Correction  # with bias correction on (its default where ``switch`` is None)
    norm: Norm
    clamp_on: ClampOn
    eps: float
    betas: tuple[float, float]
    source: str  # repository and commit (or package and version), file and lines
    switch: Correction | None = None  # the correction with bias_correction off; None: not switchable
    corrected_by_default: bool = True  # bias_correction's published default
    grad_clip_norm: float | None = None  # global gradient-norm clip before the step, by default
    always_adapt: bool = True  # False: the ratio only on tensors whose weight decay is not 0
    trust_clip: float | None = None  # r ≤ this (LAMBC: 1), by default
    trust_list_follows_decay: bool = False  # no exclude_from_trust: the decay list serves (TFA)
    note: str = ""

    def correction_for(self, bias_correction: bool) -> Correction:
        """The correction a step makes with bias correction on or off."""
        if bias_correction:
            return self.correction
        if self.switch is None:
            raise ValueError(self.without_switch("bias_correction=False"))
        return self.switch

    def without_switch(self, where: str) -> str:
        """Why ``bias_correction`` is refused on a rule without the switch; ``where`` names what
        set it (an arm, an argument). One sentence, for Lamb and the config alike."""
        return (f"rule {self.name} has no bias-correction switch ({where}: it {self.what_correction()});"
                f" drop bias_correction, or pick a rule with the switch: {', '.join(SWITCHED_RULES)}")

    def has_switch(self, key: str) -> bool:
        """Whether this rule reads its own switch ``key`` (one of RULE_SWITCHES)."""
        return {"bias_correction": self.switch is not None, "clamp": self.clamp_on != "none"}[key]

    def without(self, key: str, where: str) -> str:
        """Why this rule ignores switch ``key`` (``has_switch`` false), naming ``where`` it was set."""
        if key == "bias_correction":
            return self.without_switch(where)
        return f"rule {self.name} has no clamp ({where}); trust_clip clips r"

    def resolve(self, options: dict) -> dict:
        """``options`` (Lamb's, or a config arm's) with each one left to the rule (``LEFT_TO_RULE``)
        replaced by the rule's own: ε, bias correction, always_adapt, the global gradient clip."""
        own = {"eps": self.eps, "bias_correction": self.corrected_by_default,
               "always_adapt": self.always_adapt, "grad_clip_norm": self.grad_clip_norm}
        return {**options, **{key: own[key] for key, unset in LEFT_TO_RULE.items()
                              if key in options and options[key] == unset}}

    def what_correction(self) -> str:
        """What a rule without the switch does about the bias, in words (for config errors)."""
        return {"moments": "always divides m and v by (1-βᵗ)", "none": "never corrects the bias",
                "step": "always folds the correction into its step size"}[self.correction]

    def facts(self) -> dict[str, object]:
        """The variant as JSON values, one entry per column of `lambexp rules` (``--json``): the
        pieces in words; eps, betas and the gradient clip as numbers (None: no clip)."""
        decay = {"gradient": "gradient (L2)", "update": "update (inside r2)",
                 "decoupled": "weights (w·(1−lr·λ), before r1)"}[self.decay]
        corrections = {"moments": "on m and v", "step": "in the step size", "none": "none"}
        correction = corrections[self.correction if self.corrected_by_default else self.switch]
        if self.switch is not None:
            other = self.switch if self.corrected_by_default else self.correction
            correction += f" (switch: {corrections[other]})"
        clip = {"r": "r ≤ c (10)", "w_norm": "φ = min(‖w‖, c=10)", "none": "none"}[self.clamp_on]
        return {"rule": self.name, "decay enters": decay, "bias correction": correction,
                "norm": "RMS" if self.norm == "rms" else "L2", "clamp": clip,
                "grad clip": self.grad_clip_norm,
                "trust ratio on": "every tensor" if self.always_adapt else "tensors with decay",
                "eps": self.eps, "betas": list(self.betas), "source": self.source}

    def row(self) -> dict[str, str]:
        """The variant in words, one entry per column of the `lambexp rules` table."""
        facts = self.facts()
        return {**facts, "grad clip": f"global {self.grad_clip_norm:g}" if self.grad_clip_norm else "none",
                "eps": f"{self.eps:g}", "betas": f"{self.betas[0]:g}, {self.betas[1]:g}"}


PYTORCH_LAMB = "cybertronai/pytorch-lamb"
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("blog", decay="gradient", correction="step", norm="rms", clamp_on="r", eps=1e-8,
            betas=(0.9, 0.999), source=f"{PYTORCH_LAMB} ff2245e (May 2019), pytorch_lamb/lamb.py 91-117",
            note="the post's; it ran betas (0.9, 0.99)"),
    Variant("readme2019", decay="update", correction="none", norm="l2", clamp_on="w_norm", eps=1e-6,
            betas=(0.9, 0.999), source=f"{PYTORCH_LAMB} 207f672 (June 2019), pytorch_lamb/lamb.py 92-120",
            note="the paper's v3: no bias correction; E6's rule"),
    Variant("paper", decay="update", correction="moments", switch="none", norm="l2",
            clamp_on="w_norm", eps=1e-6, betas=(0.9, 0.999),
            source="You et al., ICLR 2020 (arXiv 1904.00962 v5), Algorithm 2",
            note="φ(‖w‖) = min(‖w‖, c)"),
    Variant("timm", decay="update", correction="moments", switch="none", norm="l2", clamp_on="none",
            eps=1e-6, betas=(0.9, 0.999), grad_clip_norm=1.0, always_adapt=False,
            source="timm 1.0.31, timm/optim/lamb.py 95-371",
            note="trust_clip 1 is LAMBC"),
    Variant("nvlamb", decay="update", correction="moments", switch="none", norm="l2",
            clamp_on="none", eps=1e-6, betas=(0.9, 0.999), grad_clip_norm=1.0,
            source="NVIDIA/apex 6424da3, apex/optimizers/fused_lamb.py 125-242,"
                   " csrc/multi_tensor_lamb.cu 38-319",
            note="use_nvlamb=True; always_adapt: false is apex's default"),
    Variant("optax", decay="update", correction="moments", norm="l2", clamp_on="none", eps=1e-6,
            betas=(0.9, 0.999), source="optax 0.2.8, optax/_src/alias.py 1234-1300, transform.py 246-309,"
                                       " 1038-1080"),
    Variant("torch_optimizer", decay="update", correction="step", switch="none", norm="l2",
            clamp_on="w_norm", eps=1e-6, betas=(0.9, 0.999), corrected_by_default=False,
            source="torch-optimizer 0.3.0, torch_optimizer/lamb.py 82-158",
            note="bias_correction is its debias, folded into the step size after r"),
    Variant("tfa", decay="update", correction="moments", norm="l2", clamp_on="none", eps=1e-6,
            betas=(0.9, 0.999), trust_list_follows_decay=True,
            source="tensorflow/addons d208d75, tensorflow_addons/optimizers/lamb.py 107-112, 144-254",
            note="exclude_from_decay / exclude_from_trust are its two lists"),
    Variant("timm_decoupled", decay="decoupled", correction="moments", switch="none", norm="l2",
            clamp_on="none", eps=1e-6, betas=(0.9, 0.999), grad_clip_norm=1.0, always_adapt=False,
            source="timm 1.0.31, timm/optim/lamb.py 316-368 (decoupled_decay=True)",
            note="AdamW's decay: w ← w·(1−lr·λ) before the ratio, u without λ·w"),
)}
RULES = tuple(VARIANTS)
DEFAULT_EPS = {name: variant.eps for name, variant in VARIANTS.items()}
TORCH_ADAM_EPS = 1e-8  # torch.optim.Adam's own default, for the torch_adam arms
LAMB_OPTIMIZERS = ("adam", "lamb")  # the optimizers that step by a row of this table
RULE_SWITCHES = ("bias_correction", "clamp")  # settings only some rules read (Variant.has_switch)


def uses_lamb_rule(optimizer: str) -> bool:
    """adam and lamb step by a LAMB rule (``rule``, ``bias_correction``, ``eps``, ``clamp`` apply);
    lars, sgd and torch_adam do not."""
    return optimizer in LAMB_OPTIMIZERS

SWITCHED_RULES = tuple(name for name, v in VARIANTS.items() if v.switch is not None)
# The options a LAMB step leaves to its rule, and the value that leaves them (``Variant.resolve``).
LEFT_TO_RULE = {"eps": None, "bias_correction": None, "always_adapt": None, "grad_clip_norm": "rule"}

# Parameter-name patterns (exclude_from_decay, exclude_from_trust): a regular expression searched in
# the name (as TF-Addons matches), or this one form for every tensor of rank 0 or 1 (biases, norms).
RANK_FORM = "ndim<=1"


def pattern_matches(pattern: str, name: str, ndim: int) -> bool:
    """Whether ``pattern`` picks the parameter ``name`` of rank ``ndim``."""
    return ndim <= 1 if pattern == RANK_FORM else re.search(pattern, name) is not None
