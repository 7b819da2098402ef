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
# r where ‖w‖ or ‖u‖ is 0: 1 (the guard of most codes), or r1/r2 unguarded (0 at w = 0: the tensor
# never moves; ∞ or NaN at u = 0, which turns w into NaN), as pytorch-lamb of June 2019 divides
ZeroNorm = Literal["one", "ratio"]
# the t of the bias correction: the tensor's own steps, its param group's step() calls, or the
# optimizer's (differ for a tensor without a gradient at some steps, or a group added later)
StepCounter = Literal["tensor", "group", "global"]


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
    zero_norm: ZeroNorm = "one"  # r where ‖w‖ (after φ) or ‖u‖ is 0
    step_counter: StepCounter = "tensor"  # whose count t the bias correction reads
    default_weight_decay: float | None = 0.0  # λ as the code's constructor has it (None: not given)
    not_modelled: tuple[str, ...] = ()  # the code's options lambexp does not run, with what they do
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
        return {"bias_correction": self.switch is not None, "clamp": self.clamp_on != "none",
                "clamp_min": self.clamp_on == "w_norm"}[key]

    def without(self, key: str, where: str) -> str:
        """Why this rule ignores switch ``key`` (``has_switch`` false), naming ``where`` it was set."""
        if key == "bias_correction":
            return self.without_switch(where)
        if key == "clamp_min":
            return (f"rule {self.name} does not clamp ‖w‖ ({where}): clamp_min is the lower bound of"
                    f" the paper's φ, read by {', '.join(W_NORM_RULES)}")
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
        pieces in words; eps, betas, the gradient clip and the default λ as numbers (None: no
        clip, or no default given); the options of its code that lambexp does not run, as a list."""
        decay = {"gradient": "gradient (L2)", "update": "update (inside r2)",
                 "decoupled": "weights (w·(1−lr·λ), before r1)"}[self.decay]
        corrections = {"moments": "on m and v", "step": "in the step size", "none": "none"}
        correction = corrections[self.correction if self.corrected_by_default else self.switch]
        if self.switch is not None:
            other = self.switch if self.corrected_by_default else self.correction
            correction += f" (switch: {corrections[other]})"
        clip = {"r": "r ≤ c (10)", "w_norm": "φ = min(max(‖w‖, clamp_min), c=10)",
                "none": "none"}[self.clamp_on]
        zero = {"one": "r = 1", "ratio": "r = r1/r2 unguarded (0 at w = 0; NaN step at u = 0)"}
        counter = {"tensor": "per tensor (its own steps)", "group": "per param group (its step() calls)",
                   "global": "global (the optimizer's steps)"}
        return {"rule": self.name, "decay enters": decay, "bias correction": correction,
                "norm": "RMS" if self.norm == "rms" else "L2", "clamp": clip,
                "grad clip": self.grad_clip_norm,
                "trust ratio on": "every tensor" if self.always_adapt else "tensors with decay",
                "zero norm": zero[self.zero_norm], "step counter": counter[self.step_counter],
                "default weight decay": self.default_weight_decay,
                "eps": self.eps, "betas": list(self.betas), "source": self.source,
                "not modelled": list(self.not_modelled), "note": self.note}

    def row(self) -> dict[str, str]:
        """The variant in short words, one entry per column of the `lambexp rules` table, which
        fits 100 columns: the long facts (``facts``) are in ``--json`` and docs/rules.md."""
        decay = {"gradient": "g (L2)", "update": "u", "decoupled": "w"}[self.decay]
        short = {"moments": "m,v", "step": "step", "none": "none"}
        correction = short[self.correction if self.corrected_by_default else self.switch]
        if self.switch is not None:
            correction += "/" + short[self.switch if self.corrected_by_default else self.correction]
        wd = "-" if self.default_weight_decay is None else f"{self.default_weight_decay:g}"
        return {"rule": self.name, "λ·w in": decay, "bias corr": correction,
                "norm": "RMS" if self.norm == "rms" else "L2",
                "clamp": {"r": "r≤10", "w_norm": "‖w‖≤10", "none": "-"}[self.clamp_on],
                "clip": f"global {self.grad_clip_norm:g}" if self.grad_clip_norm else "-",
                "r on": "all" if self.always_adapt else "λ>0",
                "r at 0": {"one": "1", "ratio": "r1/r2"}[self.zero_norm], "t": self.step_counter,
                "λ": wd, "eps": f"{self.eps:g}", "source": self.source.split(", ")[0]}


# What each short column of `lambexp rules` (``Variant.row``) means, printed under the table.
ROW_LEGEND = (
    "λ·w in: where weight decay enters (g: the gradient, L2; u: the update, inside r2; w: the weights,"
    " decoupled) · bias corr: m,v (m̂, v̂), step (folded into the step size) or none; a/b: the"
    " correction with bias_correction on/off · clamp: what c clips · clip: the global gradient clip ·"
    " r on: every tensor, or only those with weight decay · r at 0: r where ‖w‖ or ‖u‖ is 0 (r1/r2:"
    " unguarded, 0 at a zero weight) · t: the step counter (per tensor, param group, or global) · λ:"
    " the code's default weight decay. Every fact, with its source lines: `lambexp rules --json`,"
    " docs/rules.md."
)
PYTORCH_LAMB = "cybertronai/pytorch-lamb"
TIMM_NOT_MODELLED = ("grad_averaging=False (m ← β1·m + g)", "caution=True (the Cautious mask on u)",
                     "corrected_weight_decay=True (decoupled λ·lr²/max lr)")
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("blog", decay="gradient", correction="step", norm="rms", clamp_on="r", eps=1e-8,
            betas=(0.9, 0.999), source=f"{PYTORCH_LAMB} ff2245e (May 2019), pytorch_lamb/lamb.py 44-117"
                                       " (λ 0: 45; step per tensor: 81-91; r = 1 at a zero norm: 110)",
            note="the post's; it ran betas (0.9, 0.99)"),
    Variant("readme2019", decay="update", correction="none", norm="l2", clamp_on="w_norm", eps=1e-6,
            betas=(0.9, 0.999), zero_norm="ratio",
            source=f"{PYTORCH_LAMB} 207f672 (June 2019), pytorch_lamb/lamb.py 45-120 (λ 0: 46; step"
                   " per tensor, unused: 82-92; φ = clamp(‖w‖, 0, 10): 106; r = ‖w‖/‖u‖ unguarded: 113)",
            note="the paper's v3: no bias correction; E6's rule; no zero-norm guard (added in cc7bdf9)"),
    Variant("paper", decay="update", correction="moments", switch="none", norm="l2",
            clamp_on="w_norm", eps=1e-6, betas=(0.9, 0.999), step_counter="global",
            default_weight_decay=None,
            source="You et al. ICLR 2020 (arXiv 1904.00962 v5), Algorithm 2 and §3 (φ); c = 10 from"
                   f" {PYTORCH_LAMB} 207f672 lamb.py 106 and torch-optimizer 0.3.0 lamb.py 52;"
                   " (γ_l, γ_u) = (1e-3, 10) from dmlc/gluon-nlp 4d0ec7c,"
                   " src/gluonnlp/optimizer/lamb.py 66-69, 75-76, 109-111",
            note="φ(z) = min(max(z, γ_l), γ_u) with no values given: clamp is γ_u (10, as pytorch-lamb"
                 " and torch-optimizer), clamp_min γ_l (null; GluonNLP's LAMB: 1e-3 and 10); the"
                 " algorithm has no zero-norm guard (φ(0)/‖u‖ = 0): r = 1 is every code's"),
    Variant("timm", decay="update", correction="moments", switch="none", norm="l2", clamp_on="none",
            eps=1e-6, betas=(0.9, 0.999), grad_clip_norm=1.0, always_adapt=False,
            step_counter="group", default_weight_decay=0.01,
            not_modelled=TIMM_NOT_MODELLED,
            source="timm 1.0.31, timm/optim/lamb.py 95-371 (λ 0.01: 102; step per group, counted at"
                   " every step(): 189-198; r = 1 at a zero norm: 301-313)",
            note="trust_clip 1 is LAMBC; its decoupled_decay=True is rule timm_decoupled"),
    Variant("nvlamb", decay="update", correction="moments", switch="none", norm="l2",
            clamp_on="none", eps=1e-6, betas=(0.9, 0.999), grad_clip_norm=1.0, step_counter="group",
            default_weight_decay=0.01,
            not_modelled=("grad_averaging=False (m ← β1·m + g)",
                          "adam_w_mode=False (λ·w in the clipped gradient)",
                          "fp16 parameters (apex steps them in fp32 arithmetic)"),
            source="NVIDIA/apex 6424da3, apex/optimizers/fused_lamb.py 63-242 (λ 0.01: 70; step per"
                   " group, counted at every step(): 167-172), csrc/multi_tensor_lamb.cu 38-319"
                   " (r = 1 at a zero norm: 213-216)",
            note="use_nvlamb=True; always_adapt: false is apex's default"),
    Variant("optax", decay="update", correction="moments", norm="l2", clamp_on="none", eps=1e-6,
            betas=(0.9, 0.999), step_counter="global",
            not_modelled=("eps_root (ε inside the square root)",
                          "mask (a tree of booleans; exclude_from_decay names tensors instead)"),
            source="optax 0.2.8, optax/_src/alias.py 1234-1300 (λ 0: 1240), transform.py 246-309"
                   " (one count for the whole tree: 279, 285), 1038-1080 (r = 1 at a zero norm:"
                   " 1067-1072)",
            note="every leaf has a gradient each update: a tensor lambexp skips decays m, v there"),
    Variant("torch_optimizer", decay="update", correction="step", switch="none", norm="l2",
            clamp_on="w_norm", eps=1e-6, betas=(0.9, 0.999), corrected_by_default=False,
            source="torch-optimizer 0.3.0, torch_optimizer/lamb.py 45-158 (λ 0: 51; clamp_value 10:"
                   " 52; step per tensor: 106-121; φ = clamp(‖w‖, 0, c): 139; r = 1 at a zero norm:"
                   " 146-149)",
            note="bias_correction is its debias, folded into the step size after r"),
    Variant("tfa", decay="update", correction="moments", norm="l2", clamp_on="none", eps=1e-6,
            betas=(0.9, 0.999), trust_list_follows_decay=True, step_counter="global",
            not_modelled=("clipnorm, clipvalue (Keras' per-variable clips)",
                          "decay (Keras' inverse-time lr decay)",
                          "sparse gradients (lambexp refuses them)"),
            source="tensorflow/addons d208d75, tensorflow_addons/optimizers/lamb.py 41-254 (λ 0: 47;"
                   " lists: 107-112, 243-254; t = iterations + 1 for every variable: 125; r = 1 at a"
                   " zero norm: 170-178)",
            note="exclude_from_decay / exclude_from_trust are its two lists"),
    Variant("timm_decoupled", decay="decoupled", correction="moments", switch="none", norm="l2",
            clamp_on="none", eps=1e-6, betas=(0.9, 0.999), grad_clip_norm=1.0, always_adapt=False,
            step_counter="group", default_weight_decay=0.01, not_modelled=TIMM_NOT_MODELLED,
            source="timm 1.0.31, timm/optim/lamb.py 316-368 (decoupled_decay=True; λ 0.01: 102; step"
                   " per group: 189-198; r = 1 at a zero norm: 301-313)",
            note="AdamW's decay: w ← w·(1−lr·λ) before the ratio, u without λ·w"),
)}
RULES = tuple(VARIANTS)
DEFAULT_EPS = {name: variant.eps for name, variant in VARIANTS.items()}
TORCH_ADAM_EPS = 1e-8  # torch.optim.Adam's own default, for the torch_adam arms
LAMB_OPTIMIZERS = ("adam", "lamb")  # the optimizers that step by a row of this table
# settings only some rules read (Variant.has_switch)
RULE_SWITCHES = ("bias_correction", "clamp", "clamp_min")


def uses_lamb_rule(optimizer: str) -> bool:
    """adam and lamb step by a LAMB rule (``rule``, ``bias_correction``, ``eps``, ``clamp`` apply);
    lars, sgd and torch_adam do not."""
    return optimizer in LAMB_OPTIMIZERS

SWITCHED_RULES = tuple(name for name, v in VARIANTS.items() if v.switch is not None)
W_NORM_RULES = tuple(name for name, v in VARIANTS.items() if v.clamp_on == "w_norm")  # read clamp_min
# The options a LAMB step leaves to its rule, and the value that leaves them (``Variant.resolve``).
LEFT_TO_RULE = {"eps": None, "bias_correction": None, "always_adapt": None, "grad_clip_norm": "rule"}

# Parameter-name patterns (exclude_from_decay, exclude_from_trust): a regular expression searched in
# the name (as TF-Addons matches), or this one form for every tensor of rank 0 or 1 (biases, norms).
RANK_FORM = "ndim<=1"


def pattern_matches(pattern: str, name: str, ndim: int) -> bool:
    """Whether ``pattern`` picks the parameter ``name`` of rank ``ndim``."""
    return ndim <= 1 if pattern == RANK_FORM else re.search(pattern, name) is not None
