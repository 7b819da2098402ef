"""`lambexp run` end to end on a tiny MNIST-format data set, event files read back with TensorBoard."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import events, run_dirs, tiny_config
from helpers import invoke as shared_invoke
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from typer.testing import CliRunner

from lambexp.cli import app

LENET_TENSORS = 8  # conv1, conv2, fc1, fc2: a weight and a bias each
TWO_ARMS = tiny_config(epochs=2, betas="[0.9, 0.99]", lr=0.01, device="auto", expect="")


def invoke(*args):
    return shared_invoke(*args, catch_exceptions=False)


@pytest.fixture
def two_arm_run(tiny_mnist_env, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TWO_ARMS)
    runs = tmp_path / "runs"
    result = invoke("run", config, "--runs-dir", runs, "--quiet")
    assert result.exit_code == 0, result.output
    [run_dir] = run_dirs(runs)
    return run_dir, result.output


def test_two_arms_write_events_summaries_and_config(two_arm_run):
    run_dir, output = two_arm_run
    assert output.splitlines()[0] == f"run folder: {run_dir}"  # printed first and last
    assert output.splitlines()[-1] == f"run folder: {run_dir}"
    assert "name: tiny" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "environment.json").read_text())["torch"] == torch.__version__
    # 256 training images, batch 64: 4 batches an epoch, 8 in all; logged after batches 0 and 2 of
    # each epoch (the post's batch_idx % 2 == 0) at the samples seen before them: 0, 128 | 256, 384
    for arm in ("adam", "lamb"):
        acc = events(run_dir / arm)
        tags = acc.Tags()
        for tag in ("train/loss", "test/loss", "test/accuracy", "lr", "throughput/samples_per_s",
                    "trust_layer/conv1.weight/r", "trust_layer/fc2.bias/r2"):
            assert tag in tags["scalars"], (arm, tag)
        assert [e.step for e in acc.Scalars("train/loss")] == [0, 128, 256, 384]
        assert [e.step for e in acc.Scalars("test/accuracy")] == [256, 512]  # after each epoch
        for key in ("r", "r1", "r2"):
            hist = acc.Histograms(f"trust/{key}")
            assert len(hist) == 4
            assert all(h.histogram_value.num == LENET_TENSORS for h in hist)
            # the histogram holds the same numbers as the per-layer scalars at that step
            layers = [t for t in tags["scalars"] if t.startswith("trust_layer/") and t.endswith(f"/{key}")]
            assert len(layers) == LENET_TENSORS
            total = sum(acc.Scalars(t)[-1].value for t in layers)
            assert hist[-1].histogram_value.sum == pytest.approx(total, rel=1e-5)
        summary = json.loads((run_dir / arm / "summary.json").read_text())
        assert summary["final_test_accuracy"] == pytest.approx(acc.Scalars("test/accuracy")[-1].value)
        assert summary["steps"] == 8 and summary["samples"] == 512
        assert summary["diverged"] is False and summary["samples_per_second"] > 0
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = HParamsPluginData.FromString(content).session_start_info
        assert start.hparams["arm"].string_value == arm
        assert start.hparams["optimizer"].string_value == arm  # the arms are named after them
        assert start.hparams["lr"].number_value == pytest.approx(0.01)
        used = "cuda" if torch.cuda.is_available() else "cpu"
        assert start.hparams["device"].string_value == used  # the device used, not "auto"
        assert start.hparams["beta1"].number_value == pytest.approx(0.9)
        assert start.hparams["beta2"].number_value == pytest.approx(0.99)
        assert start.hparams["bias_correction"].number_value == 1  # true


def test_adam_arm_applies_no_trust_ratio_but_logs_it(two_arm_run):
    run_dir, _ = two_arm_run
    r = [h.histogram_value for h in events(run_dir / "adam").Histograms("trust/r")]
    # r is computed for Adam too, as in the blog's figure: the layers' real ratios (the post: far
    # below 1 at the start), not the 1 that Adam mode applies, nor NaN
    assert all(h.num == LENET_TENSORS for h in r) and r[0].max < 0.5 and r[0].min > 0


def test_same_seed_gives_identical_metrics(two_arm_run, tmp_path):
    run_dir, _ = two_arm_run
    # bit-identical on the CPU (CUDA's kernels may add in another order from run to run)
    if torch.cuda.is_available():
        pytest.skip("determinism is promised on the CPU; the fixture ran on CUDA")
    result = invoke("run", tmp_path / "tiny.yaml", "--runs-dir", tmp_path / "runs2", "--quiet")
    assert result.exit_code == 0
    [again] = run_dirs(tmp_path / "runs2")
    for arm in ("adam", "lamb"):
        first = json.loads((run_dir / arm / "summary.json").read_text())
        second = json.loads((again / arm / "summary.json").read_text())
        assert first["history"] == second["history"]
        assert first["final_train_loss"] == second["final_train_loss"]


@pytest.mark.parametrize("text, overrides, expected", [
    (TWO_ARMS.replace("  - name: lamb\n    optimizer: lamb\n",
                      "  - name: lamb\n    optimizer: lamb\n    lr: -0.1\n"),
     [], "arms[1].lr: must be > 0 (got -0.1)"),
    (TWO_ARMS.replace("epochs: 2", "epochs: 2\nepoch: 3"), [], "epoch: unknown key"),
    (TWO_ARMS.replace("betas: [0.9, 0.99]", "betas: [0.9, 1.5]"), [], "betas[1]"),
    (TWO_ARMS.replace("batch_size: 64", "batch_size: 0"), [], "batch_size: must be >= 1"),
    (TWO_ARMS.replace("name: lamb", "name: adam"), [], "duplicate"),
    (TWO_ARMS, ["epochs"], "epochs"),
    (TWO_ARMS, ["arms.nosuch.lr=0.1"], "nosuch"),
    (TWO_ARMS, ["optimizer=adamw"], "optimizer"),
])
def test_config_errors_exit_2_with_key_path_and_no_run_dir(tiny_mnist_env, tmp_path, text,
                                                           overrides, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(config), *overrides, "--runs-dir", str(runs)])
    assert result.exit_code == 2, result.output
    assert f"error: {config}: " in result.output and expected in result.output
    assert "Traceback" not in result.output
    assert not runs.exists() or not any(runs.rglob("*"))


def test_missing_file_and_cuda_without_gpu(tiny_mnist_env, tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.output
    if torch.cuda.is_available():
        return
    config = tmp_path / "cuda.yaml"
    config.write_text(TWO_ARMS.replace("device: auto", "device: cuda"))
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "cuda" in result.output
    assert not (tmp_path / "runs").exists()


def test_validate_show_config_and_shipped_configs(tmp_path):
    configs = sorted(Path("configs").rglob("*.yaml"))
    assert Path("configs/beyond/large_batch.yaml") in configs
    assert len(configs) >= 6
    result = invoke("validate", *configs)
    assert result.exit_code == 0 and result.output.count("ok: ") == len(configs)
    shown = invoke("show-config", "configs/adam_vs_lamb.yaml", "epochs=1", "arms.lamb.lr=0.1")
    assert shown.exit_code == 0
    assert shown.output.count("epochs: 1") == 2 and "lr: 0.1\n" in shown.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narms: []\n")
    result = CliRunner().invoke(app, ["validate", "configs/adam_vs_lamb.yaml", str(bad)])
    assert result.exit_code == 2 and f"error: {bad}: arms" in result.output


def test_data_verify_good_and_corrupt(fresh_tiny_mnist_env):
    result = invoke("data", "verify")
    assert result.exit_code == 0 and result.output.count("ok ") == 4
    path = fresh_tiny_mnist_env.data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["data", "verify"])
    assert result.exit_code == 2
    assert "t10k-labels-idx1-ubyte" in result.output and "--force" in result.output


def test_python_dash_m_and_help():
    out = subprocess.run([sys.executable, "-m", "lambexp", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Exit codes" in out.stdout and "run" in out.stdout


def test_the_summary_table_holds_each_arms_numbers_in_aligned_columns(two_arm_run, capsys):
    """The table `lambexp run` ends with (made by lambexp.output): a header, then per arm its final
    and best accuracy, whether it diverged, samples/s and wall seconds as its summary.json has them,
    the numbers flush right under the right edge of their heading."""
    from lambexp.cli import print_summaries

    run_dir, _ = two_arm_run
    print_summaries([run_dir / "adam", run_dir / "lamb"])
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["arm", "final", "acc", "best", "acc", "diverged", "samples/s", "wall", "s"]
    ends = [header.index(h) + len(h) for h in ("final acc", "best acc", "diverged", "samples/s", "wall s")]
    for row, arm in zip(rows, ("adam", "lamb"), strict=True):
        s = json.loads((run_dir / arm / "summary.json").read_text())
        cells = row.split()
        assert cells == [arm, f"{100 * s['final_test_accuracy']:.2f}%",
                         f"{100 * s['best_test_accuracy']:.2f}%", "no", str(round(s["samples_per_second"])),
                         f"{s['wall_seconds']:.1f}"]
        assert [row.index(c, end - len(c)) + len(c) for c, end in zip(cells[1:], ends)] == ends
