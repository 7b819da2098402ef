"""One process at a time in a folder of runs: an OS lock (``fcntl.flock``) on the folder's
``.lambexp.lock``, which dies with its process, so a crash never leaves a folder locked.

`run` locks the run folder it creates, `reproduce` its ``--out``, `resume` the folder each of its
experiments belongs to (the reproduce folder holding it, or the run folder itself). A second process
that wants a locked folder exits 2 naming the holder, before it reads, deletes or writes anything.
Torch-free.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lambexp.errors import UserError
from lambexp.folders.layout import seeds_in, writable_folder

try:
    import fcntl
except ImportError:  # Windows: no flock; lambexp runs there without the guard
    fcntl = None

LOCK_FILE = ".lambexp.lock"


def lock_root(exp_dir: Path) -> Path:
    """The folder whose lock guards ``exp_dir``: for an experiment of a reproduce folder (it holds
    ``seed<k>/``, or its parent is locked) that ``--out``, which `reproduce` locks; for a `run`
    folder the folder itself. By layout, so a folder made before locks existed is guarded too."""
    if seeds_in(exp_dir) or (exp_dir.parent / LOCK_FILE).is_file():
        return exp_dir.parent
    return exp_dir


@contextmanager
def folder_lock(folder: Path, option: str = "") -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder). A folder locked by another
    process, or one that cannot be written, is a UserError; ``option`` names the command-line
    option that chose it (e.g. ``--out``) in that message."""
    path = writable_folder(Path(folder), option or "folder") / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"{path}: cannot open the lock ({err.strerror or err})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                raise UserError(f"{folder} is in use by {holder}; wait for it to end (or stop it)"
                                " before starting another lambexp there") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({' '.join(_command())})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def folder_locks(folders: Sequence[Path], option: str = "") -> Iterator[None]:
    """``folder_lock`` on each distinct folder, in a fixed order."""
    with ExitStack() as stack:
        for folder in sorted({Path(f).resolve() for f in folders}):
            stack.enter_context(folder_lock(folder, option))
        yield


def _command() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "/lambexp")):
        argv[0] = "lambexp"
    return [a if len(a) < 80 else a[:77] + "..." for a in argv][:12]
