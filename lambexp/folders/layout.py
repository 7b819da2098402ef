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
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from lambexp.errors import NoRunFolders, UserError

if TYPE_CHECKING:
    from lambexp.config import Arm, Experiment

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
SEED_DIR = re.compile(r"^seed(\d+)$")


# --- writing ------------------------------------------------------------------------------------

def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that a reader sees the old file or the whole new one, never half of it,
    even after a crash: a temporary name, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk: no half-written temporary file is left behind
        tmp.unlink(missing_ok=True)
        if err.filename is None:
            err.filename = str(path)
        raise


def write_json(path: Path, value: dict) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


def writable_folder(path: Path, option: str) -> Path:
    """``path`` as a folder this process can write in (created with its parents), or a UserError
    that names it and the command-line ``option`` that chose it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lambexp-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: is a file, not a folder; pass a folder as {option}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot write there ({err.strerror or err}); pass a writable"
                        f" {option}") from None
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

class Status(str, Enum):
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    FAILED = "failed"  # stopped by a full disk or an allocation failure: see ``error``


@dataclass(frozen=True)
class Summary:
    """summary.json: how an arm ended. ``diverged`` is the trainer's decision by the one rule of
    lambexp.training.divergence; the accuracies are of the last evaluation (before the divergence, when the
    arm stopped there)."""

    status: Status
    arm: str = ""
    final_test_accuracy: float | None = None
    best_test_accuracy: float | None = None
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
    history: list[dict] = field(default_factory=list)  # one {step, samples, test/loss, test/accuracy}
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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    damaged = UserError(f"{path}: damaged (not the JSON object lambexp writes); delete it and run"
                        f" `lambexp resume` on the run folder to train {Path(arm_dir).name} again")
    try:
        value = json.loads(text)
        known = {f.name for f in dataclasses.fields(Summary)}
        return Summary(**{**{k: v for k, v in value.items() if k in known},
                          "status": Status(value["status"])})
    except (ValueError, TypeError, KeyError, AttributeError):
        raise damaged from None


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
    """Keep the records before x = ``samples`` (a resumed arm logs the rest again), atomically."""
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
    return found


def existing_arms(exp: Experiment, exp_dir: Path) -> list[tuple[Arm, Path]]:
    """(arm, its folder) for every arm a folder was made for: with each seed of a reproduce folder
    (the arm's seed set to it), else once, in ``<arm>/`` directly."""
    seeds = seeds_in(exp_dir)
    if not seeds:
        return [(arm, exp_dir / arm.name) for arm in exp.arms]
    return [(arm.model_copy(update={"seed": s}), seed_dir(exp_dir, s) / arm.name)
            for s in seeds for arm in exp.arms]
