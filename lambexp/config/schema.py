"""The typed, frozen config tree: arm settings (each with its unit and default), the file's
shape (shared settings + `arms:`), and the resolved Experiment every other module reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lambexp.base.divergence import DEFINITION
from lambexp.base.variants import (
    LAMB_OPTIMIZERS,
    LEFT_TO_RULE,
    RANK_FORM,
    RULE_SWITCHES,
    RULES,
    SWITCHED_RULES,
    TORCH_ADAM_EPS,
    VARIANTS,
    uses_lamb_rule,
)
from lambexp.config.expect import Expectation
from lambexp.config.tune import Tune

Optimizer = Literal["adam", "lamb", "lars", "sgd", "torch_adam", "torch_adamw", "nesterov"]
Rule = Literal[RULES]  # type: ignore[valid-type]  # the rows of lambexp.base.variants
ModelName = Literal["lenet", "mlp", "vit", "vit16"]
Device = Literal["auto", "cpu", "cuda"]

MAX_SEED = 2**32 - 1  # torch.manual_seed's range
MAX_BATCH = 60_000  # MNIST's training images: a larger batch is the whole set with more memory
MAX_VALIDATION = 50_000  # training images a validation split may hold out: 10,000 at least train
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_RULE = "must start with a letter or digit and hold only letters, digits, '.', '_' and '-'"


def _vit(embedding: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """A ViT's parameters (lambexp.model.ViT), around those of its patch embedding."""
    return (("cls", 2), ("pos", 2), *embedding,
            *((f"blocks.{i}.{layer}.{kind}", 2 if kind == "weight" and "norm" not in layer else 1)
              for i in range(4)
              for layer in ("norm1", "qkv", "q_norm", "k_norm", "proj", "norm2", "fc1", "fc2")
              for kind in ("weight", "bias")),
            ("norm.weight", 1), ("norm.bias", 1), ("head.weight", 2), ("head.bias", 1))


# Each model's parameters as lambexp.model builds them, (name, ndim) in its order: torch-free, so that
# a config's patterns are checked when it loads (tests/test_hostile_config.py holds it to the models).
MODEL_PARAMETERS: dict[str, tuple[tuple[str, int], ...]] = {
    "lenet": (("conv1.weight", 4), ("conv1.bias", 1), ("conv2.weight", 4), ("conv2.bias", 1),
              ("fc1.weight", 2), ("fc1.bias", 1), ("fc2.weight", 2), ("fc2.bias", 1)),
    "mlp": (("fc1.weight", 2), ("fc1.bias", 1), ("fc2.weight", 2), ("fc2.bias", 1),
            ("fc3.weight", 2), ("fc3.bias", 1)),
    "vit": _vit((("stem1.weight", 4), ("stem1.bias", 1), ("stem2.weight", 4), ("stem2.bias", 1))),
    "vit16": _vit((("patch.weight", 2), ("patch.bias", 1))),
}
# A regular expression that starts like the rank form but is not it: parameter names never hold
# <, > or =, so as a regular expression it could match nothing; it is a misspelt ndim<=1.
_RANK_TYPO = re.compile(r"^\s*ndim\s*[<>=!]")


