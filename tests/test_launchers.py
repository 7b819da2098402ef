"""`reproduce --launcher ray` and `--launcher slurm`, for real: a local Ray cluster that the command
starts, and submitit's local executor (the same job array as processes here). Each must train what
`--jobs 1` trains (the same arms, the same results to float rounding, the same verdicts), skip it
on a rerun, and (Slurm) stop cleanly on Ctrl-C, continuing afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import assert_reproduce_refuses, invoke, lambexp_argv, summary_json, tiny_config

from lambexp.base.files import CHECKPOINT_FILE

TOY = tiny_config()
ARMS = [f"seed{s}/{a}" for s in (1, 2) for a in ("adam", "lamb")]


def reproduce(config, out, *extra, timeout=600) -> subprocess.CompletedProcess:
    """``lambexp reproduce CONFIG --seeds 2 --out OUT EXTRA`` in a process of its own."""
    return subprocess.run(lambexp_argv("reproduce", config, "--seeds", "2", "--out", out, *extra),
                          capture_output=True, text=True, timeout=timeout)


def verdicts(report: str) -> list[str]:
    """The claims table's verdict column, as REPORT.md writes it."""
    return [line.rsplit("|", 2)[1].strip() for line in report.splitlines()
            if line.startswith("| tiny | LAMB trains |")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_mnist):
    """The reference: `--jobs 1` in one process, on the module's tiny set (module-scoped)."""
    root = tmp_path_factory.mktemp("straight")
    env = {**os.environ, **tiny_mnist.env}
    (root / "toy.yaml").write_text(TOY)
    done = subprocess.run(lambexp_argv("reproduce", root / "toy.yaml", "--seeds", "2", "--out", root / "out",
                                       "-q"), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return root / "out"


def first_loss(arm_dir) -> float:
    """The first training loss in an arm's metrics.jsonl, read as JSON."""
    lines = (json.loads(line) for line in (arm_dir / "metrics.jsonl").read_text().splitlines())
    return next(x["values"]["train/loss"] for x in lines if "train/loss" in x.get("values", {}))


def assert_same_trainings(out, straight) -> None:
    """Every arm finished with the straight run's settings, first loss and test accuracy (its test
    set is 128 images: one image is 0.0078; threads differ, so float rounding may), and the report
    gives the same verdicts."""
    for arm in ARMS:
        ours, theirs = summary_json(out / "tiny" / arm), summary_json(straight / "tiny" / arm)
        assert ours["status"] == theirs["status"] == "finished"
        assert ours["settings"] == theirs["settings"]
        assert ours["final_test_accuracy"] == pytest.approx(theirs["final_test_accuracy"], abs=0.008)
        assert first_loss(out / "tiny" / arm) == pytest.approx(first_loss(straight / "tiny" / arm), rel=1e-5)
    assert verdicts((out / "REPORT.md").read_text()) == verdicts((straight / "REPORT.md").read_text())
    assert verdicts((out / "REPORT.md").read_text()) == ["REPRODUCED (2 of 2)"]


@pytest.mark.slow
def test_ray_trains_what_jobs_1_trains_and_skips_it_on_a_rerun(tiny_mnist_env, tmp_path, straight):
    """With --stack 2: each Ray task trains a seed's two arms as one stacked model."""
    pytest.importorskip("ray")  # an extra: CI installs it; a GPU image may not have it
    config = tmp_path / "toy.yaml"
    config.write_text(TOY)
    first = reproduce(config, tmp_path / "ray", "--launcher", "ray", "--stack", "2")
    assert first.returncode == 0, first.stderr
    assert "4 trainings in 2 stacks of up to 2, as Ray tasks of 1 CPU each" in first.stdout
    assert all(f"tiny/{arm}: finished, final test accuracy" in first.stdout for arm in ARMS)
    assert "Token authentication" not in first.stderr  # Ray's own chatter stays out
    assert_same_trainings(tmp_path / "ray", straight)
    again = reproduce(config, tmp_path / "ray", "--launcher", "ray", "--stack", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished before, skipped") == 4 and "Ray tasks" not in again.stdout


@pytest.mark.slow
def test_slurm_array_trains_what_jobs_1_trains_and_skips_it_on_a_rerun(tiny_mnist_env, tmp_path, straight):
    config = tmp_path / "toy.yaml"
    config.write_text(TOY)
    args = ("--launcher", "slurm", "--slurm-cluster", "local", "--cpus-per-training", "1")
    first = reproduce(config, tmp_path / "slurm", *args)
    assert first.returncode == 0, first.stderr
    assert "4 trainings, as local jobs (submitit's local executor)" in first.stdout
    assert_same_trainings(tmp_path / "slurm", straight)
    assert list((tmp_path / "slurm" / ".submitit").glob("*_log.out"))  # submitit's logs, apart
    again = reproduce(config, tmp_path / "slurm", *args)
    assert again.returncode == 0 and again.stdout.count("finished before, skipped") == 4


def start_when_checkpointed(config, out, args) -> subprocess.Popen:
    """`reproduce` of ``config`` (one seed) in the background, returned once both arms have written
    a checkpoint (their tasks are running)."""
    proc = subprocess.Popen(lambexp_argv("reproduce", config, "--seeds", "1", "--out", out, *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = [out / "tiny" / "seed1" / arm / CHECKPOINT_FILE for arm in ("adam", "lamb")]
    mtimes = {c: c.stat().st_mtime_ns if c.exists() else 0 for c in checkpoints}
    deadline = time.monotonic() + 300
    while not all(c.exists() and c.stat().st_mtime_ns != mtimes[c] for c in checkpoints):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    return proc


def tasks_running() -> list[str]:
    """The pids of submitit's local task processes."""
    return subprocess.run(["pgrep", "-f", "submitit.core._submit"], capture_output=True,
                          text=True).stdout.split()


@pytest.mark.slow
def test_slurm_tasks_stop_cleanly_at_the_time_limit_and_on_ctrl_c_and_continue(tiny_mnist_env, tmp_path):
    """SIGUSR2 to each task (what Slurm sends, through submitit, 90 s before --slurm-time): each
    checkpoints and returns; the command says they ran out of time (exit 2). Rerun, then SIGINT to
    `reproduce` while the tasks run: exit 130, every task cancelled (SIGTERM, a checkpoint) and
    none left running, nothing finished. The third run finishes every arm."""
    config = tmp_path / "long.yaml"
    config.write_text(tiny_config(epochs="60"))  # 240 steps and 60 checkpoints a training
    out = tmp_path / "slurm"
    args = ("--launcher", "slurm", "--slurm-cluster", "local", "--jobs", "2")
    proc = start_when_checkpointed(config, out, args)
    for pid in tasks_running():
        os.kill(int(pid), signal.SIGUSR2)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert ("2 trainings stopped before the end (at --slurm-time, 60 min: give more to finish in one go)"
            " and were checkpointed: run the same command again to continue") in stderr
    proc = start_when_checkpointed(config, out, args)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted with the unfinished trainings cancelled" in stderr
    assert tasks_running() == [], "a cancelled task still runs"
    for arm in ("adam", "lamb"):
        assert summary_json(out / "tiny" / "seed1" / arm)["status"] != "finished"
    again = subprocess.run(lambexp_argv("reproduce", config, "--seeds", "1", "--out", out, *args),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for arm in ("adam", "lamb"):
        assert summary_json(out / "tiny" / "seed1" / arm)["status"] == "finished"


def test_a_failing_worker_stops_every_other_worker_at_once(tiny_mnist_env, tmp_path):
    """--jobs 2, and adam's folder holds a damaged checkpoint, so its worker fails at once: the
    command says so (exit 2) with lamb, a long training in the other worker, stopped and
    checkpointed then, not trained to its end first."""
    config, out = tmp_path / "long.yaml", tmp_path / "out"
    config.write_text(tiny_config(epochs="150"))  # 600 steps: far longer than a worker's start
    damaged = out / "tiny" / "seed1" / "adam" / CHECKPOINT_FILE
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    failed = invoke("reproduce", config, "--seeds", "1", "--out", out, "--jobs", "2")
    assert failed.exit_code == 2, failed.output
    assert f"tiny/seed1/adam: {damaged}: cannot continue from this checkpoint" in failed.output
    lamb = summary_json(out / "tiny" / "seed1" / "lamb")
    assert lamb["status"] == "interrupted" and lamb["epochs_done"] < 150, lamb["epochs_done"]


@pytest.mark.parametrize("module, launcher, extra", [("ray", "ray", "lambexp[ray]"),
                                                     ("submitit", "slurm", "lambexp[slurm]")])
def test_a_launcher_without_its_extra_says_how_to_install_it(module, launcher, extra, tmp_path,
                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    (tmp_path / "toy.yaml").write_text(TOY)
    result = invoke("reproduce", tmp_path / "toy.yaml", "--out", tmp_path / "out", "--launcher", launcher)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].endswith(f"pip install '{extra}'")
    assert not (tmp_path / "out").exists()  # refused before any folder was made


@pytest.mark.parametrize("args, message", [
    (["--launcher", "ray", "--slurm-partition", "gpu"], "--slurm-partition applies to --launcher slurm"
                                                        " (this is --launcher ray)"),
    (["--ray-address", "auto"], "--ray-address applies to --launcher ray (this is --launcher local)"),
    (["--cpus-per-training", "4"], "--cpus-per-training applies to --launcher ray or slurm"),
    (["--launcher", "kubernetes"], "--launcher: one of local, ray, slurm (got 'kubernetes')"),
    (["--launcher", "slurm", "--slurm-cluster", "mine"], "--slurm-cluster: one of slurm, local"),
    (["--launcher", "slurm", "--gpus-per-training", "0.5"], "Slurm takes whole GPUs (got 0.5)"),
])
def test_launcher_options_out_of_place_are_refused(args, message, tmp_path):
    assert_reproduce_refuses(TOY, tmp_path, args, message)


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm cluster is here")
def test_slurm_without_a_cluster_is_one_line(tiny_mnist_env, tmp_path):
    (tmp_path / "toy.yaml").write_text(TOY)
    result = invoke("reproduce", tmp_path / "toy.yaml", "--out", tmp_path / "out", "--launcher", "slurm")
    assert result.exit_code == 2
    assert 'Could not detect "srun"' in result.output and "--slurm-cluster local" in result.output
