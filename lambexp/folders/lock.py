"""One process at a time in a folder of runs: an OS lock (``fcntl.flock``) on the folder's
``.lambexp.lock``, which dies with its process, so a crash never leaves a folder locked.

`run` locks the run folder it creates, `reproduce` its ``--out``, `resume` the folder each of its
experiments belongs to (the reproduce folder holding it, or the run folder itself); `report` and
`compare` the folder they write into (``writing_into``). A second process that wants a locked folder
exits 2 naming the holder, before it reads, deletes or writes anything; `ls` asks who holds one
(``held_by``) to say a run is running. The lock file is never a link's target nor a FIFO. Torch-free.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lambexp.errors import UserError
from lambexp.folders.layout import own_file, seeds_in, writable_folder

try:
    import fcntl
except ImportError:  # Windows: no flock; lambexp runs there without the guard
    fcntl = None

LOCK_FILE = ".lambexp.lock"


def lock_root(exp_dir: Path) -> Path:
    """The folder whose lock guards ``exp_dir``: for an experiment of a reproduce folder (it holds
    ``seed<k>/``, or its parent is locked) that ``--out``, which `reproduce` locks; for a `run`
    folder the folder itself. By layout, so a folder made before locks existed is guarded too."""
    if (exp_dir.is_dir() and seeds_in(exp_dir)) or (exp_dir.parent / LOCK_FILE).is_file():
        return exp_dir.parent
    return exp_dir


@contextmanager
def folder_lock(folder: Path, option: str = "") -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder). A folder locked by another
    process, or one that cannot be written, is a UserError; ``option`` names the command-line
    option that chose it (e.g. ``--out``) in that message."""
    path = writable_folder(Path(folder), option or "folder") / LOCK_FILE
    try:
        fd = own_file(path, os.O_RDWR | os.O_CREAT)  # never a link's target, nor a FIFO
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
def writing_into(folder: Path, option: str = "--out") -> Iterator[None]:
    """Hold, while `report` or `compare` writes into ``folder``, the lock of the lambexp folder it
    belongs to (``lock_root``), so that neither writes where another process works (a UserError
    naming it). A folder no lambexp process ever locked is left without a lock file: one there
    would make ``lock_root`` take it for a reproduce ``--out``, and the run folders in it for its
    experiments."""
    root = lock_root(folder)
    if not os.path.lexists(root / LOCK_FILE):
        yield
        return
    with folder_lock(root, option):
        yield


def held_by(folder: Path) -> str | None:
    """Who holds ``folder``'s lock now ("process 4242 (lambexp run …)"), or None: asked without
    creating, following or holding anything (a read-only open of a regular lock file, a shared lock
    tried and let go at once), so `ls` can say which runs are training."""
    if fcntl is None:
        return None
    try:
        fd = own_file(folder / LOCK_FILE, os.O_RDONLY)
    except (OSError, UserError):  # no lock file, or not one lambexp made: nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)  # lets go of the shared lock, if taken


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