def _not_bool(kind: str):
    # pydantic's lax mode reads true as 1 and false as 0; in a config that is always a mistake.
    def check(value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(f"must be {kind}, not true/false")
        return value
    return BeforeValidator(check)


def _pair(value: object) -> object:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("must be a list of two numbers, e.g. [0.9, 0.99]")
    return value


def _true_false_or_auto(value: object) -> object:
    if value is True or value is False or value == "auto":
        return value
    raise ValueError("must be true, false or auto")


def _some_arms(arms: tuple) -> tuple:
    if not arms:
        raise ValueError("must list at least one arm")
    return arms


def _regex(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty regular expression, or ndim<=1")
    if value != RANK_FORM and _RANK_TYPO.match(value):
        raise ValueError(f"the one rank form is {RANK_FORM} (every bias and norm weight); as a regular"
                         " expression this could match no parameter name")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"is not a regular expression ({err})") from None
    return value


Pattern = Annotated[str, AfterValidator(_regex)]
FusedSetting = Annotated[bool | Literal["auto"], BeforeValidator(_true_false_or_auto)]
# Lax numbers (so YAML's `1e-3`, which PyYAML reads as a string, is 0.001) that refuse booleans.
Float = Annotated[float, _not_bool("a number")]
Int = Annotated[int, _not_bool("an integer")]
Beta = Annotated[Float, Field(ge=0, lt=1)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Settings(_Frozen):
    """Everything one arm runs with; written once at the top of a file, overridden per arm."""

    optimizer: Optimizer = Field("lamb", description=(
        "adam: LAMB with r computed and logged but not applied (the blog's Adam); lamb; lars; "
        "sgd: momentum SGD with LARS's r logged, not applied; torch_adam: torch.optim.Adam itself;"
        " torch_adamw: torch.optim.AdamW (decoupled decay); nesterov: torch.optim.SGD with Nesterov"
        " momentum"))
    rule: Rule = Field("blog", description=(
        "LAMB update rule: a name `lambexp rules` lists (docs/rules.md); the other optimizers have"
        " none"))
    lr: Float = Field(0.01, gt=0, description="learning rate (global step size)")
    weight_decay: Float = Field(0.0, ge=0, description=(
        "λ: added to the gradient (blog, lars, sgd, torch_adam, nesterov), to the update (paper), or"
        " shrinking the weights (torch_adamw, timm_decoupled)"))
    betas: Annotated[tuple[Beta, Beta], BeforeValidator(_pair)] = Field((0.9, 0.99), description=(
        "[β1, β2]: decay rates of the moving averages m and v, each in [0, 1)"))
    bias_correction: bool | None = Field(None, description=(
        "the rule's switch, where it has one: paper, timm, nvlamb divide m and v by (1-β1ᵗ) and"
        " (1-β2ᵗ) (false with paper is pytorch-lamb's June 2019 rule, E6); torch_optimizer's debias"
        " folds it into the step size. null: the rule's published default. The rules without the"
        f" switch ({', '.join(rule for rule in RULES if rule not in SWITCHED_RULES)}) refuse it"))
    trust_clip: Annotated[Float, Field(gt=0)] | None = Field(None, description=(
        "LAMB rules: r ≤ this after the ratio (timm's trust_clip: 1 is LAMBC); null: none"))
    always_adapt: bool | None = Field(None, description=(
        "LAMB rules: false gives the trust ratio only to tensors whose weight decay is not 0 (timm's"
        " and apex's default); null: the rule's own"))
    exclude_from_decay: tuple[Pattern, ...] = Field((), description=(
        "LAMB rules: tensors without weight decay: regular expressions searched in the parameter"
        " names (as TF-Addons matches; e.g. [bias]), or ndim<=1 for every bias and norm weight"))
    exclude_from_trust: tuple[Pattern, ...] = Field((), description=(
        "LAMB rules: tensors kept out of the trust ratio (r = 1, applied and logged), as"
        " exclude_from_decay names them"))
    grad_clip_norm: Annotated[Float, Field(gt=0)] | Literal["rule"] | None = Field("rule", description=(
        "LAMB rules: before each step every gradient g ← g / max(1, G / this), G their global L2"
        " norm; rule: the rule's own (1.0 for timm and nvlamb); null: none"))
    fused: FusedSetting = Field(False, description=(
        "LAMB's step (adam, lamb): true: compiled with torch.compile (seconds to compile at the first"
        " step, then faster: docs/optimizer.md); auto: where that pays, on CUDA, or on the CPU from"
        " 10^11 parameters × steps (25M parameters for 4000 steps); false: the default step"))
    eps: Annotated[Float, Field(gt=0)] | None = Field(None, description=(
        "ε added to √v, which the update divides by; null: the default, 1e-8 (blog, torch_adam) or"
        " 1e-6 (paper)"))
    clamp: Annotated[Float, Field(gt=0)] | None = Field(10.0, description=(
        "LAMB's c (docs/rules.md): clips r (blog) or ‖w‖ (paper); null: no clamp"))
    clamp_min: Annotated[Float, Field(gt=0)] | None = Field(None, description=(
        "γ_l, the lower bound of the paper's φ(‖w‖) = min(max(‖w‖, clamp_min), clamp), for the rules"
        " that clamp ‖w‖ (GluonNLP's LAMB: 0.001); null: none"))
    momentum: Float = Field(0.9, ge=0, lt=1, description="lars/sgd/nesterov momentum, in [0, 1)")
    trust_coefficient: Float = Field(0.001, gt=0, description=(
        "LARS's η: layer rate = lr·η·‖w‖/(‖g‖+λ‖w‖)"))
    batch_size: Int = Field(512, ge=1, le=MAX_BATCH, description=(
        "training samples per step, at most the 60,000 training images"))
    epochs: Int = Field(6, ge=1, description="passes over the 60k training images")
    seed: Int = Field(1, ge=0, le=MAX_SEED, description="seeds torch (init, shuffling) once per arm")
    model: ModelName = Field("lenet", description=(
        "lenet: PyTorch's MNIST-example CNN; mlp; vit: a small vision transformer (49 overlapping 7×7"
        " patches from a conv stem, 4 blocks, QK-norm); vit16: the earlier vit (16 7×7 patches, linear"
        " embedding), which configs/beyond/large_batch_check.yaml ran"))
    device: Device = Field("auto", description="auto: cuda when available, else cpu")
    warmup_epochs: Float = Field(0.0, ge=0, description=(
        "linear learning-rate warm-up from 0 to lr over this many epochs, then constant; 0: none"))
    log_interval: Int = Field(30, ge=1, description="batches between train-loss and r, r1, r2 logs")
    eval_interval: Annotated[Int, Field(ge=1)] | None = Field(None, description=(
        "steps between extra evaluations, of the validation split where the arm holds one (the steps"
        " to a target read it), else of the test set; null: only after each epoch, where both are"))
    data_dir: str | None = Field(None, description="folder holding MNIST; null: the default one")
    validation: Int = Field(0, ge=0, le=MAX_VALIDATION, description=(
        "training images held out as a validation set, never trained on and evaluated at each"
        " evaluation beside the test set; the same seeded split for every arm and seed; 0: none"))
    on_divergence: Literal["stop", "continue"] = Field("stop", description=(
        f"when the arm diverges ({DEFINITION}): stop the arm there (a result, not an error), or"
        " continue to watch the collapse"))
    checkpoint_every: Int = Field(1, ge=1, description=(
        "epochs between checkpoints (model, optimizer, RNG, position), for `lambexp resume`"))


SETTINGS: tuple[str, ...] = tuple(Settings.model_fields)
PATTERN_KEYS = ("exclude_from_decay", "exclude_from_trust")  # parameter-name patterns, per model

# The settings that not every optimizer uses, and the optimizers that do: one table, read by the
# loader (a key written for an arm that cannot use it is refused), by Arm (there it resolves to its
# default, so it changes nothing) and by the record (which leaves it out). The LAMB rules' own
# switches are in RULE_SWITCHES.
USED_BY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("rule", "bias_correction", "clamp", "clamp_min", "trust_clip", "always_adapt",
                     *PATTERN_KEYS, "grad_clip_norm", "fused"), LAMB_OPTIMIZERS),
    **dict.fromkeys(("eps", "betas"), (*LAMB_OPTIMIZERS, "torch_adam", "torch_adamw")),
    "momentum": ("lars", "sgd", "nesterov"),
    "trust_coefficient": ("lars", "sgd"),
}


