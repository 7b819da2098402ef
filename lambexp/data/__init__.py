"""MNIST for lambexp: acquisition and md5 checks (``fetch``), the IDX format (``idx``), tensors."""

from __future__ import annotations

from lambexp.data.fetch import (
    MNIST_FILES,
    FileCheck,
    default_data_dir,
    ensure_mnist,
    expected_checksums,
    problem_lines,
    raw_dir,
    verify_mnist,
)
from lambexp.data.tensors import (
    MEAN,
    STD,
    MnistTensors,
    batches_per_epoch,
    epoch_batches,
    held_out,
    load_mnist,
    normalise,
)

__all__ = [
    "MEAN",
    "MNIST_FILES",
    "STD",
    "FileCheck",
    "MnistTensors",
    "batches_per_epoch",
    "default_data_dir",
    "ensure_mnist",
    "epoch_batches",
    "held_out",
    "expected_checksums",
    "load_mnist",
    "normalise",
    "problem_lines",
    "raw_dir",
    "verify_mnist",
]
