"""The blog's LeNet (PyTorch's MNIST example of 2019) and a small MLP, by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LeNet(nn.Module):
    """conv 1→20 (5×5) → ReLU → maxpool 2 → conv 20→50 (5×5) → ReLU → maxpool 2 →
    linear 800→500 → ReLU → linear 500→10 → log-softmax (docs/claims.md)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 1, 28, 28)
        # ReLU after the pool: max and ReLU commute exactly (ReLU is monotone), values and
        # gradients alike, and ReLU then runs on a quarter of the elements.
        x = F.relu(F.max_pool2d(self.conv1(x), 2, 2))  # (B, 20, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2(x), 2, 2))  # (B, 50, 4, 4)
        x = torch.flatten(x, 1)  # (B, 800)
        x = F.relu(self.fc1(x))  # (B, 500)
        return F.log_softmax(self.fc2(x), dim=1)  # (B, 10)


class MLP(nn.Module):
    """784 → 512 → ReLU → 256 → ReLU → 10 → log-softmax: a second, conv-free choice."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 1, 28, 28)
        x = torch.flatten(x, 1)  # (B, 784)
        x = F.relu(self.fc2(F.relu(self.fc1(x))))  # (B, 256)
        return F.log_softmax(self.fc3(x), dim=1)  # (B, 10)


MODELS = {"lenet": LeNet, "mlp": MLP}


def build_model(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A fresh model by name (``lenet`` or ``mlp``), initialised from torch's current RNG, on
    ``device``. Convolutions run channels-last: faster on the CPU (``make bench``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (one of: {', '.join(MODELS)})")
    return MODELS[name]().to(device, memory_format=torch.channels_last)
