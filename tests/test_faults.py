"""Faults: divergence is a result, an interruption loses nothing, bad input is refused cleanly."""

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import lambexp_argv, run_dirs, summary_json, tiny_config
from typer.testing import CliRunner

from lambexp.cli import app
from lambexp.config import parse_experiment
from lambexp.data import load_mnist
from lambexp.errors import Interrupted
from lambexp.folders.layout import make_run_dir
from lambexp.runner.arm import run_arm
from lambexp.training.loop import warm_up
from lambexp.training.progress import NoProgress

BOOM = """\
name: boom
epochs: 2
batch_size: 32
log_interval: 1
device: cpu
arms:
  - name: boom
    optimizer: sgd
    lr: 1.0e+8
  - name: fine
    optimizer: lamb
    lr: 0.01
"""
def long_config(epochs: int) -> str:
    """One LAMB arm at lr 0.01 for ``epochs`` epochs of the tiny set."""
    return tiny_config(name="long", arms=("lamb",), epochs=epochs, lr=0.01, expect="")


def only_run_dir(runs):
    [run_dir] = run_dirs(runs)
    return run_dir


def test_divergence_stops_the_arm_and_is_a_result(tiny_mnist_env, tmp_path):
    config = tmp_path / "boom.yaml"
    config.write_text(BOOM)
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    boom, fine = summary_json(run_dir / "boom"), summary_json(run_dir / "fine")
    assert boom["status"] == "finished" and boom["diverged"] is True
    assert boom["diverged_reason"] in ("non-finite loss", "non-finite parameter")
    assert 1 <= boom["diverged_step"] <= 8
    assert boom["steps"] == boom["diverged_step"]  # log_interval 1: stopped at that very step
    assert boom["steps"] < 16  # 256 images / 32 × 2 epochs = 16 steps had it not stopped
    assert "[boom] diverged at step" in result.output
    assert fine["diverged"] is False and fine["steps"] == 16  # the other arm still ran
    records = [json.loads(line) for line in (run_dir / "boom" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["values"]["train/loss"] for r in records if "train/loss" in r.get("values", {})]
    assert all(v == v and abs(v) != float("inf") for v in losses)  # only finite values logged


def test_on_divergence_continue_keeps_training(tiny_mnist_env, tmp_path):
    config = tmp_path / "boom.yaml"
    config.write_text(BOOM.replace("device: cpu", "device: cpu\non_divergence: continue"))
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 0, result.output
    boom = summary_json(only_run_dir(tmp_path / "runs") / "boom")
    assert boom["diverged"] is True and boom["steps"] == 16 and boom["epochs_done"] == 2


def _arm_and_data(tiny_mnist, text):
    exp = parse_experiment(text)
    return exp.arms[0], load_mnist(tiny_mnist.data_dir, "cpu")


def _records(arm_dir):
    """metrics.jsonl without what only a finished session writes (hparams, throughput)."""
    lines = (arm_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines)
            if r["kind"] != "hparams" and "throughput/samples_per_s" not in r.get("values", {})]


