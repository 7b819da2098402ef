"""Distributed training on the CPU (DDP over gloo): two processes give what one process gives.

The fit-level tests spawn two processes that train in memory; the end-to-end test runs a real
``torchrun --nproc-per-node 2 -m lambexp run``. Both rendezvous on the loopback interface and are
bounded in time.
"""

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_config
from typer.testing import CliRunner

from lambexp.cli import app
from lambexp.errors import Interrupted, UserError
from lambexp.model import build_model
from lambexp.optim import Lamb, Lars
from lambexp.training.distributed import SINGLE, World
from lambexp.training.loop import LoopOptions, LoopState, fit
from lambexp.training.sinks import MemorySink

TIMEOUT = 120  # seconds a multi-process part may take before the test fails
RANKS = 2
N_TRAIN, N_TEST = 100, 51  # batch 33: 33, 33, 33, 1 (split 1 + 0); the test set: shards 26 + 25
BATCHES = (33, 32)  # global batch sizes: one not divisible by 2, one divisible
TRUST_KEYS = ("r", "r1", "r2")
EPOCHS = 1  # 4 steps at batch 33, the last one partial
TWO_ARMS = tiny_config(batch_size=33, lr=0.01, expect="")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_tensors():
    """Seeded random images and labels: (train x, y), (test x, y)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_TEST, 1, 28, 28, generator=g)  # (151, 1, 28, 28)
    y = torch.randint(0, 10, (N_TRAIN + N_TEST,), generator=g)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def train(world: World, batch_size: int, state: LoopState | None = None,
          stop_requested=lambda: False, optimizer: str = "lamb") -> dict:
    """LeNet + LAMB, EPOCHS epochs of the tiny tensors; what must match across ranks and processes.
    ``optimizer="sgd"``: momentum SGD with weight decay, whose update is proportional to the
    gradient, so a gradient of the wrong scale shows (LAMB's and Adam's hardly depend on it)."""
    torch.manual_seed(1)
    model = build_model("lenet")
    if optimizer == "sgd":
        opt = Lars(model.named_parameters(), lr=0.05, momentum=0.9, weight_decay=0.01, sgd=True)
    else:
        opt = Lamb(model.named_parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    sink = MemorySink()
    options = LoopOptions(batch_size=batch_size, log_interval=2, world=world,
                          stop_requested=stop_requested)
    state = fit(model, opt, *tiny_tensors(), epochs=EPOCHS, seed=1, options=options, sink=sink,
                state=state)
    stats = opt.trust_stats()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "trust": {k: stats[k].clone() for k in TRUST_KEYS},
            "history": state.history, "train_loss": sink.series("train/loss")}


def stop_step(world: World) -> int:
    """The step at which training stops when rank 1 alone asks to, from its second poll on."""
    polls = iter(range(1000))
    state = LoopState()
    with pytest.raises(Interrupted):
        train(world, 33, state, stop_requested=lambda: world.rank == 1 and next(polls) >= 1)
    return state.step


def from_lead_results(world: World) -> list[str]:
    """What every rank gets from rank 0: a value, then an error."""
    def fail():
        raise UserError("no room")

    try:
        world.from_lead(fail)
    except UserError as err:
        return [str(world.from_lead(lambda: Path("runs/x"))), str(err)]
    return []


def _rank_main(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=RANKS, timeout=timedelta(seconds=TIMEOUT))
    try:
        world = World(rank=rank, size=RANKS, local_rank=rank)
        results = {batch: train(world, batch) for batch in BATCHES}
        results.update({f"sgd{batch}": train(world, batch, optimizer="sgd") for batch in BATCHES})
        results["stop_step"] = stop_step(world)
        results["from_lead"] = from_lead_results(world)
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Each rank's results from two spawned processes (gloo, loopback)."""
    out = tmp_path_factory.mktemp("ranks")
    port, ctx = free_port(), mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(rank, port, out)) for rank in range(RANKS)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * RANKS, "a rank failed or timed out (see stderr)"
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(RANKS)]


@pytest.mark.parametrize("batch", BATCHES)
def test_two_ranks_agree_exactly_with_each_other(ranks, batch):
    first, second = ranks[0][batch], ranks[1][batch]
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    for key in TRUST_KEYS:
        assert torch.equal(first["trust"][key], second["trust"][key]), key
    assert first["history"] == second["history"]  # test loss and accuracy, bit for bit
    assert first["train_loss"] == second["train_loss"]  # the global batch's mean, on both


