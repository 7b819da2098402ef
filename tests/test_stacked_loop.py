"""`reproduce --stack N` (lambexp/runner/stacked.py, lambexp/training/members.py): arms trained as one
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
from helpers import assert_reproduce_refuses, events, invoke, point_env_at, summary_json
from reference_lenet import scores

from lambexp.base.files import CHECKPOINT_FILE
from lambexp.errors import Interrupted
from lambexp.folders.layout import read_jsonl
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
def straight(tmp_path_factory, tiny_mnist):
    """The arms one after another (--stack off), on the module's tiny set."""
    root = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        point_env_at(mp, tiny_mnist)
        return run(root, "straight", stack=1)


@pytest.fixture
def world(straight, tiny_mnist_env):
    """The straight run's arms folder and the tiny set, which the environment points at."""
    return straight, tiny_mnist_env


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


def tiny_data(n_train: int = 24, n_test: int = 16):
    from lambexp.data.tensors import MnistTensors

    g = torch.Generator().manual_seed(0)
    return MnistTensors(torch.randn(n_train, 1, 28, 28, generator=g),
                        torch.randint(0, 10, (n_train,), generator=g),
                        torch.randn(n_test, 1, 28, 28, generator=g),
                        torch.randint(0, 10, (n_test,), generator=g))


def test_a_group_steps_members_together_and_one_that_leaves_owns_its_weights(tmp_path):
    """Members by hand, from one thread: three LeNet Trainers (lr 0, so the weights stay) take a
    step; each gets its own loss (as F.nll_loss of its model alone on the batch its seed draws) and
    gradient; a member's file mid-group holds its weights alone; one leaves, owning its memory
    again, and the two others step on without it, to the end of their epoch."""
    import torch.nn.functional as F

    from lambexp.model import build_model
    from lambexp.training.checkpoint import save_weights
    from lambexp.training.loop import LoopOptions, Trainer
    from lambexp.training.members import Members
    from lambexp.training.sinks import MemorySink

    data = tiny_data()
    x, y = data.train_x, data.train_y
    nets = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        nets.append(build_model("lenet"))
    orders = [torch.randperm(24, generator=torch.Generator().manual_seed(s)).split(8) for s in (1, 2, 3)]
    alone = [F.nll_loss(net(x[orders[i][0]]), y[orders[i][0]]) for i, net in enumerate(nets)]
    grads = [torch.autograd.grad(loss, list(net.parameters())) for loss, net in zip(alone, nets)]
    options = LoopOptions(batch_size=8, log_interval=1)
    trainers = [Trainer(net, torch.optim.SGD(net.parameters(), lr=0.0), (x, y), (data.test_x, data.test_y),
                        epochs=1, seed=s, options=options, sink=MemorySink())
                for s, net in zip((1, 2, 3), nets)]
    for trainer in trainers:
        trainer.begin()
    group = Members(trainers)
    assert group.step() == []
    for i, net in enumerate(nets):
        assert trainers[i].state.step == 1
        assert trainers[i].state.last_loss == pytest.approx(alone[i].item(), rel=1e-5)
        for p, g in zip(net.parameters(), grads[i]):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)
    torch.manual_seed(9)
    save_weights(tmp_path / "lone.pt", build_model("lenet"))
    save_weights(tmp_path / "member.pt", nets[1])  # mid-group: its parameters are views of the stack
    assert (tmp_path / "member.pt").stat().st_size == (tmp_path / "lone.pt").stat().st_size
    before = [p.detach().clone() for p in nets[0].parameters()]
    group.leave(0)
    assert group.training == [1, 2]
    for p, b in zip(nets[0].parameters(), before):
        assert p.untyped_storage().nbytes() == p.nbytes and torch.equal(p.detach(), b)
    with torch.no_grad():
        for p in nets[2].parameters():
            p.mul_(0.5)  # stepping a member's parameters moves its slice of the stack
    alone = [F.nll_loss(nets[i](x[orders[i][1]]), y[orders[i][1]]).item() for i in (1, 2)]
    assert group.step() == []
    assert [trainers[i].state.last_loss for i in (1, 2)] == pytest.approx(alone, rel=1e-5)
    assert trainers[0].state.step == 1  # it left: no step
    assert group.step() == [] and group.step() == [1, 2] and group.training == []
    for i in (1, 2):  # the epoch's 3 batches, then its evaluation
        assert trainers[i].state.step == 3 and len(trainers[i].state.history) == 1 and trainers[i].ended