def test_resume_after_a_crash_past_the_checkpoint_logs_nothing_twice(tiny_mnist_env, tmp_path, monkeypatch):
    """A process killed in epoch 3 leaves the epoch-1 checkpoint and metrics of epochs 1-3 (events
    too). Resuming drops what came after the checkpoint, writes the epoch-1 test metrics again and
    ends with exactly the records, and TensorBoard scalars, of a run never interrupted."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import lambexp.runner.arm as arm_module

    arm, data = _arm_and_data(tiny_mnist_env, long_config(3))
    kept = []

    def save_and_keep_the_first(path, *args):
        save(path, *args)
        if not kept:
            kept.append(shutil.copy(path, tmp_path / "epoch1.pt"))

    save = arm_module.save_checkpoint
    monkeypatch.setattr(arm_module, "save_checkpoint", save_and_keep_the_first)
    run_arm(arm, data, torch.device("cpu"), tmp_path / "arm", NoProgress())
    whole = _records(tmp_path / "arm")
    # the crash: the first checkpoint is the last one on disk, no summary, every later record there
    shutil.copy(kept[0], tmp_path / "arm" / "checkpoint.pt")
    (tmp_path / "arm" / "summary.json").unlink()
    monkeypatch.setattr(arm_module, "save_checkpoint", save)
    resumed = run_arm(arm, data, torch.device("cpu"), tmp_path / "arm", NoProgress())
    assert resumed.finished and resumed.steps == 12
    assert _records(tmp_path / "arm") == whole
    board = EventAccumulator(str(tmp_path / "arm"), size_guidance={"scalars": 0})
    board.Reload()
    for tag in ("train/loss", "test/accuracy", "trust_layer/fc1.weight/r"):
        steps = [e.step for e in board.Scalars(tag)]
        expected = sorted({r["step"] for r in whole if tag in r.get("values", {}) or
                           (tag.startswith("trust_layer") and r["kind"] == "trust")})
        assert steps == expected, tag


@pytest.mark.parametrize("stop_at", [3, 4, 9])  # mid-epoch, at an epoch boundary, later epoch
def test_interrupt_at_a_chosen_step_then_resume_is_identical(tiny_mnist_env, tmp_path, stop_at):
    arm, data = _arm_and_data(tiny_mnist_env, long_config(3))
    whole = run_arm(arm, data, torch.device("cpu"), tmp_path / "whole", NoProgress())
    steps = iter(range(10_000))
    with pytest.raises(Interrupted):
        run_arm(arm, data, torch.device("cpu"), tmp_path / "cut", NoProgress(),
                stop_requested=lambda: next(steps) >= stop_at)
    cut = summary_json(tmp_path / "cut")
    assert cut["status"] == "interrupted" and cut["steps"] == stop_at
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = run_arm(arm, data, torch.device("cpu"), tmp_path / "cut", NoProgress())
    assert resumed.history == whole.history  # every test loss and accuracy, bit for bit
    assert resumed.final_train_loss == whole.final_train_loss
    assert resumed.steps == whole.steps and resumed.finished
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    logged = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "trust"]
    assert logged == sorted(set(logged))  # no step logged twice across the two sessions


def _start_and_signal(config, runs, signum):
    """Start `lambexp run` in a real process; once it has logged, send ``signum``."""
    proc = subprocess.Popen(lambexp_argv("run", config, "--runs-dir", runs, "-q"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(runs.glob("*/*/lamb/metrics.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _signalled_run(tmp_path, signum):
    """A 15-epoch run in a real process, sent ``signum`` once it logs: (config, exit code, stderr,
    run folder)."""
    config = tmp_path / "long.yaml"
    config.write_text(long_config(15))
    code, err = _start_and_signal(config, tmp_path / "runs", signum)
    return config, code, err, only_run_dir(tmp_path / "runs")


@pytest.mark.slow
def test_sigint_to_a_real_process_then_resume_matches_a_straight_run(tiny_mnist_env, tmp_path):
    config, code, err, run_dir = _signalled_run(tmp_path, signal.SIGINT)
    assert code == 130, err
    assert f"lambexp resume {run_dir}" in err and summary_json(run_dir / "lamb")["status"] == "interrupted"
    assert summary_json(run_dir / "lamb")["steps"] < 60  # 15 epochs × 4 steps: it stopped early
    done = subprocess.run(lambexp_argv("resume", run_dir, "-q"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    straight = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "straight"), "-q"])
    assert straight.exit_code == 0
    a = summary_json(run_dir / "lamb")
    b = summary_json(only_run_dir(tmp_path / "straight") / "lamb")
    assert a["status"] == "finished" and a["steps"] == 60
    assert a["history"] == b["history"] and a["final_train_loss"] == b["final_train_loss"]


@pytest.mark.slow
def test_sigterm_exits_143_with_a_checkpoint(tiny_mnist_env, tmp_path):
    _, code, err, run_dir = _signalled_run(tmp_path, signal.SIGTERM)
    assert code == 143, err
    arm_dir = run_dir / "lamb"
    assert (arm_dir / "checkpoint.pt").is_file() and summary_json(arm_dir)["status"] == "interrupted"


def test_run_folders_are_distinct_under_concurrency(tmp_path):
    made, errors = [], []

    def make():
        try:
            made.append(make_run_dir(tmp_path / "exp"))
        except Exception as err:  # collected and asserted on below
            errors.append(err)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(made)) == 8


def test_unwritable_runs_dir_exit_2_nothing_written(tiny_mnist_env, tmp_path):
    config = tmp_path / "boom.yaml"
    config.write_text(BOOM)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(blocker / "runs")])
    assert result.exit_code == 2
    [line] = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "cannot create a run folder" in line and "Traceback" not in result.output
    assert blocker.read_text() == "not a folder"


def test_corrupt_data_is_never_trained_on(fresh_tiny_mnist_env, tmp_path):
    raw = Path(fresh_tiny_mnist_env.data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-100])  # truncated
    config = tmp_path / "boom.yaml"
    config.write_text(BOOM)
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "train-images-idx3-ubyte" in result.output and "lambexp data fetch --force" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, expected", [
    ("name: x\narms: [{name: a}\n", "invalid YAML"),
    ("name: x\nmodel: resnet\narms: [{name: a}]\n", "model: must be one of lenet, mlp"),
    ("name: x\nrule: nope\narms: [{name: a}]\n", "rule: must be one of blog, readme2019, paper, timm,"),
    ("name: x\narms: [{name: a, optimizer: adamw}]\n", "arms[0].optimizer: must be one of"),
    ("name: x\non_divergence: ignore\narms: [{name: a}]\n", "on_divergence: must be one of stop, continue"),
])
def test_bad_config_lines(tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_directory_instead_of_config(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output


def test_linear_warmup_sets_the_rate_of_each_step():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.4)
    rates = []
    for step in range(1, 7):
        warm_up(opt, step, warmup_steps=4)
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    twin = torch.optim.SGD([p], lr=0.4)
    twin.load_state_dict(opt.state_dict())  # a resumed run: initial_lr comes back with the state
    warm_up(twin, 2, warmup_steps=4)
    assert twin.param_groups[0]["lr"] == pytest.approx(0.2)


class Bomb(torch.nn.Module):
    """A linear classifier whose output turns NaN on its ``at``-th training forward."""

    def __init__(self, at):
        super().__init__()
        self.fc, self.at, self.calls = torch.nn.Linear(784, 10), at, 0

    def forward(self, x):
        out = torch.log_softmax(self.fc(x.flatten(1)), dim=1)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out * float("nan")
        return out


def test_divergence_after_the_last_log_step_is_caught_before_evaluation():
    from lambexp.training.loop import LoopOptions, fit
    from lambexp.training.sinks import MemorySink

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    model = Bomb(at=3)  # steps 1..4 of the one epoch; only step 1 is a log step
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = fit(model, opt, (x, y), (x, y), epochs=1, seed=0, sink=MemorySink(),
                options=LoopOptions(batch_size=16, log_interval=100))
    assert state.diverged_step == 3 and state.diverged_reason == "non-finite loss"
    assert state.history == []  # the diverged model was not evaluated


def test_an_unreadable_checkpoint_is_a_user_error(tiny_mnist_env, tmp_path):
    from lambexp.errors import UserError

    arm, data = _arm_and_data(tiny_mnist_env, long_config(1))
    (tmp_path / "arm").mkdir()
    (tmp_path / "arm" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot continue from this checkpoint: unreadable.*delete it"):
        run_arm(arm, data, torch.device("cpu"), tmp_path / "arm", NoProgress())


def test_tensorboard_verb_passes_its_exit_code(monkeypatch, tmp_path):
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: 0)
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(app, ["tensorboard", "--logdir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: 3)
    assert CliRunner().invoke(app, ["tensorboard", "--logdir", str(tmp_path / "runs")]).exit_code == 3
