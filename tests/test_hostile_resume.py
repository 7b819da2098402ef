"""Resuming records what happened: epochs lowered below what an arm has done, a checkpoint of another
arm, no report for a run folder, and a full disk under TensorBoard's writer thread. (The report that
resuming a reproduce folder rebuilds is in test_reproduce.py.)"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_CONFIG, invoke, run_dirs, summary_json, tiny_config, write

from lambexp.config import load_experiment
from lambexp.errors import Interrupted
from lambexp.folders.lock import LOCK_FILE
from lambexp.model import LeNet
from lambexp.runner.experiment import run_experiment

STEPS_PER_EPOCH = 4  # the tiny set: 256 images in batches of 64


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (not the lock) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def stopped_after(tmp_path: Path, steps: int, config_text: str) -> Path:
    """A `run` of ``config_text`` whose first arm is stopped (and checkpointed) after ``steps``
    steps: its run folder. Without DDP the stop flag is polled once before the folder is made, once
    before each arm and once before each step."""
    exp = load_experiment(write(tmp_path / "mid.yaml", config_text))
    polls = itertools.count(1)
    with pytest.raises(Interrupted):
        run_experiment(exp, runs_root=tmp_path / "runs", say=lambda s: None,
                       stop_requested=lambda: next(polls) > 2 + steps)
    (run_dir,) = run_dirs(tmp_path / "runs")
    return run_dir


def checkpoint_loop(arm_dir: Path) -> dict:
    return torch.load(arm_dir / "checkpoint.pt", weights_only=True)["loop"]


def edit_config(run_dir: Path, old: str, new: str) -> None:
    config = run_dir / "config.yaml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def accuracy_of_saved_weights(arm_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """model.pt's accuracy on ``images``, evaluated here: MNIST's usual normalisation, our own
    argmax count."""
    model = LeNet()
    model.load_state_dict(torch.load(arm_dir / "model.pt", weights_only=True))
    model.eval()
    x = (torch.from_numpy(images).float().div(255).sub(0.1307).div(0.3081)).unsqueeze(1)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    return float((predicted == torch.from_numpy(labels).long()).sum()) / len(labels)


THREE_EPOCHS = tiny_config(name="three", arms=("lamb",), epochs=3, lr=0.01, expect="")


# --- 5. epochs lowered below the epochs done ----------------------------------------------------------

@pytest.mark.parametrize("steps, epochs", [(10, 1), (10, 2), (8, 1)])
def test_epochs_lowered_below_what_the_arm_has_done_is_refused(tiny_mnist_env, tmp_path, steps, epochs):
    """Stopped 2 steps into epoch 3 (or at its start), then config.yaml says fewer epochs than the
    checkpoint's weights have trained: finishing would record the last evaluation's accuracy beside
    weights of later steps. Refused, nothing changed."""
    run_dir = stopped_after(tmp_path, steps, THREE_EPOCHS)
    loop = checkpoint_loop(run_dir / "lamb")
    assert (loop["step"], loop["epoch"], loop["batch"]) == (steps, 3, steps - 2 * STEPS_PER_EPOCH)
    edit_config(run_dir, "epochs: 3", f"epochs: {epochs}")
    before = tree(run_dir)
    result = invoke("resume", run_dir, "--apply-config-changes")
    assert result.exit_code == 2, result.output
    (line,) = stderr_lines(result)
    assert "lamb" in line and f"epochs cannot be lowered to {epochs}" in line
    assert "2 epochs" in line, line
    assert tree(run_dir) == before


def test_epochs_lowered_to_exactly_the_epochs_done_finishes_on_what_was_evaluated(tiny_mnist_env, tmp_path):
    """Stopped at the end of epoch 2 and lowered to 2 epochs: the weights saved are the ones
    evaluated last, so the arm finishes, and its accuracy is that of model.pt (lr 0.001: far from
    100% after 8 steps, so that other weights would score otherwise)."""
    slow = tiny_config(name="three", arms=("lamb",), epochs=3, lr=0.001, expect="")
    run_dir = stopped_after(tmp_path, 2 * STEPS_PER_EPOCH, slow)
    edit_config(run_dir, "epochs: 3", "epochs: 2")
    result = invoke("resume", run_dir, "--apply-config-changes", "-q")
    assert result.exit_code == 0, result.output
    summary = summary_json(run_dir / "lamb")
    assert summary["status"] == "finished" and summary["steps"] == 2 * STEPS_PER_EPOCH
    mnist = tiny_mnist_env
    accuracy = accuracy_of_saved_weights(run_dir / "lamb", mnist.test_images, mnist.test_labels)
    assert summary["final_test_accuracy"] == accuracy and 0.1 < accuracy < 0.9


# --- a checkpoint of another arm ----------------------------------------------------------------------

MID = TINY_CONFIG.replace("epochs: 1", "epochs: 3")  # arms adam and lamb, 12 steps each


def test_a_checkpoint_swapped_in_from_another_arm_is_named_as_such(tiny_mnist_env, tmp_path):
    run_dir = stopped_after(tmp_path, 5, MID)  # adam stopped in epoch 2; lamb not begun
    (run_dir / "lamb").mkdir()
    (run_dir / "lamb" / "checkpoint.pt").write_bytes((run_dir / "adam" / "checkpoint.pt").read_bytes())
    before = tree(run_dir)
    for flag in ((), ("--apply-config-changes",)):
        result = invoke("resume", run_dir, *flag)
        assert result.exit_code == 2, result.output
        (line,) = stderr_lines(result)
        assert f"checkpoint.pt in {run_dir / 'lamb'} is arm adam's" in line, line
        assert "config changed" not in line and "cannot change" not in line
        assert tree(run_dir) == before


# --- no report for a run folder ------------------------------------------------------------------------

def test_resume_of_a_run_folder_writes_no_report(tiny_mnist_env, tmp_path):
    run_dir = stopped_after(tmp_path, 5, MID)
    result = invoke("resume", run_dir, "-q")
    assert result.exit_code == 0, result.output
    assert not (run_dir / "REPORT.md").exists() and "report:" not in result.stdout


# --- a full disk in TensorBoard's writer thread ---------------------------------------------------------

# Runs `lambexp run` with TensorBoard's record writer (which its background thread calls) failing
# with ENOSPC once the arm's first checkpoint is on disk: the disk fills up in epoch 2.
FULL_DISK_RUN = """\
import errno, sys
from pathlib import Path
from tensorboard.summary.writer import record_writer

runs = Path(sys.argv[1])
real_write = record_writer.RecordWriter.write

def write(self, data):
    if any(runs.glob("*/*/*/checkpoint.pt")):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(self, data)

record_writer.RecordWriter.write = write
from lambexp.cli import app
app(["run", sys.argv[2], "--runs-dir", str(runs), "-q"], prog_name="lambexp")
"""


def test_a_full_disk_under_tensorboards_writer_is_one_line(tiny_mnist_env, tmp_path):
    script = write(tmp_path / "full_disk.py", FULL_DISK_RUN)
    config = write(tmp_path / "mid.yaml", MID)
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(script), str(runs), str(config)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    (run_dir,) = run_dirs(runs)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no space left on device writing" in lines[0] and "events.out.tfevents" in lines[0]
    assert f"lambexp resume {run_dir}" in lines[0]
    loop = checkpoint_loop(run_dir / "adam")  # whole, and the last one written
    assert (loop["epoch"], loop["batch"]) == (2, 0)
    summary = summary_json(run_dir / "adam")
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]
