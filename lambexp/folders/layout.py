"""The run folder, in both directions: its file names, creating it, the one atomic write, the typed
``Summary`` of an arm (written and read here only), metrics.jsonl read back and truncated, and finding
experiments and seeds on disk. The writer (experiment, reproduce) and the readers (report, ls,
compare) share it; torch-free.

    <runs>/<experiment>/<time>/        a `lambexp run` (or <out>/<experiment>/ for `reproduce`)
        config.yaml                    resolved config, written before training
        environment.json               command line, versions, device, git commit
        [seed<k>/]<arm>/               one TensorBoard run per arm (and seed, for reproduce)
            events.out.tfevents.*
            metrics.jsonl              every logged number, exact
            summary.json               the arm's outcome (Summary); once finished or interrupted
            checkpoint.pt              while unfinished
            model.pt                   the final weights (a state_dict), once finished
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from lambexp.base.files import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
)
from lambexp.base.statuses import Status
from lambexp.errors import NoRunFolders, UserError

if TYPE_CHECKING:
    from lambexp.config import Arm, Experiment

SEED_DIR = re.compile(r"^seed(\d+)$")


# --- writing ------------------------------------------------------------------------------------

def own_file(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` of a file lambexp writes in a folder of its own (also an ``opener`` for
    ``open``): never through a symbolic link, which could lead the write outside the folder, and
    never into a FIFO or a device, where it would hang or vanish. Anything but a regular file at
    ``path`` is a UserError that names it."""
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a link
            raise planted_link(path) from None
        if err.errno == errno.ENXIO:  # a FIFO nobody reads, opened without blocking
            raise _not_regular(path, "FIFO") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode)
                           else "socket" if stat.S_ISSOCK(mode) else "device")
    return fd


def planted_link(path: str | os.PathLike, kind: str = "file") -> UserError:
    """The refusal of a link found where lambexp writes a ``kind`` of its own."""
    return UserError(f"{path}: a symbolic link where lambexp writes a {kind} of its own; it never"
                     " writes through a link (it could lead outside the folder): remove the link")


def _not_regular(path: str | os.PathLike, kind: str) -> UserError:
    return UserError(f"{path}: a {kind}, where lambexp writes a file of its own: remove it")


def fresh_file(path: str | os.PathLike, flags: int) -> int:
    """An ``opener`` for a temporary name of lambexp's: whatever stands there (what a crash left,
    or a link planted there) is removed first, the link itself and never what it points to, and
    the file is created anew (O_EXCL), so the write cannot leave the folder."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return own_file(path, flags | os.O_CREAT | os.O_EXCL)


@contextmanager
def replaced_atomically(path: Path, mode: str = "wb", **kwargs) -> Iterator:
    """A file to write ``path``'s new content into, so that a reader sees the old file or the whole
    new one, never half of it, even after a crash: a temporary name (``fresh_file``), flushed to
    disk, then renamed over ``path``, which replaces a link planted at ``path`` itself. On any error
    (a full disk) the temporary file is removed, and an OSError names ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode, opener=fresh_file, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:  # nothing half-written is left behind, whatever stopped the write
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``replaced_atomically``."""
    with replaced_atomically(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: Path, value: dict) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


def writable_folder(path: Path, option: str) -> Path:
    """``path`` as a folder this process can write in (created with its parents), or a UserError
    that names it and the command-line ``option`` that chose it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lambexp-probe-{os.getpid()}"
        os.close(fresh_file(probe, os.O_WRONLY))  # not touch(), which creates a link's target
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: is a file, not a folder; pass a folder as {option}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot write there ({err.strerror or err}); pass a writable"
                        f" {option}") from None
    return path


