"""Things going wrong at once: two processes on one folder, damaged or foreign checkpoints, a config
edited under a run, a full disk, absurd sizes, unwritable output. Each gets one clear line and exit
2, and nothing is lost, duplicated or left half-written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_CONFIG, events, invoke, lambexp_argv, run_dirs, summary_json, write
from typer.testing import CliRunner

from lambexp.cli import app
from lambexp.config import load_experiment
from lambexp.errors import Interrupted
from lambexp.folders.lock import LOCK_FILE, folder_lock
from lambexp.runner.experiment import run_experiment
from lambexp.runner.plan import make_plan

MID = TINY_CONFIG.replace("epochs: 1", "epochs: 3")  # 12 steps an arm, a checkpoint each epoch


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def cli(*args):
    """``lambexp ARGS`` in this process, stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def interrupted_run(tmp_path: Path, config_text: str = MID) -> Path:
    """A `run` stopped after its first arm's first checkpoint: its run folder."""
    exp = load_experiment(write(tmp_path / "mid.yaml", config_text))
    runs = tmp_path / "runs"
    with pytest.raises(Interrupted):
        run_experiment(exp, runs_root=runs, say=lambda s: None,
                       stop_requested=lambda: any(runs.glob("*/*/*/checkpoint.pt")))
    (run_dir,) = run_dirs(runs)
    return run_dir


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (not the lock) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


# --- 1. two processes on one folder -------------------------------------------------------------

def wait_for_lock_holder(folder: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = folder / LOCK_FILE
        if lock.is_file() and f"process {pid} " in lock.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} never took the lock of {folder}")