@pytest.mark.parametrize("batch", BATCHES)
def test_two_ranks_match_one_process_with_the_same_global_batch(ranks, batch):
    one, two = train(SINGLE, batch), ranks[0][batch]
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for key in TRUST_KEYS:
        torch.testing.assert_close(two["trust"][key], one["trust"][key], rtol=1e-5, atol=1e-6)
    assert [h["test/accuracy"] for h in two["history"]] == [h["test/accuracy"] for h in one["history"]]
    assert [h["test/loss"] for h in two["history"]] == pytest.approx(
        [h["test/loss"] for h in one["history"]], rel=1e-5)
    assert [s for s, _ in two["train_loss"]] == [s for s, _ in one["train_loss"]]
    assert [v for _, v in two["train_loss"]] == pytest.approx([v for _, v in one["train_loss"]], rel=1e-5)


@pytest.mark.parametrize("batch", BATCHES)
def test_the_global_gradient_has_the_one_process_scale(ranks, batch):
    """Momentum SGD's update scales with the gradient: two ranks equal one process only if the
    gradient each step is the whole batch's mean, however the batch splits."""
    one, two = train(SINGLE, batch, optimizer="sgd"), ranks[0][f"sgd{batch}"]
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_stop_on_one_rank_stops_both_at_the_same_log_step(ranks):
    # polled at log steps 1, 3, 5, …: rank 1 says stop at its second poll, step 3
    assert [r["stop_step"] for r in ranks] == [3, 3]


def test_from_lead_sends_rank_0s_value_and_its_failure_to_every_rank(ranks):
    assert ranks[0]["from_lead"] == ["runs/x", "no room"]
    assert ranks[1]["from_lead"] == ["runs/x", "rank 0 failed, so rank 1 stops too (UserError: no room)"]


def test_torchrun_two_processes_write_one_run_folder_matching_one_process(tiny_mnist_env, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TWO_ARMS)
    torchrun = Path(sys.executable).with_name("torchrun")  # else the module it runs
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--nproc-per-node", str(RANKS), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "lambexp", "run", str(config),
           "--runs-dir", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    [run_dir] = [p for p in (tmp_path / "ddp").glob("*/*") if p.is_dir()]
    assert done.stdout.count("run folder:") == 2  # rank 0 alone prints, first and last
    assert done.stdout.count("[lamb] epoch 1/1") == 1
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == RANKS
    single = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "one"), "-q"])
    assert single.exit_code == 0, single.output
    [one_dir] = [p for p in (tmp_path / "one").glob("*/*") if p.is_dir()]
    for arm in ("adam", "lamb"):
        two = json.loads((run_dir / arm / "summary.json").read_text())
        one = json.loads((one_dir / arm / "summary.json").read_text())
        assert two["status"] == "finished" and two["steps"] == one["steps"] == 8  # 256 images, batches of 33
        assert two["final_test_accuracy"] == one["final_test_accuracy"]
        assert two["final_test_loss"] == pytest.approx(one["final_test_loss"], rel=1e-4, abs=1e-6)
        assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4, abs=1e-6)


def test_torchrun_trains_the_vit_with_a_validation_split_as_one_process_does(tiny_mnist_env, tmp_path):
    """model: vit and validation: 64 under torchrun (2 ranks): the same 6 steps (192 training images,
    batches of 33) and the same validation and test accuracy as one process."""
    config = tmp_path / "vit.yaml"
    config.write_text(tiny_config(batch_size=33, lr=0.003, model="vit", validation=64, expect=""))
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--nproc-per-node", str(RANKS), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "lambexp", "run", str(config),
           "--runs-dir", str(tmp_path / "ddp"), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    single = CliRunner().invoke(app, ["run", str(config), "--runs-dir", str(tmp_path / "one"), "-q"])
    assert single.exit_code == 0, single.output
    [run_dir], [one_dir] = ([p for p in (tmp_path / d).glob("*/*") if p.is_dir()] for d in ("ddp", "one"))
    for arm in ("adam", "lamb"):
        two = json.loads((run_dir / arm / "summary.json").read_text())
        one = json.loads((one_dir / arm / "summary.json").read_text())
        assert two["steps"] == one["steps"] == 6 and two["samples_per_epoch"] == 192
        assert two["final_val_accuracy"] == one["final_val_accuracy"]
        assert two["final_test_accuracy"] == one["final_test_accuracy"]
        assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4, abs=1e-6)
