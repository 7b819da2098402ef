"""What the tests share, imported as ``from helpers import …``: a tiny MNIST-format data set on disk
(torchvision's folder layout) with its md5 manifest and the environment that points lambexp at it,
a tiny two-arm config, and the CLI, run-folder and report helpers. The fixtures that use them are
in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from lambexp.cli import app

TINY_TRAIN, TINY_TEST = 256, 128  # images in the tiny train and test sets


class TinyMnist(NamedTuple):
    data_dir: Path  # the root to pass as data_dir: files are in data_dir/MNIST/raw/
    manifest: Path  # md5sum-format file ("<md5>  <name>" lines) for LAMBEXP_MNIST_MD5SUMS
    train_images: np.ndarray  # (256, 28, 28) uint8, exactly as written
    train_labels: np.ndarray  # (256,) uint8, digits 0-9
    test_images: np.ndarray  # (128, 28, 28) uint8
    test_labels: np.ndarray  # (128,) uint8

    @property
    def env(self) -> dict[str, str]:
        """The environment that points lambexp at this set: its manifest and its data dir."""
        return {"LAMBEXP_MNIST_MD5SUMS": str(self.manifest), "LAMBEXP_DATA": str(self.data_dir)}


def tiny_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded random images and labels; each image has dim noise plus a bright 6×4 block
    whose position is set by its label, so a few steps of training can learn something.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 64, size=(n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        row, col = 4 + 14 * (label // 5), 2 + 5 * (label % 5)
        image[row : row + 6, col : col + 4] = 255
    return images, labels


def write_idx_by_hand(path: Path, array: np.ndarray) -> None:
    """IDX, written independently of lambexp: 00 00 08 <ndim>, big-endian uint32 dims, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_tiny_mnist(root: Path) -> TinyMnist:
    """Write the tiny set under ``root/data/MNIST/raw`` and its manifest at ``root/tiny-mnist.md5``."""
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_images, train_labels = tiny_digits(TINY_TRAIN, seed=0)
    test_images, test_labels = tiny_digits(TINY_TEST, seed=1)
    arrays = {
        "train-images-idx3-ubyte": train_images,
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": test_images,
        "t10k-labels-idx1-ubyte": test_labels,
    }
    lines = []
    for name, array in arrays.items():
        write_idx_by_hand(raw / name, array)
        lines.append(f"{hashlib.md5((raw / name).read_bytes()).hexdigest()}  {name}\n")
    manifest = root / "tiny-mnist.md5"
    manifest.write_text("".join(lines))
    return TinyMnist(root / "data", manifest, train_images, train_labels, test_images, test_labels)


def point_env_at(mp: pytest.MonkeyPatch, tiny: TinyMnist) -> TinyMnist:
    """Set ``tiny.env`` through ``mp`` (a test's ``monkeypatch``, or ``pytest.MonkeyPatch.context()``
    in a module-scoped fixture), so that it is undone with ``mp``; returns ``tiny``."""
    for name, value in tiny.env.items():
        mp.setenv(name, value)
    return tiny


TINY_CLAIM = """\
expect:
  - {claim: LAMB trains, arm: lamb, measure: final_accuracy, above: 0.0}
"""


def tiny_config(name: str = "tiny", arms: tuple[str, ...] = ("adam", "lamb"), expect: str = TINY_CLAIM,
                **settings) -> str:
    """A config for the tiny set: one epoch of 4 batches of 64 on the CPU, logged every 2, unless
    ``settings`` say otherwise (values as YAML writes them, e.g. ``betas="[0.9, 0.99]"``; added
    after the defaults); one arm per name in ``arms``, of the optimizer of that name; ``expect``,
    the claims block (TINY_CLAIM by default, "" for none)."""
    shared = {"epochs": 1, "batch_size": 64, "log_interval": 2, "device": "cpu", **settings}
    lines = [f"name: {name}", *(f"{key}: {value}" for key, value in shared.items()), "arms:"]
    lines += [f"  - name: {arm}\n    optimizer: {arm}" for arm in arms]
    return "\n".join(lines) + "\n" + expect


TINY_CONFIG = tiny_config()  # a run of both arms takes about a second


def invoke(*args, catch_exceptions: bool = True):
    """``lambexp ARGS`` in this process (paths may be Path objects); the click Result."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)


def assert_reproduce_refuses(config_text: str, tmp_path: Path, args: list, message: str) -> None:
    """``lambexp reproduce CONFIG --out OUT ARGS``, with and without --plan: exit 2 with ``message``
    on one line, and no OUT made."""
    (tmp_path / "toy.yaml").write_text(config_text)
    for plan in ([], ["--plan"]):
        result = invoke("reproduce", tmp_path / "toy.yaml", "--out", tmp_path / "out", *args, *plan)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "out").exists()


def write(path: Path, text: str) -> Path:
    """``text`` written to ``path``; ``path``."""
    path.write_text(text)
    return path


def claim_row(report: str, claim: str) -> str:
    """The one row of REPORT.md's claims table for ``claim``."""
    [row] = [line for line in report.splitlines() if f"| {claim} |" in line]
    return row


def lambexp_argv(*args) -> list[str]:
    """``python -m lambexp ARGS`` as a command for a real process (paths may be Path objects)."""
    return [sys.executable, "-m", "lambexp", *map(str, args)]


def run_dirs(runs: Path) -> list[Path]:
    """The run folders ``runs/<experiment>/<time>``, sorted."""
    return sorted(p for p in runs.glob("*/*") if p.is_dir())


def summary_json(arm_dir: Path) -> dict:
    """An arm's summary.json as written, read independently of lambexp."""
    return json.loads((arm_dir / "summary.json").read_text())


def events(arm_dir: Path) -> EventAccumulator:
    """An arm's TensorBoard events, read back with TensorBoard's own reader, nothing sampled away."""
    acc = EventAccumulator(str(arm_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def line(ax, label: str):
    """The one line of a matplotlib Axes with this label."""
    [found] = [ln for ln in ax.lines if ln.get_label() == label]
    return found
