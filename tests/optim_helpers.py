"""The optimizer tests' small problem: a tanh network (tanh keeps every gradient non-zero, so ε = 0
never divides 0 by 0), seeded regression batches, and a training loop that returns the weights."""

from __future__ import annotations

import torch
from torch import nn

F64 = torch.float64


def small_net(seed: int = 0, dtype: torch.dtype = F64, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).to(dtype)


def batches(n: int = 50, seed: int = 1, dtype: torch.dtype = F64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen, dtype=dtype),
             torch.randn(16, 3, generator=gen, dtype=dtype)) for _ in range(n)]


def train(net: nn.Module, opt, data, scheduler=None) -> list[torch.Tensor]:
    """One step per batch of mean-squared error; the weights after the last."""
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in net.parameters()]
