"""The blog's LeNet (PyTorch's MNIST example of 2019), a small MLP and two small vision transformers,
by name."""

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


class Block(nn.Module):
    """A pre-norm transformer block: t + attention(LayerNorm(t)), then t + MLP(LayerNorm(t)), the MLP
    dim → hidden → GELU → dim. Attention is written out with one qkv projection, so that it stacks
    (torch.func.vmap) like every other layer; each head's queries and keys are LayerNormed before
    their product (QK-norm: Dehghani et al. 2023, Wortsman et al. 2023), which keeps the attention
    logits from growing at the post's high learning rates: docs/measured.md has what it changed."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.k_norm = nn.LayerNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t: Tensor) -> Tensor:  # t: (B, N, D)
        b, n, d = t.shape
        qkv = self.qkv(self.norm1(t)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, D/H)
        q, k = self.q_norm(q), self.k_norm(k)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)  # (B, H, N, N)
        t = t + self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))
        return t + self.fc2(F.gelu(self.fc1(self.norm2(t))))


class ViT(nn.Module):
    """A small vision transformer: the 28×28 image as 49 overlapping 7×7 patches, 4 pixels apart
    (clipped at the image's border), embedded to 64 dimensions by a convolutional stem (conv 1→32 3×3
    stride 2 → GELU → conv 32→64 3×3 stride 2: each output sees a 7×7 patch; Xiao et al. 2021, "Early
    convolutions help transformers see better"); a class token and learned positions; 4 blocks
    (``Block``, 4 heads, QK-norm, MLP 128); a final LayerNorm and a linear head on the class token →
    log-softmax. 0.157M parameters, with the layer kinds (embeddings, LayerNorm, attention) where weight
    decay and trust exclusions matter. At the post's settings it ends above 97% on the mean over seeds,
    where ``ViT16`` ends short of it (docs/results.md); each step costs 3.6 times ViT16's (make
    bench-models)."""

    TOKENS, DIM, DEPTH, HEADS, HIDDEN = 49, 64, 4, 4, 128

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, self.DIM))  # (1, D): the class token
        self.pos = nn.Parameter(torch.randn(self.TOKENS + 1, self.DIM) * 0.02)  # (N+1, D): positions
        self.add_embedding()
        self.blocks = nn.ModuleList(Block(self.DIM, self.HEADS, self.HIDDEN) for _ in range(self.DEPTH))
        self.norm = nn.LayerNorm(self.DIM)
        self.head = nn.Linear(self.DIM, 10)

    def add_embedding(self) -> None:
        """Registers the patch embedding's layers, between the positions and the blocks (the order
        that fixes the parameters' names, their order and the initialisation's random draws)."""
        self.stem1 = nn.Conv2d(1, 32, 3, 2, 1)
        self.stem2 = nn.Conv2d(32, self.DIM, 3, 2, 1)

    def embed(self, x: Tensor) -> Tensor:  # x: (B, 1, 28, 28) → (B, 49, D)
        return self.stem2(F.gelu(self.stem1(x))).flatten(2).transpose(1, 2)  # (B, D, 7, 7) → (B, 49, D)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 1, 28, 28)
        t = self.embed(x)  # (B, N, D)
        t = torch.cat([self.cls.expand(t.shape[0], 1, self.DIM), t], dim=1) + self.pos  # (B, N+1, D)
        for block in self.blocks:
            t = block(t)
        return F.log_softmax(self.head(self.norm(t[:, 0])), dim=1)  # (B, 10)


class ViT16(ViT):
    """The earlier ``vit`` (until 2026-12-06), kept because configs/beyond/large_batch_check.yaml's ViT
    arms ran on it: the image as 16 non-overlapping 7×7 patches, each embedded by one linear layer; the
    rest as ``ViT``. 0.139M parameters. At the post's settings it ends short of 97% on the mean over
    seeds, Adam by half a point, LAMB by 0.08 (docs/measured.md)."""

    TOKENS, PATCH = 16, 7

    def add_embedding(self) -> None:
        self.patch = nn.Linear(self.PATCH * self.PATCH, self.DIM)

    def embed(self, x: Tensor) -> Tensor:  # x: (B, 1, 28, 28) → (B, 16, D)
        b, p = x.shape[0], self.PATCH
        side = 28 // p
        patches = x.reshape(b, side, p, side, p).transpose(2, 3).reshape(b, side * side, p * p)  # (B, 16, 49)
        return self.patch(patches)


MODELS = {"lenet": LeNet, "mlp": MLP, "vit": ViT, "vit16": ViT16}


def build_model(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A fresh model by name (``lenet``, ``mlp``, ``vit`` or ``vit16``), initialised from torch's current
    RNG, on ``device``. Convolutions run channels-last: faster on the CPU (``make bench``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (one of: {', '.join(MODELS)})")
    return MODELS[name]().to(device, memory_format=torch.channels_last)