def uses(optimizer: str, rule: str, key: str) -> bool:
    """Whether an arm of ``optimizer`` (and LAMB ``rule``) reads setting ``key`` at all."""
    if optimizer not in USED_BY.get(key, (optimizer,)):
        return False
    variant = VARIANTS.get(rule) if isinstance(rule, str) else None
    return key not in RULE_SWITCHES or variant is None or variant.has_switch(key)


def unused_settings(optimizer: str, rule: str) -> tuple[str, ...]:
    """The settings an arm of ``optimizer`` and ``rule`` does not read, in schema order."""
    return tuple(key for key in SETTINGS if not uses(optimizer, rule, key))


class Header(_Frozen):
    """Top-level keys that describe the experiment as a whole (not settings of its arms)."""

    name: Name = Field(description="identifier-like name of the experiment; its folder name")
    description: str = Field("", description="what it reproduces, in words")
    expect: tuple[Expectation, ...] = Field((), description=(
        "the post's claims, each judged on measured numbers (see lambexp/config/expect.py)"))
    tune: Tune | None = Field(None, description=(
        "each arm's lr (and warm-up) grid, trained once and picked on validation accuracy before the"
        " chosen points train over the seeds (see lambexp/config/tune.py; `lambexp reproduce` only)"))


class ArmSpec(Settings):
    """One entry of `arms:` as written: a name and the settings it overrides."""

    name: Name = Field(description="the arm's label; also its folder name")


