"""`reproduce --stack N` (lambexp/runner/stacked.py, lambexp/training/group.py): arms trained as one
stacked model write what each writes trained alone, one after another: the same summary, metrics,
TensorBoard events and weights, to float rounding, for LAMB of two rules, Adam mode, LARS, a member
that diverges and stops and one that diverges and goes on; members resumed at different steps, and a
stack interrupted mid-way and resumed. The final weights are also scored independently on the test
images as written (test_against_world.scores)."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from conftest import assert_reproduce_refuses, events, invoke, summary_json
from test_against_world import scores

from lambexp.errors import Interrupted
from lambexp.folders.layout import CHECKPOINT_FILE, read_jsonl
from lambexp.runner.reproduce import reproduce

ARMS = ["lamb", "adam", "paper", "lars", "boom", "boom_on"]
CONFIG = """\
name: toy
epochs: 2
batch_size: 48
log_interval: 2
device: cpu
lr: 0.01
arms:
  - {name: lamb, optimizer: lamb}
  - {name: adam, optimizer: adam}
  - {name: paper, optimizer: lamb, rule: paper, weight_decay: 0.01, betas: [0.9, 0.999]}
  - {name: lars, optimizer: lars, lr: 0.1}
  - {name: boom, optimizer: adam, lr: 1.0e+30}
  - {name: boom_on, optimizer: adam, lr: 1.0e+30, on_divergence: continue}
