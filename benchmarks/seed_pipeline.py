"""The seed's training pipeline, re-created for the benchmark: pytorch-lamb's test_lamb.py (May 2019).

torchvision MNIST with per-sample ToTensor + Normalize through a DataLoader (no workers on the
CPU, as its script ran), the per-tensor Lamb with its host syncs, and its ``log_lamb_rs``
histograms every ``log_interval`` batches.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from seed_lamb import SeedLamb
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter
from torchvision import datasets, transforms

from lambexp.model import LeNet


class Net(LeNet):
    """pytorch/examples' MNIST Net of 2019, as pytorch-lamb's test_lamb.py imported it: LeNet's
    layers with its forward as written then (ReLU before the pool, no channels-last)."""

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def log_lamb_rs(optimizer, event_writer, token_count):
    """pytorch-lamb's: every tensor's r1, r2, r into three histograms."""
    results = collections.defaultdict(list)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            for i in ("r1", "r2", "r"):
                if i in state:
                    results[i].append(state[i])
    for k, v in results.items():
        event_writer.add_histogram(f"lamb/{k}", torch.tensor(v), token_count)


def seed_dataset(n: int, data_dir: Path):
    """The first n MNIST training images through the seed's per-sample PIL transforms."""
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return Subset(datasets.MNIST(str(data_dir), train=True, download=False, transform=tf), range(n))


def seed_samples_per_second(n: int, data_dir: Path, log_interval: int) -> float:
    torch.manual_seed(1)
    loader = DataLoader(seed_dataset(n, data_dir), batch_size=512, shuffle=True)
    model = Net()
    optimizer = SeedLamb(model.parameters(), lr=0.01, betas=(0.9, 0.99), weight_decay=0)
    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        model.train()
        t0 = time.perf_counter()
        for batch_idx, (data, target) in enumerate(loader):
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            if batch_idx % log_interval == 0:
                step = batch_idx * len(data)
                log_lamb_rs(optimizer, writer, step)
                writer.add_scalar("loss", loss.item(), step)
        seconds = time.perf_counter() - t0
        writer.close()
    return n / seconds