def test_a_trainer_stepped_by_hand_trains_as_fit_does():
    """fit is a loop over Trainer.step: stepped by hand, the same steps, logs and evaluations, and
    ``step`` says False, taking none, once every epoch is done."""
    from lambexp.model import build_model
    from lambexp.training.loop import LoopOptions, Trainer, fit
    from lambexp.training.sinks import MemorySink

    data = tiny_data()
    runs = []
    for by_hand in (False, True):
        torch.manual_seed(1)
        net = build_model("lenet")
        opt, sink = torch.optim.SGD(net.parameters(), lr=0.05), MemorySink()
        args = dict(epochs=2, seed=3, options=LoopOptions(batch_size=10, log_interval=2), sink=sink)
        train, test = (data.train_x, data.train_y), (data.test_x, data.test_y)
        if by_hand:
            with Trainer(net, opt, train, test, **args) as trainer:
                steps = 0
                while trainer.step():
                    steps += 1
                assert steps == 6 and not trainer.step()  # 2 epochs of 3 batches (10, 10, 4)
            state = trainer.state
        else:
            state = fit(net, opt, train, test, **args)
        runs.append((state, sink.scalar_log, [p.detach() for p in net.parameters()]))
    (a, log_a, w_a), (b, log_b, w_b) = runs
    assert (a.step, a.samples, a.epoch, a.history) == (b.step, b.samples, b.epoch, b.history) == \
        (6, 48, 3, a.history)
    assert [(s, tag) for s, tag, _ in log_a] == [(s, tag) for s, tag, _ in log_b]
    assert all(torch.equal(p, q) for p, q in zip(w_a, w_b))


class Inputs:
    """ArmInputs' part that train_stack reads: every arm's data, on the CPU."""

    def __init__(self, data):
        self._data = data

    def data(self, arm):
        return self._data, torch.device("cpu")


def group_of(tmp_path, names, **settings):
    from lambexp.config import Arm
    from lambexp.runner.plan import Training

    arms = [Arm(name=name, optimizer="lamb", epochs=2, batch_size=8, log_interval=1, device="cpu",
                seed=k + 1, **settings) for k, name in enumerate(names)]
    return [Training(f"toy/seed1/{arm.name}", arm, tmp_path / arm.name) for arm in arms]


@pytest.mark.filterwarnings("ignore:Lamb\\(fused=True\\). torch.compile failed")
def test_members_of_a_stack_take_the_compiled_step_where_it_is_asked_for(tmp_path, monkeypatch):
    """One thread steps every member: `fused: true` asks for the compiled step in a stack as alone
    (where threads once had to turn it off), and the members finish."""
    from lambexp.optim.fast import fused
    from lambexp.runner.stacked import train_stack
    from lambexp.training.progress import NoProgress

    asked = []

    def kernel(rule):  # stands in for the compiled kernel: who asked, then "fails" (foreach runs)
        asked.append(rule)
        raise fused.CompileFailed("not compiled in this test")

    monkeypatch.setattr(fused, "kernel", kernel)
    group = group_of(tmp_path, ["a", "b"], fused=True)
    results = train_stack(group, Inputs(tiny_data()), lambda arm: NoProgress(), lambda: False)
    assert asked and [status for status, _ in results] == ["finished", "finished"]
    assert all(summary_json(t.folder)["status"] == "finished" for t in group)


