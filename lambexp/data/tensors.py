"""Verified MNIST as normalised in-memory tensors on one device, and shuffled index batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import MNIST

from lambexp.data.fetch import default_data_dir, problem_lines, raw_dir, verify_mnist
from lambexp.errors import DataError

MEAN, STD = 0.1307, 0.3081  # of MNIST's pixels scaled to [0, 1] (docs/claims.md, pytorch/examples)
Device = torch.device | str


@dataclass(frozen=True)
class MnistTensors:
    """The whole data set on one device."""

    train_x: Tensor  # (60000, 1, 28, 28) float32, normalised
    train_y: Tensor  # (60000,) int64, digits 0-9
    test_x: Tensor  # (10000, 1, 28, 28) float32, normalised
    test_y: Tensor  # (10000,) int64


def load_mnist(data_dir: Path | None = None, device: Device = "cpu") -> MnistTensors:
    """Verify ``<data_dir>/MNIST/raw`` by md5, then load it with torchvision's MNIST to ``device``.

    Raises DataError, one line per bad file, if any file fails verification: never trained on.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    bad = problem_lines(verify_mnist(data_dir), data_dir)
    if bad:
        raise DataError(f"MNIST in {raw_dir(data_dir)} failed verification; not using it", bad)
    legacy = data_dir / "MNIST" / "processed"
    if all((legacy / name).is_file() for name in ("training.pt", "test.pt")):
        # torchvision would load these instead of the raw files just verified
        raise DataError(f"{legacy} holds torchvision's old training.pt and test.pt, which would"
                        " be loaded instead of the verified raw files; delete that folder")
    train = MNIST(data_dir, train=True, download=False)
    test = MNIST(data_dir, train=False, download=False)
    return MnistTensors(
        train_x=normalise(train.data, device),
        train_y=train.targets.to(device),
        test_x=normalise(test.data, device),
        test_y=test.targets.to(device),
    )


def normalise(images: Tensor, device: Device = "cpu") -> Tensor:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28) = (pixel/255 − MEAN) / STD, once for all.

    The same arithmetic as torchvision's ToTensor then Normalize, sample by sample.
    """
    x = images.to(device).unsqueeze(1).float()  # (N, 1, 28, 28)
    return x.div_(255).sub_(MEAN).div_(STD)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """⌈n / batch_size⌉: the batches of one epoch, the last one partial (``epoch_batches``)."""
    return -(-n // batch_size)


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, device: Device | None = None
) -> Iterator[Tensor]:
    """One epoch of shuffled index batches, the last one partial.

    ``randperm(n)`` is drawn at the call from the CPU ``generator`` and moved to ``device``, so
    epoch e of an arm is the e-th permutation of a generator seeded with its seed. For the first
    epoch that is what ``RandomSampler(range(n), generator=generator)`` draws; torch's sampler then
    draws a second, unused permutation at the end of each pass (and DataLoader a worker seed before
    it), so its later epochs differ from these.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = torch.randperm(n, generator=generator).to(device)  # (n,)
    return iter(order.split(batch_size))