def own_folder(path: Path) -> Path:
    """``path``, a folder lambexp makes inside one it was given (a report's ``figures/``), created
    if missing. A link planted there would lead every file written into it outside: a UserError."""
    if path.is_symlink():
        raise planted_link(path, "folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_run_dir(parent: Path) -> Path:
    """A new folder ``parent/<UTC timestamp>``, created exclusively: a second run in the same
    second gets ``-1``, ``-2``, …; an existing folder is never reused."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
            try:
                path = parent / f"{stamp}{suffix}"
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise UserError(f"{parent}: cannot create a run folder there"
                        f" ({err.strerror or err}); pass a writable --runs-dir") from None
    raise UserError(f"could not create a new run folder in {parent}")


def prepare_arm_dir(arm_dir: Path) -> bool:
    """True when ``arm_dir`` holds a checkpoint to continue from; otherwise clear what an
    unfinished attempt without a checkpoint left. Either way ``arm_dir`` exists afterwards."""
    resume = (arm_dir / CHECKPOINT_FILE).is_file()
    if not resume and arm_dir.exists():
        shutil.rmtree(arm_dir)
    arm_dir.mkdir(parents=True, exist_ok=True)
    return resume


# --- the arm's outcome --------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """summary.json: how an arm ended. ``diverged`` is the trainer's decision by the one rule of
    lambexp.base.divergence; the accuracies are of the last evaluation (before the divergence, when the
    arm stopped there)."""

    status: Status
    arm: str = ""
    final_test_accuracy: float | None = None
    best_test_accuracy: float | None = None
    final_val_accuracy: float | None = None  # on the held-out training images (``validation``)
    best_val_accuracy: float | None = None
    final_test_loss: float | None = None
    final_train_loss: float | None = None
    diverged: bool = False
    diverged_step: int | None = None
    diverged_reason: str | None = None
    epochs_done: int = 0
    samples_per_epoch: int | None = None
    steps: int = 0
    samples: int = 0
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    device: str = "?"
    torch: str = "?"
    seed: int | None = None
    history: list[dict] = field(default_factory=list)  # per evaluation {step, samples, test/*, val/*}
    settings: dict | None = None  # what the arm trained with (its resolved settings, name aside)
    setting_changes: list[dict] = field(default_factory=list)  # {step, changed: {key: [old, new]}}
    error: str | None = None  # why it failed (status failed)

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "status": self.status.value}


def write_summary(arm_dir: Path, summary: Summary) -> None:
    write_json(Path(arm_dir) / SUMMARY_FILE, summary.to_json())


def read_summary(arm_dir: Path) -> Summary | None:
    """An arm's summary.json; None when there is none (the arm never finished nor stopped). A file
    that is not a summary lambexp wrote is a UserError that names it and says what to do."""
    path = Path(arm_dir) / SUMMARY_FILE

    def damaged(why: str) -> UserError:
        return UserError(f"{path}: damaged ({why}); delete it and run `lambexp resume` on the run"
                         f" folder to train {Path(arm_dir).name} again")

    if path.exists() and not path.is_file():  # a FIFO there would hang the read
        raise damaged("not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        value = json.loads(text)
        status = Status(value["status"])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise damaged("not the JSON object lambexp writes") from None
    fields = {k: v for k, v in value.items() if k in SUMMARY_VALUES}
    for key, (fits, expected) in SUMMARY_VALUES.items():
        if key in fields and not fits(fields[key]):
            raise damaged(f"{key} is {_shown(fields[key])}, not {expected}")
    if fields.get("settings"):
        fields["settings"] = _checked_settings(fields["settings"], damaged)
    return Summary(**fields, status=status)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)  # JSON's true is no number


def _or_null(fits: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or fits(v)


def _count(v: object) -> bool:
    return _number(v) and isinstance(v, int) and v >= 0


def _amount(v: object) -> bool:
    return _number(v) and v >= 0  # NaN is not


def _fraction(v: object) -> bool:
    return _number(v) and 0 <= v <= 1  # an accuracy; NaN is not


def _records(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


# What each field of summary.json (status aside) must hold, and that in words: the readers (ls,
# report, compare, resume) use the values as they are, so a hand-edited "high" is damage here, not
# an internal error later. Losses may be NaN (a diverged arm's); nothing else may.
SUMMARY_VALUES: dict[str, tuple[Callable[[object], bool], str]] = {
    "arm": (lambda v: isinstance(v, str), "text"),
    "final_test_accuracy": (_or_null(_fraction), "a number from 0 to 1, or null"),
    "best_test_accuracy": (_or_null(_fraction), "a number from 0 to 1, or null"),
    "final_val_accuracy": (_or_null(_fraction), "a number from 0 to 1, or null"),
    "best_val_accuracy": (_or_null(_fraction), "a number from 0 to 1, or null"),
    "final_test_loss": (_or_null(_number), "a number, or null"),
    "final_train_loss": (_or_null(_number), "a number, or null"),
    "diverged": (lambda v: isinstance(v, bool), "true or false"),
    "diverged_step": (_or_null(_count), "a whole number ≥ 0, or null"),
    "diverged_reason": (_or_null(lambda v: isinstance(v, str)), "text, or null"),
    "epochs_done": (_count, "a whole number ≥ 0"),
    "samples_per_epoch": (_or_null(_count), "a whole number ≥ 0, or null"),
    "steps": (_count, "a whole number ≥ 0"),
    "samples": (_count, "a whole number ≥ 0"),
    "wall_seconds": (_amount, "a number ≥ 0"),
    "train_seconds": (_amount, "a number ≥ 0"),
    "samples_per_second": (_amount, "a number ≥ 0"),
    "device": (lambda v: isinstance(v, str), "text"),
    "torch": (lambda v: isinstance(v, str), "text"),
    "seed": (_or_null(_count), "a whole number ≥ 0, or null"),
    "history": (_records, "a list of objects"),
    "settings": (_or_null(lambda v: isinstance(v, dict)), "an object, or null"),
    "setting_changes": (_records, "a list of objects"),
    "error": (_or_null(lambda v: isinstance(v, str)), "text, or null"),
}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked_settings(settings: dict, damaged: Callable[[str], UserError]) -> dict:
    """The summary's settings, each one a config may hold checked as a config's would be (and given
    as it writes it: "0.1" becomes 0.1); keys of other versions kept as they are."""
    from pydantic import ValidationError  # here: layout is read by verbs that need no pydantic

    from lambexp.config.schema import Settings

    known = {k: v for k, v in settings.items() if k in Settings.model_fields}
    try:
        checked = Settings.model_validate(known).model_dump(mode="json", include=set(known))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise damaged(f"settings.{where} is {_shown(first.get('input'))}: {first['msg']}") from None
    return {**settings, **checked}


def is_finished(arm_dir: Path) -> bool:
    """Whether the arm's summary.json says it finished (a damaged one is a UserError)."""
    summary = read_summary(arm_dir)
    return summary is not None and summary.finished


# --- metrics.jsonl ------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    """The records a JsonlSink wrote; a torn last line (a killed process) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_jsonl(path: Path, samples: int) -> None:
    """Keep the records before x = ``samples`` (a resumed arm logs the rest again), atomically.
    A link there is refused, as the append after it would refuse it, before its target is read."""
    if path.is_symlink():
        raise planted_link(path)
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) < samples and r["kind"] != "hparams"]
    write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in keep))


