"""Tuning as a step of its own: `tune:` in a config gives each arm a grid of learning rates (and
warm-ups) to try; `lambexp reproduce` trains every point once, picks each arm's best on validation
accuracy, never on the test set, then trains the chosen points over its seeds.

    validation: 5000            # required: the held-out images the pick is made on
    tune:
      lr: [0.0003, 0.001, 0.003, 0.01, 0.03]
      warmup_epochs: [0, 1]     # optional; default: the arm's own
      by: final_val_accuracy    # or best_val_accuracy

The trials are an experiment of their own, ``<name>-tuning`` (one arm per arm and point, named as a
sweep names them: ``adam_lr0.001_warm1``); the chosen points are ``<name>``, each arm under its own
name with its chosen lr and warm-up. A pick at either end of the lr grid is flagged: the best may lie
outside it. Torch-free, like the rest of the config layer."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TUNING_SUFFIX = "-tuning"  # the trials' experiment: <name>-tuning
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Tune(BaseModel):
    """`tune:`: the points each arm tries, and the validation measure that picks one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: tuple[Positive, ...] | None = Field(None, description=(
        "the learning rates each arm tries (at least 2; e.g. half-decades 1e-4, 3e-4, 1e-3, …)"))
    lr_scale: tuple[Positive, ...] | None = Field(None, description=(
        "instead of lr: factors of each arm's own lr (e.g. 0.1, 0.316, 1, 3.16, 10), for arms whose"
        " good rates lie decades apart (LARS and AdamW)"))
    warmup_epochs: tuple[NonNegative, ...] | None = Field(None, description=(
        "the warm-ups each arm tries, in epochs; null: the arm's own"))
    by: Literal["final_val_accuracy", "best_val_accuracy"] = Field("final_val_accuracy", description=(
        "what picks: the validation accuracy after the last epoch, or the best over the evaluations"))

    @model_validator(mode="after")
    def _one_grid(self) -> Tune:
        if (self.lr is None) == (self.lr_scale is None):
            raise ValueError("give exactly one of lr (the rates) and lr_scale (factors of each arm's lr)")
        grid = "lr" if self.lr is not None else "lr_scale"
        if len(getattr(self, grid)) < 2:
            raise ValueError(f"{grid}: give at least 2 values to choose from")
        if self.warmup_epochs is not None and not self.warmup_epochs:
            raise ValueError("warmup_epochs: give at least 1 value, or leave it out (the arm's own)")
        return self


def points(tune: Tune, arm_lr: float, arm_warmup: float) -> list[tuple[float, float]]:
    """(lr, warm-up) in grid order: each warm-up (the arm's own when not tuned) for each lr (the
    grid's, or the arm's lr times each scale, rounded to 4 significant digits so that it names
    well: 0.01 × 3.16 → 0.0316)."""
    rates = tune.lr or tuple(float(f"{arm_lr * s:.4g}") for s in tune.lr_scale)
    return [(lr, w) for lr in rates for w in (tune.warmup_epochs or (arm_warmup,))]