@pytest.mark.slow
def test_a_second_process_on_a_folder_in_use_exits_2_naming_the_holder(tiny_mnist_env, tmp_path):
    config = write(tmp_path / "long.yaml", TINY_CONFIG.replace("epochs: 1", "epochs: 300"))
    out = tmp_path / "out"
    first = subprocess.Popen(lambexp_argv("reproduce", config, "--seeds", "1", "--out", out, "-q"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lock_holder(out, first.pid)
        while not any(out.glob("tiny/seed1/adam/metrics.jsonl")):
            time.sleep(0.1)
        for args in (("reproduce", config, "--seeds", "1", "--out", out), ("resume", out),
                     ("resume", out / "tiny")):
            before = tree(out / "tiny" / "seed1")
            second = subprocess.run(lambexp_argv(*args), capture_output=True, text=True, timeout=120)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2, second.stderr
            assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0], second.stderr
            after = tree(out / "tiny" / "seed1")  # the first process goes on writing its own files
            written = {name for name in before if not name.endswith(".tmp")}  # not a checkpoint mid-write
            assert written <= set(after)  # nothing deleted
            assert len(list((out / "tiny" / "seed1" / "adam").glob("events.out.tfevents.*"))) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 143
    with folder_lock(out):  # the lock died with its process
        pass


def test_resume_of_a_run_folder_that_run_is_training_is_refused(tiny_mnist_env, tmp_path):
    run_dir = interrupted_run(tmp_path)
    with folder_lock(run_dir):  # as `lambexp run` holds it while it trains
        before = tree(run_dir)
        result = cli("resume", run_dir)
    assert result.exit_code == 2 and f"in use by process {os.getpid()}" in result.stderr
    assert tree(run_dir) == before


# --- 2. checkpoints that are not what resume expects ---------------------------------------------

def damage(kind: str, good: dict, path: Path) -> None:
    if kind == "list":
        torch.save([1, 2], path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "foreign mapping":
        torch.save({"a": 1}, path)
    elif kind == "loop of another version":
        torch.save({**good, "loop": {k: v for k, v in good["loop"].items() if k != "first_bad"}}, path)
    elif kind == "wrong RNG state":
        torch.save({**good, "torch_rng": torch.zeros(5, dtype=torch.uint8)}, path)
    elif kind == "wrong shuffling state":
        torch.save({**good, "loop": {**good["loop"], "epoch_rng": torch.zeros(5, dtype=torch.uint8)}}, path)
    elif kind == "a step that is text":
        torch.save({**good, "loop": {**good["loop"], "step": "12"}}, path)
    elif kind == "a later format":
        torch.save({**good, "format": 99}, path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "a pickled object":
        torch.save({**good, "loop": {**good["loop"], "history": [object]}}, path)


@pytest.mark.parametrize("kind, says", [
    ("list", "not a lambexp checkpoint"), ("tensor", "not a lambexp checkpoint"),
    ("foreign mapping", "not a lambexp checkpoint"),
    ("loop of another version", "incompatible version of lambexp (its loop position lacks first_bad)"),
    ("wrong RNG state", "random-number state"), ("wrong shuffling state", "shuffling state"),
    ("a step that is text", "step is a str"), ("a later format", "incompatible version"),
    ("truncated", "unreadable"), ("random bytes", "unreadable"),
    ("a pickled object", "objects other than tensors"),
])
def test_a_malformed_checkpoint_is_one_line_and_left_as_it_is(tiny_mnist_env, tmp_path, kind, says):
    run_dir = interrupted_run(tmp_path)
    (checkpoint,) = run_dir.glob("*/checkpoint.pt")
    damage(kind, torch.load(checkpoint, weights_only=True), checkpoint)
    before = tree(run_dir)
    result = cli("resume", run_dir)
    assert result.exit_code == 2, result.output
    (line,) = stderr_lines(result)
    assert says in line and str(checkpoint) in line and "delete it" in line
    assert "weights_only" not in result.output
    assert tree(run_dir) == before


def test_a_checkpoint_carries_its_format_and_settings(tiny_mnist_env, tmp_path):
    run_dir = interrupted_run(tmp_path)
    payload = torch.load(run_dir / "adam" / "checkpoint.pt", weights_only=True)
    assert payload["format"] == 2
    assert payload["settings"]["lr"] == 0.01 and payload["settings"]["optimizer"] == "adam"


# --- 3. a config edited since the run began -------------------------------------------------------

def edit_config(run_dir: Path, old: str, new: str) -> None:
    config = run_dir / "config.yaml"
    text = config.read_text()
    assert text.count(old) >= 1
    config.write_text(text.replace(old, new))


def lr_logged(arm_dir: Path) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events(arm_dir).Scalars("lr")]


def test_resume_refuses_an_edited_config_naming_the_change(tiny_mnist_env, tmp_path):
    run_dir = interrupted_run(tmp_path)
    edit_config(run_dir, "lr: 0.01", "lr: 0.05")
    before = tree(run_dir)
    result = cli("resume", run_dir)
    assert result.exit_code == 2
    (line,) = stderr_lines(result)
    assert "lr 0.01 → 0.05" in line and "--apply-config-changes" in line and "new run" in line
    assert tree(run_dir) == before


def test_applied_changes_train_at_the_new_value_and_every_record_says_so(tiny_mnist_env, tmp_path):
    run_dir = interrupted_run(tmp_path)
    checkpoint_step = torch.load(run_dir / "adam" / "checkpoint.pt", weights_only=True)["loop"]["step"]
    edit_config(run_dir, "lr: 0.01", "lr: 0.05")
    result = cli("resume", run_dir, "--apply-config-changes", "-q")
    assert result.exit_code == 0, result.output
    summary = summary_json(run_dir / "adam")
    assert summary["settings"]["lr"] == 0.05
    assert summary["setting_changes"] == [{"step": checkpoint_step, "changed": {"lr": [0.01, 0.05]}}]
    # the optimizer really stepped at the new rate from the change on (lr is logged from the group)
    for x, lr in lr_logged(run_dir / "adam"):
        assert lr == pytest.approx(0.01 if x < checkpoint_step * 64 else 0.05)
    listed = json.loads(cli("compare", run_dir, "--json").stdout)["runs"][0]["arms"]
    assert {a["arm"]: a["lr"] for a in listed} == {"adam": 0.05, "lamb": 0.05}


def test_a_setting_that_makes_another_training_is_refused_even_with_the_flag(tiny_mnist_env, tmp_path):
    run_dir = interrupted_run(tmp_path)
    edit_config(run_dir, "batch_size: 64", "batch_size: 32")
    result = cli("resume", run_dir, "--apply-config-changes")
    assert result.exit_code == 2 and "batch_size cannot change in the middle of a training" in result.stderr


def test_a_finished_arm_whose_config_changed_is_refused(tiny_mnist_env, tmp_path):
    config = write(tmp_path / "tiny.yaml", TINY_CONFIG)
    assert cli("run", config, "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    (run_dir,) = run_dirs(tmp_path / "runs")
    edit_config(run_dir, "weight_decay: 0.0", "weight_decay: 0.1")
    result = cli("resume", run_dir, "--apply-config-changes")
    assert result.exit_code == 2 and "finished with other settings" in result.stderr
    assert "weight_decay 0.0 → 0.1" in result.stderr


# --- 4. sizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (("--seeds", "99999999999999999999"), "--seeds: must be from 1 to 1000"),
    (("--seeds", "0"), "--seeds: must be from 1 to 1000"),
    (("--seeds", "2", "--plan"), "4294967296, past the largest seed"),
    (("--seeds", "2"), "4294967296, past the largest seed"),
])
def test_seeds_are_bounded_before_any_work(tmp_path, args, says):
    config = write(tmp_path / "s.yaml", TINY_CONFIG.replace("epochs: 1", "epochs: 1\nseed: 4294967295"))
    result = cli("reproduce", config, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and says in result.stderr
    assert not (tmp_path / "out").exists()


def test_planning_honours_a_stop_request(tmp_path):
    exp = load_experiment(write(tmp_path / "t.yaml", TINY_CONFIG))
    with pytest.raises(Interrupted, match="while planning"):
        make_plan([exp], 1000, tmp_path / "out", stop_requested=lambda: True)


def test_a_batch_larger_than_the_training_set_is_refused(tmp_path):
    result = cli("run", write(tmp_path / "t.yaml", TINY_CONFIG), "batch_size=100000000",
                 "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "batch_size: must be <= 60000" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_allocation_failure_names_the_setting_and_marks_the_arm_failed(tiny_mnist_env, tmp_path,
                                                                         monkeypatch):
    from lambexp.runner import arm

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough"
                           " memory: you tried to allocate 1228800000000 bytes.")

    monkeypatch.setattr(arm.Trainer, "step", no_memory)
    result = cli("run", write(tmp_path / "t.yaml", TINY_CONFIG), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    (line,) = stderr_lines(result)
    assert "out of memory with batch_size 64 on cpu" in line and "lower batch_size" in line
    (run_dir,) = run_dirs(tmp_path / "runs")
    summary = summary_json(run_dir / "adam")
    assert summary["status"] == "failed" and "out of memory" in summary["error"]


# --- 5. unwritable output -------------------------------------------------------------------------

def read_only_mount(folder: Path) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("where", ["a file", "a read-only file system"])
def test_every_verb_refuses_an_unwritable_output_with_one_line(tiny_mnist_env, tmp_path, where):
    config = write(tmp_path / "t.yaml", TINY_CONFIG)
    assert cli("run", config, "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    (run_dir,) = run_dirs(tmp_path / "runs")
    if where == "a file":
        bad = write(tmp_path / "a-file", "")
    else:
        bad = tmp_path / "ro"
        if not read_only_mount(bad):
            pytest.skip("cannot mount a read-only file system here (needs root)")
    try:
        for args in (("reproduce", config, "--seeds", "1", "--out", bad / "x"),
                     ("report", run_dir, "--out", bad / "x"), ("compare", run_dir, "--out", bad / "x"),
                     ("run", config, "--runs-dir", bad / "x")):
            result = cli(*args)
            assert result.exit_code == 2, (args, result.output)
            (line,) = stderr_lines(result)
            assert line.startswith("error: ") and str(bad) in line, line
    finally:
        if where != "a file":
            subprocess.run(["umount", str(bad)], check=False)


# --- 6. a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """An 8 MB tmpfs (one LeNet checkpoint, 5.2 MB, fits; a second beside it does not); where no file
    system can be mounted, the same: a second checkpoint's write fails with ENOSPC."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        from lambexp.training import checkpoint

        real = checkpoint.open if hasattr(checkpoint, "open") else open
        writes = []

        def filling(path, mode="r", *args, **kwargs):
            if str(path).endswith(".checkpoint.pt.tmp") and "w" in mode:
                writes.append(path)
                if len(writes) >= 2:
                    Path(path).write_bytes(b"partial")
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(checkpoint, "open", filling, raising=False)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_at_ctrl_c_keeps_the_last_checkpoint_and_says_so(tiny_mnist_env, tmp_path, small_disk):
    exp = load_experiment(write(tmp_path / "mid.yaml", MID))
    from lambexp.errors import ResumableError

    with pytest.raises(ResumableError, match="no space left on device writing .*checkpoint.pt.tmp"):
        run_experiment(exp, runs_root=small_disk, say=lambda s: None,  # Ctrl-C after the first checkpoint
                       stop_requested=lambda: any(small_disk.glob("*/*/*/checkpoint.pt")))
    (run_dir,) = run_dirs(small_disk)
    arm_dir = run_dir / "adam"
    assert not list(run_dir.rglob("*.tmp"))
    payload = torch.load(arm_dir / "checkpoint.pt", weights_only=True)  # whole, and the last one
    assert payload["loop"]["epoch"] == 2 and payload["loop"]["batch"] == 0
    summary = summary_json(arm_dir)
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]


def test_a_full_disk_is_exit_2_with_the_path(tiny_mnist_env, tmp_path, small_disk):
    result = cli("run", write(tmp_path / "mid.yaml", MID), "--runs-dir", small_disk)
    assert result.exit_code == 2
    (line,) = stderr_lines(result)
    assert "no space left on device writing" in line and "checkpoint.pt.tmp" in line
    assert "lambexp resume" in line
    assert not list(small_disk.rglob("*.tmp"))


# --- 7. smaller ------------------------------------------------------------------------------------

def test_a_sweep_of_one_value_written_two_ways_is_refused(tmp_path):
    result = cli("show-config", write(tmp_path / "t.yaml", TINY_CONFIG), "--sweep", "lr=1e-3,0.001")
    assert result.exit_code == 2 and "lists the same value twice" in result.stderr
    shown = cli("show-config", tmp_path / "t.yaml", "--sweep", "lr=1e-3,0.01")
    assert "adam_lr0.001" in shown.stdout and "lr: 0.001" in shown.stdout


def test_ls_lists_the_healthy_runs_beside_a_damaged_one(tiny_mnist_env, tmp_path):
    config = write(tmp_path / "t.yaml", TINY_CONFIG)
    for _ in range(2):
        assert cli("run", config, "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    damaged, healthy = run_dirs(tmp_path / "runs")
    (damaged / "adam" / "summary.json").write_text("{not json")
    result = cli("ls", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "finished" in rows[str(healthy)] and "damaged" in rows[str(damaged)]


def test_compare_prints_no_font_warnings(tiny_mnist_env, tmp_path):
    config = write(tmp_path / "t.yaml", TINY_CONFIG)
    runs = tmp_path / "运行"  # a folder name in a script the figures' font lacks
    assert cli("run", config, "--runs-dir", runs, "-q").exit_code == 0
    done = subprocess.run(lambexp_argv("compare", runs), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_config_over_1_mb_is_refused_at_once(tmp_path):
    big = write(tmp_path / "big.yaml", TINY_CONFIG + "# " + "x" * 1_100_000 + "\n")
    result = invoke("validate", big)
    assert result.exit_code == 2 and "a config is at most 1 MB" in result.output


def test_an_experiment_of_a_reproduce_folder_made_before_locks_is_guarded_by_its_out(tmp_path):
    from lambexp.folders.lock import lock_root

    out = tmp_path / "out"
    (out / "exp" / "seed1").mkdir(parents=True)  # no lock file anywhere: an older folder
    run_dir = tmp_path / "runs" / "exp" / "20260101-000000"
    run_dir.mkdir(parents=True)
    assert lock_root(out / "exp") == out
    assert lock_root(run_dir) == run_dir
