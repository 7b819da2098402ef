"""The fixtures the tests share, all on the tiny MNIST-format data set of tests/helpers.py:

- ``tiny_mnist``: the set, written once per test module and shared by its tests: read it, never
  change it (its files, its folder, its manifest);
- ``tiny_mnist_env``: ``tiny_mnist`` with ``LAMBEXP_MNIST_MD5SUMS`` and ``LAMBEXP_DATA`` pointed at
  it for one test, so ``lambexp`` commands run without flags use the tiny set end to end (a
  module-scoped fixture takes ``tiny_mnist`` and ``point_env_at`` instead);
- ``fresh_tiny_mnist`` and ``fresh_tiny_mnist_env``: the same, but a copy of the test's own in
  ``tmp_path``, for a test that corrupts, deletes or adds files in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TinyMnist, point_env_at, write_tiny_mnist


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> TinyMnist:
    """A tiny MNIST (256 train / 128 test, seeded) in ``<a module temp dir>/data/MNIST/raw`` plus its
    md5 manifest, written once per test module: the tests of the module share it, so none may change
    it (take ``fresh_tiny_mnist`` for that).

    The files fail the built-in (real MNIST) checksums: set ``LAMBEXP_MNIST_MD5SUMS`` to
    ``.manifest`` to use them, or take ``tiny_mnist_env``, which does so.
    """
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture
def tiny_mnist_env(tiny_mnist: TinyMnist, monkeypatch: pytest.MonkeyPatch) -> TinyMnist:
    """``tiny_mnist`` (the module's shared copy) with ``LAMBEXP_MNIST_MD5SUMS`` = its manifest and
    ``LAMBEXP_DATA`` = its data dir, for this test."""
    return point_env_at(monkeypatch, tiny_mnist)


@pytest.fixture
def fresh_tiny_mnist(tmp_path: Path) -> TinyMnist:
    """A copy of the tiny MNIST of this test's own, in ``tmp_path/data/MNIST/raw`` (manifest:
    ``tmp_path/tiny-mnist.md5``), for a test that changes the data set."""
    return write_tiny_mnist(tmp_path)


@pytest.fixture
def fresh_tiny_mnist_env(fresh_tiny_mnist: TinyMnist, monkeypatch: pytest.MonkeyPatch) -> TinyMnist:
    """``fresh_tiny_mnist`` with ``LAMBEXP_MNIST_MD5SUMS`` and ``LAMBEXP_DATA`` pointed at it."""
    return point_env_at(monkeypatch, fresh_tiny_mnist)


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every Figure the report saves, kept open for inspection (and still written to disk)."""
    from lambexp.report.figures import plt

    kept, save, close = [], plt.Figure.savefig, plt.close

    def keep(fig, path, **kwargs):
        kept.append(fig)
        save(fig, path, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield kept
    for fig in kept:
        close(fig)
