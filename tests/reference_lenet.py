"""An independent LeNet for tests: PyTorch's 2019 MNIST-example Net written with functional ops
from a state_dict, its initial weights drawn as the example draws them, and its scores on images as
written. Nothing here imports lambexp: the tests tie lambexp's numbers to these."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.1307, 0.3081  # MNIST's normalisation in pytorch/examples' mnist/main.py

def normalised(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) as written → (N, 1, 28, 28) float32, as torchvision's ToTensor + Normalize."""
    return ((torch.from_numpy(images.astype(np.float32)) / 255 - MEAN) / STD).unsqueeze(1)


def lenet(weights: dict, x: torch.Tensor) -> torch.Tensor:
    """PyTorch's 2019 MNIST-example Net, written with functional ops from a state_dict: log-probs."""
    x = F.max_pool2d(F.relu(F.conv2d(x, weights["conv1.weight"], weights["conv1.bias"])), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, weights["conv2.weight"], weights["conv2.bias"])), 2)
    x = F.relu(F.linear(x.flatten(1), weights["fc1.weight"], weights["fc1.bias"]))  # (B, 500)
    return F.log_softmax(F.linear(x, weights["fc2.weight"], weights["fc2.bias"]), dim=1)


def initial_lenet(seed: int) -> dict:
    """The example Net's layers, created in its order right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    layers = {"conv1": nn.Conv2d(1, 20, 5, 1), "conv2": nn.Conv2d(20, 50, 5, 1),
              "fc1": nn.Linear(800, 500), "fc2": nn.Linear(500, 10)}
    return {f"{name}.{key}": value.detach() for name, layer in layers.items()
            for key, value in layer.state_dict().items()}


def scores(weights: dict, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean NLL loss, accuracy) of the functional LeNet on the images as written."""
    with torch.no_grad():
        out = lenet({k: v.float().contiguous() for k, v in weights.items()}, normalised(images))
    y = torch.from_numpy(labels.astype(np.int64))
    return F.nll_loss(out, y).item(), (out.argmax(1) == y).double().mean().item()
