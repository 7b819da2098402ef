"""A small training loop for the lens tests that keeps, independently of lambexp, each step's
weights before and after it and the lr each tensor was stepped with (float64 numpy copies)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def tiny_net() -> nn.Sequential:
    """Linear → LayerNorm → Linear: weights, biases and a norm's vectors, six tensors."""
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


@dataclass
class Step:
    before: dict[str, np.ndarray]  # name → weights before the step, for tensors that had a gradient
    after: dict[str, np.ndarray]
    lr: dict[str, float]


class Recorder:
    """Trains ``model`` (plus ``extra`` tensors, once the optimizer holds them) on random batches,
    recording every step in ``steps``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, extra=()):
        self.model, self.optimizer, self.extra = model, optimizer, list(extra)
        self.steps: list[Step] = []

    def names(self) -> list[tuple[str, nn.Parameter, float]]:
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        return [(by_id.get(id(p), f"group{gi}.param{j}"), p, float(g["lr"]))
                for gi, g in enumerate(self.optimizer.param_groups) for j, p in enumerate(g["params"])]

    def loss(self) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        loss = self.model(torch.randn(8, 4, dtype=dtype)).pow(2).mean()
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        return loss + sum(p.pow(2).sum() for p in self.extra if id(p) in held)

    def train(self, n: int, after_step=None, closure: bool = False) -> None:
        for _ in range(n):
            def compute():
                self.optimizer.zero_grad()
                loss = self.loss()
                loss.backward()
                return loss

            if not closure:
                compute()
            tensors = self.names()
            before = {name: p.detach().double().numpy().copy() for name, p, _ in tensors}
            self.optimizer.step(compute if closure else None)
            stepped = [(name, p, lr) for name, p, lr in tensors if p.grad is not None]
            self.steps.append(Step({name: before[name] for name, _, _ in stepped},
                                   {name: p.detach().double().numpy().copy() for name, p, _ in stepped},
                                   {name: lr for name, _, lr in stepped}))
            if after_step is not None:
                after_step()
