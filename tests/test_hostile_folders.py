"""Hostile folders and the readers of runs: links and FIFOs planted at the names lambexp writes, a
folder another process holds, hand-edited summaries, a full disk under the figures, symlink loops
and a closed pipe. Nothing is written outside its folder, nothing hangs, and every refusal is one
line and exit 2."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.figure
import pytest
from helpers import TINY_CONFIG, lambexp_argv, run_dirs
from typer.testing import CliRunner

from lambexp.cli import app
from lambexp.errors import UserError
from lambexp.folders.layout import write_text_atomically
from lambexp.folders.lock import LOCK_FILE

PRECIOUS = b"precious: not lambexp's to touch\n"


def cli(*args):
    """``lambexp ARGS`` in this process, stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def refused(result, *named: object) -> str:
    """The one line of a refusal (exit 2) that names each of ``named``."""
    assert result.exit_code == 2, result.output
    (line,) = stderr_lines(result)
    assert line.startswith("error: ") and "Traceback" not in result.output, result.output
    for thing in named:
        assert str(thing) in line, line
    return line


@pytest.fixture
def finished_run(tiny_mnist_env, tmp_path) -> Path:
    """A finished tiny run of two arms (adam, lamb): its run folder, in ``tmp_path/runs``."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    assert cli("run", tmp_path / "tiny.yaml", "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    (run_dir,) = run_dirs(tmp_path / "runs")
    return run_dir


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every folder lambexp is given, holding one file it must never touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_bytes(PRECIOUS)
    return folder


def untouched(outside: Path) -> bool:
    """Whether ``outside`` still holds its one file, byte-identical, and nothing else."""
    return [p.name for p in outside.iterdir()] == ["precious.txt"] and \
        (outside / "precious.txt").read_bytes() == PRECIOUS


# --- 1. links and FIFOs at the names lambexp writes ----------------------------------------------

def plant(name: Path, kind: str, outside: Path) -> None:
    """At ``name``: a link to the file outside, a link to a missing file outside, or a FIFO."""
    if kind == "a link to a file outside":
        name.symlink_to(outside / "precious.txt")
    elif kind == "a dangling link":
        name.symlink_to(outside / "made-by-lambexp")
    else:
        os.mkfifo(name)


KINDS = ["a link to a file outside", "a dangling link", "a FIFO"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_lock_file_that_is_not_a_regular_file_is_refused(finished_run, outside, kind):
    lock = finished_run / LOCK_FILE
    lock.unlink()
    plant(lock, kind, outside)
    refused(cli("resume", finished_run), lock)
    assert untouched(outside)


@pytest.mark.parametrize("name", ["summary.json", ".summary.json.tmp"])
@pytest.mark.parametrize("kind", KINDS[:2])
def test_an_atomic_write_replaces_a_planted_link_and_never_writes_through_it(tmp_path, outside, name, kind):
    folder = tmp_path / "arm"
    folder.mkdir()
    plant(folder / name, kind, outside)
    write_text_atomically(folder / "summary.json", "{}\n")
    assert untouched(outside)
    assert not (folder / "summary.json").is_symlink() and (folder / "summary.json").read_text() == "{}\n"
    assert sorted(p.name for p in folder.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.pt"])
@pytest.mark.parametrize("kind", KINDS[:2])
def test_a_checkpoint_or_model_never_goes_through_a_planted_temporary_link(tmp_path, outside, name, kind):
    import torch

    from lambexp.training.checkpoint import save_atomically

    folder = tmp_path / "arm"
    folder.mkdir()
    plant(folder / f".{name}.tmp", kind, outside)
    save_atomically(folder / name, {"w": torch.ones(3)})
    assert untouched(outside)
    assert torch.equal(torch.load(folder / name, weights_only=True)["w"], torch.ones(3))


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_are_never_appended_through_a_link_or_into_a_fifo(tmp_path, outside, kind):
    from lambexp.training.sinks import JsonlSink

    folder = tmp_path / "arm"
    folder.mkdir()
    plant(folder / "metrics.jsonl", kind, outside)
    with pytest.raises(UserError, match=f"{folder / 'metrics.jsonl'}: "):
        with JsonlSink(folder / "metrics.jsonl") as sink:
            sink.scalars(0, {"train/loss": 1.0})
    assert untouched(outside)


@pytest.mark.parametrize("kind", KINDS[:2])
def test_resume_refuses_a_metrics_file_that_is_a_link(tiny_mnist_env, tmp_path, outside, kind):
    from lambexp.config import load_experiment
    from lambexp.errors import Interrupted
    from lambexp.runner.experiment import run_experiment

    (tmp_path / "mid.yaml").write_text(TINY_CONFIG.replace("epochs: 1", "epochs: 3"))
    runs = tmp_path / "runs"
    with pytest.raises(Interrupted):  # stopped after the first arm's first checkpoint
        run_experiment(load_experiment(tmp_path / "mid.yaml"), runs_root=runs, say=lambda s: None,
                       stop_requested=lambda: any(runs.glob("*/*/*/checkpoint.pt")))
    (run_dir,) = run_dirs(runs)
    metrics = run_dir / "adam" / "metrics.jsonl"
    metrics.unlink()
    plant(metrics, kind, outside)
    refused(cli("resume", run_dir, "-q"), metrics, "symbolic link")
    assert untouched(outside)


def test_report_and_compare_replace_links_planted_at_their_names(finished_run, tmp_path, outside):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    plant(out / "REPORT.md", "a link to a file outside", outside)
    plant(out / ".report.html.tmp", "a dangling link", outside)
    plant(out / "figures" / "tiny_curves.png", "a link to a file outside", outside)
    plant(out / "figures" / ".tiny_trust.png.tmp", "a dangling link", outside)
    plant(out / "compare.png", "a link to a file outside", outside)
    plant(out / f".lambexp-probe-{os.getpid()}", "a dangling link", outside)  # the writable check's
    assert cli("report", finished_run, "--out", out).exit_code == 0
    assert cli("compare", finished_run, "--out", out).exit_code == 0
    assert untouched(outside)
    for name in ("REPORT.md", "report.html", "figures/tiny_curves.png", "figures/tiny_trust.png",
                 "compare.png"):
        assert (out / name).is_file() and not (out / name).is_symlink(), name


def test_a_figures_folder_that_links_outside_is_refused(finished_run, tmp_path, outside):
    out = tmp_path / "out"
    out.mkdir()
    (out / "figures").symlink_to(outside, target_is_directory=True)
    refused(cli("report", finished_run, "--out", out), out / "figures")
    assert untouched(outside) and not (out / "REPORT.md").exists()


# --- 4. a folder another process holds -------------------------------------------------------------

HOLDER = """\
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, b"process %d (lambexp run tiny.yaml)\\n" % os.getpid())
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(folder: Path) -> Iterator[int]:
    """``folder``'s lock held, as `run` holds it, by a second process for the block: its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_report_and_compare_refuse_to_write_into_a_folder_in_use(finished_run, tmp_path):
    before = sorted(p.name for p in finished_run.iterdir())
    with held_by_another_process(finished_run) as pid:
        refused(cli("report", finished_run), finished_run, f"in use by process {pid}")
        refused(cli("compare", finished_run), finished_run, f"in use by process {pid}")
        refused(cli("report", tmp_path / "runs", "--out", finished_run), f"in use by process {pid}")
        assert sorted(p.name for p in finished_run.iterdir()) == before  # no REPORT.md, figures, …
    assert cli("report", finished_run).exit_code == 0  # free again
    assert (finished_run / "REPORT.md").is_file()


def test_report_into_a_folder_of_runs_leaves_no_lock_there(finished_run, tmp_path):
    # a lock file in runs/<experiment>/ would make lock_root take that folder for a reproduce --out
    experiment = finished_run.parent
    assert cli("report", experiment).exit_code == 0
    assert cli("compare", experiment).exit_code == 0
    assert not (experiment / LOCK_FILE).exists() and (experiment / "REPORT.md").is_file()


# --- 7. wrong types in a hand-edited summary.json --------------------------------------------------

HAND_EDITS = [("final_test_accuracy", "high"), ("diverged", "no"), ("settings.lr", "fast"),
              ("final_test_accuracy", 97.5), ("final_test_accuracy", float("nan"))]


def hand_edit(arm_dir: Path, key: str, value: object) -> Path:
    path = arm_dir / "summary.json"
    summary = json.loads(path.read_text())
    *parents, last = key.split(".")
    target = summary
    for part in parents:
        target = target[part]
    target[last] = value
    path.write_text(json.dumps(summary))  # NaN as JSON's NaN, as Python writes it
    return path


@pytest.mark.parametrize(("key", "value"), HAND_EDITS)
def test_a_summary_with_a_value_of_the_wrong_type_or_range_is_damaged_everywhere(finished_run, tmp_path,
                                                                                 key, value):
    summary = hand_edit(finished_run / "lamb", key, value)
    runs = tmp_path / "runs"
    listing = cli("ls", runs)
    assert listing.exit_code == 0, listing.output
    (row,) = listing.stdout.splitlines()[1:]
    assert "damaged" in row and "9750" not in row, row
    (listed,) = json.loads(cli("ls", runs, "--json").stdout)
    assert listed["status"].startswith("damaged") and str(summary) in listed["status"]
    line = refused(cli("report", finished_run, "--out", tmp_path / "out"), summary, "damaged")
    assert key.split(".")[-1] in line
    refused(cli("compare", finished_run, "--out", tmp_path / "cmp"), summary, "damaged")
    assert not (tmp_path / "out" / "REPORT.md").exists() and not (tmp_path / "cmp" / "compare.png").exists()


def test_every_field_of_a_summary_is_checked_when_read():
    from dataclasses import fields

    from lambexp.folders.layout import SUMMARY_VALUES, Summary

    assert set(SUMMARY_VALUES) == {f.name for f in fields(Summary)} - {"status"}


# --- smaller ---------------------------------------------------------------------------------------

def test_ls_shows_a_run_in_training_as_running(finished_run, tmp_path):
    (finished_run / "lamb" / "summary.json").unlink()  # its arm still training
    runs = tmp_path / "runs"
    with held_by_another_process(finished_run):
        (listed,) = json.loads(cli("ls", runs, "--json").stdout)
        assert listed["status"] == "running"
        assert " running " in cli("ls", runs).stdout.splitlines()[1]
    (listed,) = json.loads(cli("ls", runs, "--json").stdout)
    assert listed["status"] == "interrupted"  # the holder is gone: nothing trains it


@pytest.mark.parametrize("verb", ["report", "compare"])
def test_a_full_disk_under_a_figure_leaves_no_partial_file_and_names_it(finished_run, tmp_path,
                                                                        monkeypatch, verb):
    def full_disk(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG partial")
        else:
            Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    out = tmp_path / "out"
    line = refused(cli(verb, finished_run, "--out", out), out)
    assert "No space left on device" in line and ".png" in line
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not [name for name in written if name.endswith((".png", ".tmp"))], written
    assert "REPORT.md" not in written


def test_a_symlink_loop_lists_each_run_once(finished_run, tmp_path):
    experiment = finished_run.parent
    (experiment / "loop").symlink_to(experiment, target_is_directory=True)
    (finished_run / "loop").symlink_to(finished_run, target_is_directory=True)
    for root in (tmp_path / "runs", experiment):
        result = cli("ls", root, "--json")
        assert result.exit_code == 0, result.output
        assert [r["folder"] for r in json.loads(result.stdout)] == [str(finished_run)], root


def test_ls_into_a_pipe_closed_early_exits_quietly(tmp_path):
    runs = tmp_path / "runs"
    for i in range(300):  # long folder names: far more than a pipe holds
        folder = runs / "tiny" / f"{i:03d}-{'x' * 200}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(TINY_CONFIG)
    ls = subprocess.Popen(lambexp_argv("ls", runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert ls.stdout.readline().startswith(b"folder")
    ls.stdout.close()  # as `| head -1` does
    stderr = ls.stderr.read().decode()
    assert ls.wait(timeout=120) in (0, 141)
    assert stderr == "", stderr
