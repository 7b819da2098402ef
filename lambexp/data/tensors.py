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


VALIDATION_SEED = 2019  # the held-out split's own seed: the same split for every arm and every seed


@dataclass(frozen=True)
class MnistTensors:
    """The whole data set on one device; with a validation split (``held_out``), the training
    images less the ones held out, and those as ``val_x``, ``val_y``."""

    train_x: Tensor  # (60000 - V, 1, 28, 28) float32, normalised
    train_y: Tensor  # (60000 - V,) int64, digits 0-9
    test_x: Tensor  # (10000, 1, 28, 28) float32, normalised
    test_y: Tensor  # (10000,) int64
    val_x: Tensor | None = None  # (V, 1, 28, 28): training images held out, never trained on
    val_y: Tensor | None = None  # (V,)

    @property
    def validation(self) -> tuple[Tensor, Tensor] | None:
        return None if self.val_x is None else (self.val_x, self.val_y)


def validation_split(n_train: int, n: int) -> tuple[Tensor, Tensor]:
    """(training indices, validation indices), each ascending: the first ``n`` of a permutation of
    range(``n_train``) drawn from a generator seeded with VALIDATION_SEED are held out. It depends
    on ``n`` and ``n_train`` alone, so every arm and seed holds out the same images, and a larger
    ``n`` holds out a superset of a smaller one's."""
    if not 0 < n < n_train:
        raise ValueError(f"validation must be between 1 and {n_train - 1} images, not {n}")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[n:].sort().values, order[:n].sort().values


def held_out(data: MnistTensors, n: int) -> MnistTensors:
    """``data`` with ``n`` of its training images held out as the validation set
    (``validation_split``); ``data`` itself for 0."""
    if n == 0:
        return data
    train, val = (i.to(data.train_x.device) for i in validation_split(len(data.train_x), n))
    return MnistTensors(data.train_x[train], data.train_y[train], data.test_x, data.test_y,
                        data.train_x[val], data.train_y[val])


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