def test_a_member_failing_before_its_first_step_stops_the_group_at_once(tmp_path):
    """The second member's checkpoint is not one: the first, already started, is checkpointed at
    step 0 and marked interrupted; the third is never touched; the refusal is raised."""
    from lambexp.errors import UserError
    from lambexp.runner.stacked import train_stack
    from lambexp.training.progress import NoProgress

    group = group_of(tmp_path, ["a", "b", "c"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    lines = []
    with pytest.raises(UserError, match="b"):
        train_stack(group, Inputs(tiny_data()), lambda arm: NoProgress(), lambda: False, say=lines.append)
    a = summary_json(tmp_path / "a")
    assert a["status"] == "interrupted" and a["steps"] == 0
    assert torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=False)["loop"]["step"] == 0
    assert (tmp_path / "b" / CHECKPOINT_FILE).read_bytes() == b"not a checkpoint"
    assert not (tmp_path / "c").exists()
    assert lines == ["toy/seed1/a: interrupted, checkpointed"]


def test_a_member_failing_mid_way_stops_the_group_at_once(tmp_path, monkeypatch):
    """The second member runs out of memory in its third step: it is marked failed, with the line
    that says to stack fewer; the others stop at once (the first has taken its third step, the
    third has not), checkpointed and marked interrupted, instead of training on to the end."""
    from lambexp.errors import ResumableError
    from lambexp.runner import arm as arm_module
    from lambexp.runner.stacked import train_stack
    from lambexp.training.progress import NoProgress

    real = arm_module.build_optimizer

    def build_optimizer(name, params, **args):
        opt = real(name, params, **args)
        if arm_module.torch.initial_seed() == 2:  # member b (seed 2)
            steps, step = [0], opt.step

            def failing_step():
                steps[0] += 1
                if steps[0] == 3:
                    raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
                return step()

            opt.step = failing_step
        return opt

    monkeypatch.setattr(arm_module, "build_optimizer", build_optimizer)
    group = group_of(tmp_path, ["a", "b", "c"])
    lines = []
    with pytest.raises(ResumableError, match="b: out of memory .* in a stack .* lower --stack"):
        train_stack(group, Inputs(tiny_data()), lambda arm: NoProgress(), lambda: False, say=lines.append)
    b = summary_json(tmp_path / "b")
    assert b["status"] == "failed" and "out of memory" in b["error"]
    for name, steps in (("a", 3), ("c", 2)):  # of 6: 2 epochs of 3 batches
        assert summary_json(tmp_path / name)["status"] == "interrupted"
        assert torch.load(tmp_path / name / CHECKPOINT_FILE, weights_only=False)["loop"]["step"] == steps
    assert lines == ["toy/seed1/a: interrupted, checkpointed", "toy/seed1/c: interrupted, checkpointed"]


@pytest.mark.parametrize("args, message", [
    (["--stack", "0"], "--stack: a number of trainings to stack (1 or more; 1 trains each alone),"
                          " or off (got '0')"),
    (["--stack", "two"], "--stack: a number of trainings to stack (1 or more; 1 trains each alone),"
                          " or off (got 'two')"),
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


def test_running_out_of_memory_in_a_stack_says_to_stack_fewer(tmp_path):
    """A stack's members share the memory of one forward: the line says --stack, not only batch_size."""
    from lambexp.config import Arm
    from lambexp.runner.arm import resource_problem

    arm = Arm(name="lamb", optimizer="lamb", batch_size=512)
    err = RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
    alone = resource_problem(err, arm, torch.device("cuda"), tmp_path)
    stacked = resource_problem(err, arm, torch.device("cuda"), tmp_path, stacked=True)
    assert alone == ("lamb: out of memory with batch_size 512 on cuda (CUDA out of memory. Tried to"
                     " allocate 20.00 GiB); lower batch_size")
    assert stacked == ("lamb: out of memory with batch_size 512 on cuda in a stack (CUDA out of memory."
                       " Tried to allocate 20.00 GiB); lower --stack (fewer trainings at once) or batch_size")
