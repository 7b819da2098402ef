"""What a person sees from `lambexp run`: one line per epoch when piped, a bar on a terminal, only the
run folder with --quiet; and what a second Ctrl-C does. Real processes, real pipes and a real pty."""

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_CONFIG, lambexp_argv, run_dirs, summary_json

EPOCH_LINE = re.compile(r"^\[(\w+)\] epoch (\d+)/(\d+)  train loss (\d+\.\d{4})  "
                        r"test loss (\d+\.\d{4})  test accuracy (\d+\.\d{2})%$")


@pytest.fixture
def two_epochs(tiny_mnist_env, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.replace("epochs: 1", "epochs: 2"))
    return config


def test_piped_run_prints_one_plain_line_per_epoch_with_the_summarys_numbers(two_epochs, tmp_path):
    done = subprocess.run(lambexp_argv("run", two_epochs, "--runs-dir", tmp_path / "runs"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr  # no terminal control codes in a pipe
    [run_dir] = run_dirs(tmp_path / "runs")
    lines = done.stdout.splitlines()
    epochs = [EPOCH_LINE.match(line) for line in lines if "] epoch " in line]
    assert len(epochs) == 4 and all(epochs), lines
    assert [(m[1], m[2], m[3]) for m in epochs] == [("adam", "1", "2"), ("adam", "2", "2"),
                                                   ("lamb", "1", "2"), ("lamb", "2", "2")]
    for m in epochs:
        evaluation = summary_json(run_dir / m[1])["history"][int(m[2]) - 1]
        assert float(m[5]) == pytest.approx(evaluation["test/loss"], abs=5e-5)
        assert float(m[6]) == pytest.approx(100 * evaluation["test/accuracy"], abs=5e-3)
    assert lines[0].startswith("MNIST: ") and lines[1] == lines[-1] == f"run folder: {run_dir}"


def test_quiet_prints_only_the_run_folder(two_epochs, tmp_path):
    done = subprocess.run(lambexp_argv("run", two_epochs, "--runs-dir", tmp_path / "runs", "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [run_dir] = run_dirs(tmp_path / "runs")
    assert (done.stdout, done.stderr) == (f"run folder: {run_dir}\n", "")


def test_json_prints_one_json_document(two_epochs, tmp_path):
    done = subprocess.run(lambexp_argv("run", two_epochs, "--runs-dir", tmp_path / "runs", "--json"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [run_dir] = run_dirs(tmp_path / "runs")
    data = json.loads(done.stdout)
    assert data["run_folder"] == str(run_dir) and [a["status"] for a in data["arms"]] == ["finished"] * 2


def read_until_exit(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_the_epoch_lines(tiny_mnist_env, tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(TINY_CONFIG.replace("epochs: 1", "epochs: 40").replace("log_interval: 2",
                                                                             "log_interval: 1"))
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen(lambexp_argv("run", config, "--runs-dir", tmp_path / "runs"), stdin=follower,
                            stdout=follower, stderr=follower, env=env)
    os.close(follower)
    try:
        seen = read_until_exit(leader, proc, timeout=300)
    finally:
        os.close(leader)
    assert proc.wait(timeout=60) == 0, seen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen)
    assert "━" in plain and re.search(r"\b160/160\b|\b\d+/160\b", plain), plain[-2000:]  # the bar
    assert "[lamb] epoch 40/40  train loss" in plain and "\x1b[" in seen


SECOND_SIGNAL = """
import os, signal, sys, time
from lambexp.training.signals import StopFlag, catch
flag = StopFlag()
catch(flag)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("after the first:", flag(), flag.exit_code, flush=True)
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
time.sleep(0.2)
print("still running", flush=True)
"""


@pytest.mark.parametrize("second, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_second_signal_exits_at_once_and_says_so(second, code):
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, second], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == code
    assert done.stdout == "after the first: True 130\n"  # the first only asked to stop
    assert done.stderr.split("\n")[1:4:2] == [
        "stopping cleanly: the arm in training is checkpointed after its step (Ctrl-C again to quit"
        " at once)",
        "quitting now: the last checkpoint written is kept"]


@pytest.mark.slow
def test_two_ctrl_c_on_a_real_run_leave_a_folder_that_resumes(tiny_mnist_env, tmp_path):
    """Ctrl-C, then Ctrl-C again once the first is announced: exit 130 at whatever point the second
    lands (mid-step, mid-checkpoint or after it), and `lambexp resume` finishes the arm with every
    logged step once. (That the second quits at once is the subprocess test above.)"""
    config = tmp_path / "long.yaml"
    config.write_text(TINY_CONFIG.replace("epochs: 1", "epochs: 30").replace(
        "  - {name: adam, optimizer: adam}\n", "").replace("log_interval: 2",
                                                           "log_interval: 2\ncheckpoint_every: 2"))
    proc = subprocess.Popen(lambexp_argv("run", config, "--runs-dir", tmp_path / "runs"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the third epoch line: past the first checkpoint (epoch 2)
        if line.startswith("[lamb] epoch 3/"):
            break
    proc.send_signal(signal.SIGINT)
    assert proc.stderr.readline() == "\n" and proc.stderr.readline().startswith("stopping cleanly")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    [run_dir] = run_dirs(tmp_path / "runs")
    done = subprocess.run(lambexp_argv("resume", run_dir, "-q"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    summary = summary_json(run_dir / "lamb")
    assert summary["status"] == "finished" and summary["steps"] == 120
    records = [json.loads(line) for line in (run_dir / "lamb" / "metrics.jsonl").open()]
    steps = [r["step"] for r in records if "train/loss" in r.get("values", {})]
    assert steps == sorted(set(steps)) and len(steps) == 60  # none twice, none missing


def test_a_closed_stderr_does_not_turn_ctrl_c_into_an_error():
    """`lambexp run … 2>&1 | tee log`: the same Ctrl-C kills tee, and the announcement then
    writes to a closed pipe; the stop must still be a clean one."""
    script = SECOND_SIGNAL.replace('print("still running", flush=True)', "")
    read, write = os.pipe()
    os.close(read)  # a reader that is gone
    done = subprocess.run([sys.executable, "-c", script, "SIGINT"], stdout=subprocess.PIPE,
                          stderr=write, text=True, timeout=60)
    os.close(write)
    assert done.returncode == 130 and done.stdout == "after the first: True 130\n"