class ExperimentSpec(Header, Settings):
    """A config file as written: header, shared settings, and the arms."""

    arms: Annotated[tuple[ArmSpec, ...], AfterValidator(_some_arms)] = Field(description=(
        "the runs to compare; each a mapping with a name and the settings it changes"))


TOP_KEYS: tuple[str, ...] = (*Header.model_fields, "arms", "sweep", *SETTINGS)  # sweep: config/sweep.py
ARM_KEYS: tuple[str, ...] = ("name", *SETTINGS)


class Arm(ArmSpec):
    """A fully resolved arm: every setting known; eps, bias_correction, always_adapt and
    grad_clip_norm are the values used (the rule's own where the config left them to it); a
    setting the arm does not use (``unused_settings``) holds its default, whatever was given."""

    eps: Annotated[Float, Field(gt=0)] = Field(description="ε added to √v, as used")
    bias_correction: bool = Field(description="the rule's bias-correction switch, as used")
    always_adapt: bool = Field(description="false: the trust ratio only where weight decay is not 0")

    @model_validator(mode="before")
    @classmethod
    def _fill_rule_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        optimizer = data.get("optimizer", Settings.model_fields["optimizer"].default)
        rule = data.get("rule", Settings.model_fields["rule"].default)
        # a value the arm cannot use changes nothing: so that it records, and compares, as unset
        data = {**data, **{key: Settings.model_fields[key].default
                           for key in unused_settings(optimizer, rule)}}
        rule = data.get("rule", Settings.model_fields["rule"].default)
        variant = VARIANTS.get(rule) if uses_lamb_rule(optimizer) else None
        if variant is not None:  # what the arm leaves to its rule, filled as Lamb fills it
            return {**data, **variant.resolve({key: data.get(key, unset)
                                               for key, unset in LEFT_TO_RULE.items()})}
        # lars, sgd, torch_adam(w), nesterov: no rule; its switches are unused (the record leaves
        # them out), and ε, unless set, is torch.optim.Adam's (torch_adam(w)'s; the others ignore it)
        filled = {"eps": TORCH_ADAM_EPS, "bias_correction": True, "always_adapt": True,
                  "grad_clip_norm": None}
        return {**data, **{k: v for k, v in filled.items() if data.get(k) in (None, "rule")}}


class Experiment(Header):
    """A validated experiment: its arms (at least one, names unique ignoring case), each fully
    resolved, and the file it came from."""

    arms: tuple[Arm, ...]
    source: Path | None = Field(None, description="the file it was loaded from; None if from text")


def resolve(spec: ExperimentSpec, source: Path | None = None) -> Experiment:
    """Each arm = the shared settings updated by the keys the arm itself wrote; eps filled in."""
    shared = spec.model_dump(include=set(SETTINGS))
    arms = tuple(Arm.model_validate({**shared, **arm.model_dump(include=arm.model_fields_set)})
                 for arm in spec.arms)
    header = {key: getattr(spec, key) for key in Header.model_fields}
    return Experiment(**header, arms=arms, source=source)