expect: []
"""  # 256 tiny images in batches of 48: 5 full batches and one of 16 per epoch


def run(tmp_path, name, stack, stop_after=None, arms=ARMS):
    """reproduce the toy config (only ``arms``) into tmp_path/name with ``--stack stack``;
    ``stop_after``: a stop is requested from that poll on (all threads counted)."""
    config = tmp_path / "toy.yaml"
    lines = CONFIG.splitlines()
    config.write_text("\n".join(line for line in lines
                                if not line.startswith("  - {name:") or line.split()[2][:-1] in arms)
                      + "\n")
    polls, lock = [0], threading.Lock()

    def stop():
        with lock:
            polls[0] += 1
            return stop_after is not None and polls[0] > stop_after

    reproduce([config], seeds=1, out=tmp_path / name, say=lambda s: None, stack=stack, stop_requested=stop)
    return tmp_path / name / "toy" / "seed1"


def same(a, b, rel=1e-4, abs=1e-6) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == pytest.approx(b, rel=rel, abs=abs)


def close(a, b) -> bool:
    """JSON values equal, numbers to float rounding (NaN equals NaN)."""
    if isinstance(a, dict):  # a loss near 0 (a tiny set learned by heart) is rounding: abs 1e-3
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same(a[k], b[k], abs=1e-3) if "loss" in k and isinstance(a[k], float) else close(a[k], b[k])
            for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return same(a, b)
    return a == b


def assert_same_training(ours, theirs, tiny) -> None:
    """One arm folder against another: what the summary, metrics.jsonl, the TensorBoard events and
    model.pt say; and our final weights' test accuracy, scored independently."""
    s, t = summary_json(ours), summary_json(theirs)
    for key in ("status", "diverged", "diverged_step", "diverged_reason", "steps", "samples", "epochs_done",
                "settings"):
        assert s[key] == t[key], (ours.name, key)
    assert same(s["final_test_accuracy"], t["final_test_accuracy"], rel=0, abs=1 / 128 + 1e-9)
    assert same(s["final_test_loss"], t["final_test_loss"], abs=1e-3)
    mine, other = read_jsonl(ours / "metrics.jsonl"), read_jsonl(theirs / "metrics.jsonl")
    assert len(mine) == len(other)
    for r, q in zip(mine, other):
        r.get("values", {}).pop("throughput/samples_per_s", None)
        q.get("values", {}).pop("throughput/samples_per_s", None)
        assert close(r, q), (ours.name, r, q)
    e, f = events(ours), events(theirs)
    assert e.Tags()["scalars"] == f.Tags()["scalars"] and e.Tags()["histograms"] == f.Tags()["histograms"]
    for tag in e.Tags()["scalars"]:
        assert [x.step for x in e.Scalars(tag)] == [x.step for x in f.Scalars(tag)], tag
    if s["status"] == "finished":
        w = torch.load(ours / "model.pt", weights_only=True)
        v = torch.load(theirs / "model.pt", weights_only=True)
        # each member's file holds its own weights, not the stack's
        assert (ours / "model.pt").stat().st_size == (theirs / "model.pt").stat().st_size
        for name in v:  # Adam's m/√v magnifies rounding where g ≈ 0: compare tensors as a whole
            a, b = w[name], v[name]
            assert torch.equal(a.isnan(), b.isnan()), (ours.name, name)
            a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
            assert (a - b).norm() <= 1e-4 * b.norm() + 1e-6, (ours.name, name, (a - b).norm() / b.norm())
        if not s["diverged"]:
            _, accuracy = scores(w, tiny.test_images, tiny.test_labels)
            assert accuracy == pytest.approx(s["final_test_accuracy"], abs=1e-9)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The arms one after another (--stack off), on the module's own tiny set."""
    from conftest import write_tiny_mnist

    root = tmp_path_factory.mktemp("straight")
    tiny = write_tiny_mnist(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("LAMBEXP_MNIST_MD5SUMS", str(tiny.manifest))
    mp.setenv("LAMBEXP_DATA", str(tiny.data_dir))
    try:
        yield run(root, "straight", stack=1), tiny, mp
    finally:
        mp.undo()


@pytest.fixture
def world(straight, monkeypatch):
    folder, tiny, _ = straight
    monkeypatch.setenv("LAMBEXP_MNIST_MD5SUMS", str(tiny.manifest))
    monkeypatch.setenv("LAMBEXP_DATA", str(tiny.data_dir))
    return folder, tiny


def test_the_arms_it_compares_differ(world):
    """The comparison has teeth: the arms' results differ from each other, and the two boom arms
    diverge (one stops, one goes on to the end)."""
    folder, _ = world
    finals = [summary_json(folder / a)["final_test_loss"] for a in ("lamb", "adam", "paper", "lars")]
    assert len({round(x, 6) for x in finals}) == 4
    boom, boom_on = summary_json(folder / "boom"), summary_json(folder / "boom_on")
    assert boom["diverged"] and boom_on["diverged"]
    assert boom["steps"] < 12 and boom_on["steps"] == 12  # 2 epochs of 6 batches


def test_a_stack_writes_what_its_arms_write_one_by_one(world, tmp_path):
    straight, tiny = world
    (tmp_path / "toy.yaml").write_text(CONFIG)
    result = invoke("reproduce", tmp_path / "toy.yaml", "--seeds", "1", "--out", tmp_path / "stacked",
                    "--stack", "6", "-q")
    assert result.exit_code == 0, result.output
    for arm in ARMS:
        assert_same_training(tmp_path / "stacked" / "toy" / "seed1" / arm, straight / arm, tiny)


def test_stacks_in_worker_processes_write_what_the_arms_write_one_by_one(world, tmp_path):
    """--jobs 2 --stack 3: two worker processes, each training three arms as one stacked model."""
    straight, tiny = world
    (tmp_path / "toy.yaml").write_text(CONFIG)
    result = invoke("reproduce", tmp_path / "toy.yaml", "--seeds", "1", "--out", tmp_path / "jobs",
                    "--jobs", "2", "--stack", "3")
    assert result.exit_code == 0, result.output
    assert "6 trainings in 2 stacks of up to 3, 2 at once" in result.output
    assert result.output.count("3 trainings as one stacked model: ") == 2
    for arm in ARMS:
        assert_same_training(tmp_path / "jobs" / "toy" / "seed1" / arm, straight / arm, tiny)


def test_members_resumed_at_different_steps_step_together(world, tmp_path):
    """The first arm stopped alone at step 3 (its checkpoint mid-epoch), the others fresh: stacked,
    the first reaches its short last batch while the others are at full ones (padding)."""
    straight, tiny = world
    with pytest.raises(Interrupted):  # polls: 3 while planning, 1 before the arm, then 1 a step
        run(tmp_path, "out", stack=1, stop_after=7, arms=["lamb", "adam", "lars"])
    checkpoint = torch.load(tmp_path / "out" / "toy" / "seed1" / "lamb" / CHECKPOINT_FILE, weights_only=False)
    assert checkpoint["loop"]["step"] == 3 and checkpoint["loop"]["batch"] == 3
    assert not (tmp_path / "out" / "toy" / "seed1" / "adam").exists()
    folder = run(tmp_path, "out", stack=3, arms=["lamb", "adam", "lars"])
    for arm in ("lamb", "adam", "lars"):
        assert_same_training(folder / arm, straight / arm, tiny)


def test_a_stack_interrupted_mid_way_checkpoints_each_member_and_resumes(world, tmp_path):
    straight, tiny = world
    with pytest.raises(Interrupted):
        run(tmp_path, "out", stack=4, stop_after=20, arms=["lamb", "paper", "lars", "boom_on"])
    folder = tmp_path / "out" / "toy" / "seed1"
    for arm in ("lamb", "paper", "lars", "boom_on"):
        assert summary_json(folder / arm)["status"] == "interrupted"
        assert (folder / arm / CHECKPOINT_FILE).is_file()
    run(tmp_path, "out", stack=4, arms=["lamb", "paper", "lars", "boom_on"])
    for arm in ("lamb", "paper", "lars", "boom_on"):
        assert_same_training(folder / arm, straight / arm, tiny)


def test_a_group_steps_members_together_and_one_that_leaves_owns_its_weights(tmp_path):
    """StackGroup by hand: three LeNets in three threads take a step; each gets its own loss (as
    F.nll_loss of its model alone says) and gradient; a member's file mid-group holds its weights
    alone; one leaves, owning its memory again, and the two others step on without it."""
    from concurrent.futures import ThreadPoolExecutor

    import torch.nn.functional as F

    from lambexp.model import build_model
    from lambexp.training.checkpoint import save_weights
    from lambexp.training.group import StackGroup

    nets = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        nets.append(build_model("lenet"))
    torch.manual_seed(0)
    x, y = torch.randn(3, 8, 1, 28, 28), torch.randint(0, 10, (3, 8))
    alone = [F.nll_loss(net(x[i]), y[i]) for i, net in enumerate(nets)]
    grads = [torch.autograd.grad(loss, list(net.parameters())) for loss, net in zip(alone, nets)]
    group = StackGroup(3)

    def step(i):
        return group.step(i, nets[i], x[i], y[i])

    with ThreadPoolExecutor(3) as pool:
        losses = list(pool.map(step, range(3)))
    for i, net in enumerate(nets):
        assert losses[i].item() == pytest.approx(alone[i].item(), rel=1e-5)
        for p, g in zip(net.parameters(), grads[i]):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)
    torch.manual_seed(9)
    save_weights(tmp_path / "lone.pt", build_model("lenet"))
    save_weights(tmp_path / "member.pt", nets[1])  # mid-group: its parameters are views of the stack
    assert (tmp_path / "member.pt").stat().st_size == (tmp_path / "lone.pt").stat().st_size
    before = [p.detach().clone() for p in nets[0].parameters()]
    group.leave(0)
    for p, b in zip(nets[0].parameters(), before):
        assert p.untyped_storage().nbytes() == p.nbytes and torch.equal(p.detach(), b)
    with torch.no_grad():
        for p in nets[2].parameters():
            p.mul_(0.5)  # stepping a member's parameters moves its slice of the stack
    alone = [F.nll_loss(nets[i](x[i]), y[i]).item() for i in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        losses = list(pool.map(step, (1, 2)))
    assert [v.item() for v in losses] == pytest.approx(alone, rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--stack", "0"], "--stack: a number of trainings to stack (2 or more), or off (got '0')"),
    (["--stack", "two"], "--stack: a number of trainings to stack (2 or more), or off (got 'two')"),
])
def test_stack_refuses_what_it_cannot_do_in_one_line(args, message, tmp_path):
    assert_reproduce_refuses(CONFIG, tmp_path, args, message)
    result = invoke("resume", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_bars_of_a_stack_share_one_display_on_a_terminal():
    """Members train at once, and rich allows one live display at a time: the factory's bars share
    one, which shows every member's bar and goes when the last ends."""
    import io

    from rich.console import Console

    from lambexp.config import Arm
    from lambexp.training.progress import progress_factory

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    make = progress_factory(False, console)
    bars = [make(Arm(name=name, optimizer="lamb")) for name in ("first", "second")]
    for bar in bars:
        bar.begin(10)
    for k, bar in enumerate(bars):
        bar.advance(3 + k, 2.5)
    shared = bars[0].shared
    assert bars[1].shared is shared and shared.bar.live.is_started
    assert [(t.description, t.completed) for t in shared.bar.tasks] == [("first", 3), ("second", 4)]
    shared.bar.refresh()
    bars[0].end()
    assert bars[1].shared.bar.live.is_started  # the second still trains
    bars[1].end()
    assert not bars[1].shared.bar.live.is_started
    shown = out.getvalue()
    assert "first" in shown and "second" in shown and "4/10" in shown


@pytest.mark.filterwarnings("ignore:Lamb\\(fused=True\\). torch.compile failed")
def test_a_member_resumed_from_a_compiled_run_steps_without_compiling(tmp_path, monkeypatch):
    """torch.compile is not thread-safe, so members take the multi-tensor step; a checkpoint of a
    lone `fused: true` run must not bring the compiled step back (its param groups say fused)."""
    import threading

    from lambexp.config import Arm
    from lambexp.data.tensors import MnistTensors
    from lambexp.optim.fast import fused
    from lambexp.runner.experiment import run_arm
    from lambexp.training.group import StackGroup
    from lambexp.training.progress import NoProgress

    asked = []

    def kernel(rule):  # stands in for the compiled kernel: who asked, then "fails" (foreach runs)
        asked.append(threading.current_thread().name)
        raise fused.CompileFailed("not compiled in this test")

    monkeypatch.setattr(fused, "kernel", kernel)
    g = torch.Generator().manual_seed(0)
    data = MnistTensors(torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g),
                        torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    arms = [Arm(name=f"a{s}", optimizer="lamb", fused=True, epochs=1, batch_size=32, log_interval=4,
                device="cpu", seed=s) for s in (1, 2)]
    for arm in arms:  # alone, stopped after 3 steps: a checkpoint whose groups say fused
        polls = iter(range(10))
        with pytest.raises(Interrupted):
            run_arm(arm, data, torch.device("cpu"), tmp_path / arm.name, NoProgress(),
                    lambda polls=polls: next(polls) >= 3)
    assert asked  # the lone runs asked for the compiled step
    asked.clear()
    group = StackGroup(2)

    def member(slot):
        try:
            run_arm(arms[slot], data, torch.device("cpu"), tmp_path / arms[slot].name, NoProgress(),
                    member=group.member(slot))
        finally:
            group.leave(slot)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert asked == []
    assert all(summary_json(tmp_path / arm.name)["status"] == "finished" for arm in arms)


def test_running_out_of_memory_in_a_stack_says_to_stack_fewer(tmp_path):
    """A stack's members share the memory of one forward: the line says --stack, not only batch_size."""
    from lambexp.config import Arm
    from lambexp.runner.experiment import resource_problem

    arm = Arm(name="lamb", optimizer="lamb", batch_size=512)
    err = RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
    alone = resource_problem(err, arm, torch.device("cuda"), tmp_path)
    stacked = resource_problem(err, arm, torch.device("cuda"), tmp_path, stacked=True)
    assert alone == ("lamb: out of memory with batch_size 512 on cuda (CUDA out of memory. Tried to"
                     " allocate 20.00 GiB); lower batch_size")
    assert stacked == ("lamb: out of memory with batch_size 512 on cuda in a stack (CUDA out of memory."
                       " Tried to allocate 20.00 GiB); lower --stack (fewer trainings at once) or batch_size")
