"""The fixtures the tests share: ``tiny_mnist`` writes a tiny MNIST-format data set (tests/helpers.py);
``tiny_mnist_env`` also points ``LAMBEXP_MNIST_MD5SUMS`` and ``LAMBEXP_DATA`` at it, so ``lambexp``
commands run without flags use the tiny set end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TinyMnist, write_tiny_mnist


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> TinyMnist:
    """A tiny MNIST (256 train / 128 test, seeded) in ``tmp_path/data/MNIST/raw`` plus its md5 manifest.

    The files fail the built-in (real MNIST) checksums: set ``LAMBEXP_MNIST_MD5SUMS`` to
    ``.manifest`` to use them, or take ``tiny_mnist_env``, which does so.
    """
    return write_tiny_mnist(tmp_path)


@pytest.fixture
def tiny_mnist_env(tiny_mnist: TinyMnist, monkeypatch: pytest.MonkeyPatch) -> TinyMnist:
    """``tiny_mnist`` with ``LAMBEXP_MNIST_MD5SUMS`` = its manifest and ``LAMBEXP_DATA`` = its data dir."""
    monkeypatch.setenv("LAMBEXP_MNIST_MD5SUMS", str(tiny_mnist.manifest))
    monkeypatch.setenv("LAMBEXP_DATA", str(tiny_mnist.data_dir))
    return tiny_mnist