# --- finding runs -------------------------------------------------------------------------------

def seed_dir(exp_dir: Path, seed: int) -> Path:
    """Where `lambexp reproduce` puts one seed's arms."""
    return exp_dir / f"seed{seed}"


def seeds_in(exp_dir: Path) -> list[int]:
    """The seeds of a reproduce experiment folder (its ``seed<k>/``), none for a `run` folder."""
    return sorted(int(m.group(1)) for p in exp_dir.iterdir() if p.is_dir() and (m := SEED_DIR.match(p.name)))


def find_experiments(paths: list[Path]) -> list[Path]:
    """The experiment folders at or below ``paths`` (a reproduce folder holds several; a runs folder
    holds ``<experiment>/<time>``)."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: no such folder")
        if (path / CONFIG_FILE).is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.glob(f"*/{CONFIG_FILE}"))
            found += sorted(p.parent for p in path.glob(f"*/*/{CONFIG_FILE}"))  # runs/<exp>/<time>
    if not found:
        raise NoRunFolders(f"no run folders (with {CONFIG_FILE}) in {', '.join(map(str, paths))}")
    return distinct_folders(found)


def distinct_folders(folders: list[Path]) -> list[Path]:
    """Each folder once, in its first place, however many links lead to it (a link to a folder
    above it is a loop, which the search walks once round): by the shortest path to it."""
    shortest: dict[Path, Path] = {}
    for folder in sorted(folders, key=lambda p: len(p.parts)):
        shortest.setdefault(folder.resolve(), folder)
    kept = set(shortest.values())
    return [f for f in dict.fromkeys(folders) if f in kept]


def existing_arms(exp: Experiment, exp_dir: Path) -> list[tuple[Arm, Path]]:
    """(arm, its folder) for every arm a folder was made for: with each seed of a reproduce folder
    (the arm's seed set to it), else once, in ``<arm>/`` directly."""
    seeds = seeds_in(exp_dir)
    if not seeds:
        return [(arm, exp_dir / arm.name) for arm in exp.arms]
    return [(arm.model_copy(update={"seed": s}), seed_dir(exp_dir, s) / arm.name)
            for s in seeds for arm in exp.arms]
