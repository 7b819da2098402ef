"""Every number a run reports, tied to an independent computation, not to another of the tool's outputs.

A test that compares the tool with itself (summary against events, resumed against straight) cannot
see a mistake made the same way everywhere: evaluating on the training images, drawing the same
order every epoch, sharing two trainings that differ in one setting. Here each reported number is
recomputed from the world: the test images as the tiny set wrote them, a LeNet forward written with
torch.nn.functional from the saved weights, the data order a reference sampler draws, the trust
ratio's norms worked out from the checkpointed weights and moments by the post's equations.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import events, summary_json, tiny_digits, write_idx_by_hand
from pydantic import ValidationError
from reference_lenet import initial_lenet, lenet, normalised, scores
from torch import nn
from torch.utils.data import BatchSampler, RandomSampler

from lambexp.config import Arm, load_experiment
from lambexp.errors import Interrupted, UserError
from lambexp.folders.layout import read_jsonl
from lambexp.report.build import build_report
from lambexp.runner.plan import make_plan
from lambexp.runner.reproduce import reproduce as run_reproduce
from lambexp.training.checkpoint import load_checkpoint, save_checkpoint
from lambexp.training.loop import LoopOptions, LoopState, fit

# --- independent pieces: the LeNet of reference_lenet.py, and the data order ------------------

def reference_orders(n: int, batch_size: int, seed: int, epochs: int) -> list[list[list[int]]]:
    """What lambexp promises (docs/cli.md, the data order): epoch e's order is the e-th
    ``torch.randperm(n)`` of a CPU generator seeded with the arm's seed, cut into batches, the last one
    partial. The first epoch is exactly what torch's ``RandomSampler(generator=...)`` draws (checked
    here too)."""
    g = torch.Generator().manual_seed(seed)
    orders = [[b.tolist() for b in torch.randperm(n, generator=g).split(batch_size)] for _ in range(epochs)]
    sampler = BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)),
                           batch_size, drop_last=False)
    assert [list(b) for b in sampler] == orders[0]
    return orders


# --- the sharing key: every setting that changes training makes a distinct training -------------

# An arm whose every setting can take another valid value (the paper rule allows bias_correction:
# false; lamb allows fused); LARS's own settings, which a LAMB arm may not set, on a LARS arm.
BASE = {"name": "base", "optimizer": "lamb", "rule": "paper", "epochs": 1, "batch_size": 64}
LARS_BASE = {"name": "base", "optimizer": "lars", "epochs": 1, "batch_size": 64}
LARS_KEYS = ("momentum", "trust_coefficient")
CANDIDATES = ("blog", "paper", "adam", "sgd", "mlp", "cpu", "cuda", "continue", "auto", True, False,
              None, 0.5, 3, [0.8, 0.9], ["bias"], "elsewhere")


def other_values(value):
    """Candidate values other than ``value`` for any setting, in the order they are tried."""
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int | float):
        yield from (value + 1, value * 2, value / 2, value + 0.05)
    yield from CANDIDATES


def write_config(path: Path, arms: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, **top, "arms": arms}))
    return path


def changed_arm(key: str, tmp_path: Path) -> dict:
    """The base arm of ``key`` with ``key`` set to the first other value that a whole config accepts."""
    written = LARS_BASE if key in LARS_KEYS else BASE
    base = Arm.model_validate(written)
    for value in other_values(getattr(base, key)):
        arm = {**written, "name": "changed", key: value}
        try:
            exp = load_experiment(write_config(tmp_path / "probe.yaml", [written, arm]))
        except (ValidationError, ValueError, UserError):
            continue
        if getattr(exp.arms[1], key) != getattr(exp.arms[0], key):
            return arm
    pytest.fail(f"no other valid value for {key!r} among the candidates: add one to CANDIDATES")


@pytest.mark.parametrize("key", sorted(set(Arm.model_fields) - {"name"}))
def test_each_setting_of_an_arm_makes_it_a_training_of_its_own(key, tmp_path):
    # Every field of a resolved arm, so a new config key is covered without editing this test.
    base = LARS_BASE if key in LARS_KEYS else BASE
    config = write_config(tmp_path / "one.yaml", [base, changed_arm(key, tmp_path)])
    plan = make_plan([load_experiment(config)], 1, tmp_path / "out")
    assert len(plan.trainings) == 2, f"arms differing in {key} were planned as one training"


def test_only_the_name_and_the_description_may_differ_between_shared_arms(tmp_path):
    a = write_config(tmp_path / "a.yaml", [BASE, {**BASE, "name": "twin"}], description="one")
    b = write_config(tmp_path / "b.yaml", [{**BASE, "name": "other"}], description="another")
    plan = make_plan([load_experiment(a), load_experiment(b)], 1, tmp_path / "out")
    assert len(plan.trainings) == 1 and len(plan.links) == 2


def test_seeds_are_part_of_the_key_and_the_offset_meets_an_arm_of_that_seed(tmp_path):
    # a (seed 1) and b (seed 2) over 2 seeds: a@1, a@2, b@2, b@3; a@2 and b@2 are one training.
    config = write_config(tmp_path / "s.yaml", [{**BASE, "name": "a", "seed": 1},
                                                 {**BASE, "name": "b", "seed": 2}])
    plan = make_plan([load_experiment(config)], 2, tmp_path / "out")
    assert sorted(t.arm.seed for t in plan.trainings) == [1, 2, 3]
    assert plan.arms == 4


# --- data order: what the trainer feeds, against the reference draw ----------------------------

class IndexRecorder(nn.Module):
    """A model whose input is each sample's index: it records the order it is trained on."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10))
        self.seen: list[list[int]] = []

    def forward(self, x):  # x: (B, 1), the indices
        if self.training:
            self.seen.append(x[:, 0].long().tolist())
        return F.log_softmax(self.logits.expand(len(x), 10), dim=1)


def recorded_fit(n: int, batch_size: int, seed: int, epochs: int, stop_at: int | None = None,
                 tmp_path: Path | None = None) -> list[list[int]]:
    """The batches ``fit`` trains on; with ``stop_at``, stopped before that step, checkpointed to
    disk and continued from the file in a fresh model, optimizer and state."""
    x, y = torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.zeros(n, dtype=torch.long)
    test = (x[:4], y[:4])
    model = IndexRecorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen, steps = [], [0]

    def stop() -> bool:
        steps[0] += 1
        return stop_at is not None and steps[0] == stop_at

    options = LoopOptions(batch_size=batch_size, log_interval=3, stop_requested=stop)
    state = LoopState()
    try:
        fit(model, opt, (x, y), test, epochs=epochs, seed=seed, options=options, sink=_NullSink(),
            state=state)
        return model.seen
    except Interrupted:
        seen = model.seen
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, opt, state)
    fresh = IndexRecorder()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    state = load_checkpoint(path, fresh, fresh_opt).state
    options.stop_requested = lambda: False
    fit(fresh, fresh_opt, (x, y), test, epochs=epochs, seed=seed, options=options, sink=_NullSink(),
        state=state)
    return seen + fresh.seen


class _NullSink:
    def scalars(self, step, values):
        pass

    def trust(self, step, stats):
        pass

    def hparams(self, hparams, metrics):
        pass

    def flush(self):
        pass


def test_the_trainer_draws_the_reference_order_anew_each_epoch():
    n, batch, seed, epochs = 50, 8, 7, 3
    expected = [b for epoch in reference_orders(n, batch, seed, epochs) for b in epoch]
    assert recorded_fit(n, batch, seed, epochs) == expected
    per_epoch = [sum(expected[i * 7:(i + 1) * 7], []) for i in range(epochs)]  # 7 batches an epoch
    assert len({tuple(order) for order in per_epoch}) == epochs  # a new order every epoch


def test_a_run_stopped_mid_epoch_and_continued_from_its_file_keeps_the_reference_order(tmp_path):
    n, batch, seed, epochs = 50, 8, 3, 3
    expected = [b for epoch in reference_orders(n, batch, seed, epochs) for b in epoch]
    assert recorded_fit(n, batch, seed, epochs, stop_at=11, tmp_path=tmp_path) == expected


# --- a real reproduce on the tiny set: every reported number against an independent one ---------

SEEDS = (1, 2)
BATCH, TRAIN, TEST = 64, 256, 128  # 4 batches an epoch; log_interval 4 logs batch 0: x = 0 and 256
CONFIG = f"""\
name: world
epochs: 2
batch_size: {BATCH}
log_interval: 4
device: cpu
weight_decay: 0.01
arms:
  - {{name: blog, optimizer: lamb, rule: blog, lr: 0.02}}
  - {{name: paper, optimizer: lamb, rule: paper, lr: 0.02}}
expect:
  - {{claim: final, arm: blog, measure: final_accuracy, above: 0.0}}
  - {{claim: best, arm: blog, measure: best_accuracy, above: 0.0}}
  - {{claim: loss, arm: paper, measure: final_loss, below: 100}}
"""


class World:
    """The tiny set as written, the reproduce folder, and each arm's checkpoint after epoch 1."""

    def __init__(self, root: Path):
        self.root = root
        self.out = root / "out"
        self.stash = root / "checkpoints"

    def arm_dir(self, seed: int, arm: str) -> Path:
        return self.out / "world" / f"seed{seed}" / arm

    def after_epoch_1(self, seed: int, arm: str) -> dict:
        return torch.load(self.stash / f"seed{seed}-{arm}.pt", weights_only=True)


def write_differing_tiny_mnist(root: Path) -> dict[str, np.ndarray]:
    """A tiny set whose second half of test labels is shifted by one (digit d's block labelled
    d+1), so the test accuracy of a model that learned the training set is far from its training
    accuracy."""
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x, train_y = tiny_digits(TRAIN, seed=0)
    test_x, test_y = tiny_digits(TEST, seed=1)
    test_y[TEST // 2:] = (test_y[TEST // 2:] + 1) % 10
    arrays = {"train-images-idx3-ubyte": train_x, "train-labels-idx1-ubyte": train_y,
              "t10k-images-idx3-ubyte": test_x, "t10k-labels-idx1-ubyte": test_y}
    lines = []
    for name, array in arrays.items():
        write_idx_by_hand(raw / name, array)
        lines.append(f"{hashlib.md5((raw / name).read_bytes()).hexdigest()}  {name}\n")
    (root / "tiny.md5").write_text("".join(lines))
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    w = World(root)
    w.data = write_differing_tiny_mnist(root)
    w.stash.mkdir()
    config = root / "world.yaml"
    config.write_text(CONFIG)

    def copy_checkpoints() -> bool:  # polled before every step: keeps each arm's epoch-1 checkpoint
        for ck in w.out.glob("world/seed*/*/checkpoint.pt"):
            copy = w.stash / f"{ck.parent.parent.name}-{ck.parent.name}.pt"
            if not copy.exists():
                shutil.copy(ck, copy)
        return False

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAMBEXP_MNIST_MD5SUMS", str(root / "tiny.md5"))
        run_reproduce([config], seeds=len(SEEDS), out=w.out, data_dir=root / "data", say=lambda s: None,
                      stop_requested=copy_checkpoints)
        build_report([w.out], w.out)
    w.report = (w.out / "REPORT.md").read_text()
    return w


ARMS = ("blog", "paper")
CASES = [(seed, arm) for seed in SEEDS for arm in ARMS]


def scalar_at(arm_dir: Path, tag: str, x: int) -> float:
    values = [e.value for e in events(arm_dir).Scalars(tag) if e.step == x]
    assert len(values) == 1, f"{tag} at {x}: {values}"
    return values[0]


def jsonl_at(arm_dir: Path, tag: str, x: int) -> float:
    """A scalar (``test/loss``) or a tensor's trust part (``trust_layer/<name>/<part>``) at ``x``."""
    values = []
    for record in read_jsonl(arm_dir / "metrics.jsonl"):
        if record.get("step") != x:
            continue
        if record["kind"] == "scalars" and tag in record["values"]:
            values.append(record["values"][tag])
        elif record["kind"] == "trust" and tag.startswith("trust_layer/"):
            _, name, part = tag.split("/")
            values.append(record[part][record["name"].index(name)])
    assert len(values) == 1, f"{tag} at {x} in metrics.jsonl: {values}"
    return values[0]


def per_seed_in_report(report: str, claim: str) -> dict[int, str]:
    row = next(line for line in report.splitlines() if line.startswith(f"| world | {claim} "))
    return {int(s): v for s, v in re.findall(r"s(\d+): ([^ ·|]+)", row)}


@pytest.mark.parametrize("seed,arm", CASES)
def test_test_accuracy_and_loss_are_the_saved_models_on_the_test_images(world, seed, arm):
    d, arm_dir = world.data, world.arm_dir(seed, arm)
    final_weights = torch.load(arm_dir / "model.pt", weights_only=True)
    checkpoint = world.after_epoch_1(seed, arm)
    summary = summary_json(arm_dir)
    for x, weights, entry in ((TRAIN, checkpoint["model"], summary["history"][0]),
                              (2 * TRAIN, final_weights, summary["history"][1])):
        loss, accuracy = scores(weights, d["test_x"], d["test_y"])
        for reported in (entry["test/loss"], scalar_at(arm_dir, "test/loss", x),
                         jsonl_at(arm_dir, "test/loss", x)):
            assert reported == pytest.approx(loss, rel=1e-5)
        for reported in (entry["test/accuracy"], scalar_at(arm_dir, "test/accuracy", x),
                         jsonl_at(arm_dir, "test/accuracy", x)):
            assert reported == pytest.approx(accuracy, abs=1e-6)
    assert summary["final_test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert summary["final_test_loss"] == pytest.approx(loss, rel=1e-5)
    best = max(scores(w, d["test_x"], d["test_y"])[1] for w in (checkpoint["model"], final_weights))
    assert summary["best_test_accuracy"] == pytest.approx(best, abs=1e-6)
    # The same model on the training images scores otherwise: the test set is the test set.
    train_loss, train_accuracy = scores(final_weights, d["train_x"], d["train_y"])
    assert abs(train_accuracy - accuracy) > 0.1 and abs(train_loss - loss) > 0.1
    if arm == "blog":  # the report prints the final and best accuracy of each seed
        assert per_seed_in_report(world.report, "final")[seed] == f"{accuracy:.2%}"
        assert per_seed_in_report(world.report, "best")[seed] == f"{best:.2%}"


def batch_of(world: World, seed: int, epoch: int, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    idx = reference_orders(TRAIN, BATCH, seed, epoch)[epoch - 1][index]
    return world.data["train_x"][idx], world.data["train_y"][idx]


@pytest.mark.parametrize("seed,arm", CASES)
def test_the_logged_training_loss_is_that_batch_on_that_model(world, seed, arm):
    arm_dir = world.arm_dir(seed, arm)
    # x = 0: the initial model of the arm's seed on the first batch of the first epoch.
    first = scores(initial_lenet(seed), *batch_of(world, seed, epoch=1))[0]
    assert scalar_at(arm_dir, "train/loss", 0) == pytest.approx(first, rel=1e-5)
    assert jsonl_at(arm_dir, "train/loss", 0) == pytest.approx(first, rel=1e-5)
    # x = 256: the checkpointed model after epoch 1 on the first batch of the second epoch.
    later = scores(world.after_epoch_1(seed, arm)["model"], *batch_of(world, seed, epoch=2))[0]
    assert scalar_at(arm_dir, "train/loss", TRAIN) == pytest.approx(later, rel=1e-5)
    assert jsonl_at(arm_dir, "train/loss", TRAIN) == pytest.approx(later, rel=1e-5)
    assert summary_json(arm_dir)["final_train_loss"] == pytest.approx(later, rel=1e-5)  # the last logged
    if arm == "paper":
        assert per_seed_in_report(world.report, "loss")[seed] == f"{later:.4g}"


def trust_by_hand(rule: str, weights: dict, state: dict, grads: dict, names: list[str],
                  lr_settings: dict) -> dict[str, tuple[float, float, float]]:
    """(r, r1, r2) per tensor for the step from the saved weights and moments with gradient ``g``,
    by the equations of the post (blog) and of the paper, in float64."""
    b1, b2, eps, wd, c = (lr_settings[k] for k in ("beta1", "beta2", "eps", "weight_decay", "clamp"))
    out = {}
    for i, name in enumerate(names):
        w, g = weights[name].double(), grads[name].double()
        m, v, t = state[i]["m"].double(), state[i]["v"].double(), state[i]["step"] + 1
        if rule == "blog":  # decay into the gradient; RMS norms; r clipped at c
            g = g + wd * w
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            a = m / (v.sqrt() + eps)
            r1, r2 = w.pow(2).mean().sqrt().item(), a.pow(2).mean().sqrt().item()
            r = min(r1 / r2, c)
        else:  # bias-corrected moments, decay added to the update; L2 norms; ‖w‖ clipped at c
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            u = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps) + wd * w
            r1, r2 = min(w.norm().item(), c), u.norm().item()
            r = r1 / r2
        out[name] = (r, r1, r2)
    return out


@pytest.mark.parametrize("seed,arm", CASES)
def test_r_r1_r2_are_the_norms_of_the_saved_weights_and_moments(world, seed, arm):
    arm_dir = world.arm_dir(seed, arm)
    checkpoint = world.after_epoch_1(seed, arm)
    weights = {k: v.float().contiguous().requires_grad_() for k, v in checkpoint["model"].items()}
    images, labels = batch_of(world, seed, epoch=2)
    loss = F.nll_loss(lenet(weights, normalised(images)), torch.from_numpy(labels.astype(np.int64)))
    grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))
    names = list(checkpoint["model"])  # the optimizer's state is in parameter order
    group = checkpoint["optimizer"]["param_groups"][0]
    settings = {"beta1": group["betas"][0], "beta2": group["betas"][1], "eps": group["eps"],
                "weight_decay": group["weight_decay"], "clamp": group["clamp"]}
    assert settings["weight_decay"] == 0.01 and settings["clamp"] == 10.0  # the config's
    expected = trust_by_hand(arm, {k: v.detach() for k, v in weights.items()},
                             checkpoint["optimizer"]["state"], grads, names, settings)
    histogram = {}
    for name, (r, r1, r2) in expected.items():
        for part, value in (("r", r), ("r1", r1), ("r2", r2)):
            assert scalar_at(arm_dir, f"trust_layer/{name}/{part}", TRAIN) == pytest.approx(value, rel=1e-4)
            assert jsonl_at(arm_dir, f"trust_layer/{name}/{part}", TRAIN) == pytest.approx(value, rel=1e-4)
            histogram.setdefault(part, []).append(value)
    acc = events(arm_dir)
    for part, values in histogram.items():  # the post's figure: the histogram across tensors
        (h,) = [e.histogram_value for e in acc.Histograms(f"trust/{part}") if e.step == TRAIN]
        assert h.num == len(values)
        assert (h.min, h.max, h.sum) == pytest.approx((min(values), max(values), sum(values)), rel=1e-4)


@pytest.mark.parametrize("arm", ARMS)
def test_each_seed_trains_its_own_seed(world, arm):
    dirs = [world.arm_dir(seed, arm) for seed in SEEDS]
    assert not any(d.is_symlink() for d in dirs) and dirs[0].resolve() != dirs[1].resolve()
    assert [summary_json(d)["seed"] for d in dirs] == list(SEEDS)
    histories = [summary_json(d)["history"] for d in dirs]
    assert histories[0] != histories[1]
    losses = [scalar_at(d, "train/loss", 0) for d in dirs]
    assert losses[0] != losses[1]
    # and seed k is torch's seed k: its first loss is seed k's initial model on seed k's first batch
    for seed, loss in zip(SEEDS, losses):
        assert loss == pytest.approx(scores(initial_lenet(seed), *batch_of(world, seed, epoch=1))[0],
                                     rel=1e-5)


# --- real MNIST, when it is on this machine ------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An IDX file read by hand: 00 00 08 <ndim>, big-endian uint32 dims, then the uint8 values."""
    data = path.read_bytes()
    assert data[:3] == b"\x00\x00\x08"
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


REAL_SIZES = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
              "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}  # 60k and 10k


def real_mnist() -> Path | None:
    """The folder holding the real MNIST files (by their sizes), where lambexp looks by default."""
    from lambexp.data import default_data_dir

    raw = default_data_dir() / "MNIST" / "raw"
    real = all((raw / n).is_file() and (raw / n).stat().st_size == size for n, size in REAL_SIZES.items())
    return raw if real else None


@pytest.mark.slow
@pytest.mark.skipif(real_mnist() is None, reason="real MNIST is not on this machine (lambexp data fetch)")
def test_on_real_mnist_the_reported_accuracy_is_the_models_on_the_10000_test_images(tmp_path, monkeypatch):
    from helpers import invoke

    raw = real_mnist()
    monkeypatch.delenv("LAMBEXP_MNIST_MD5SUMS", raising=False)  # the built-in, real checksums
    config = tmp_path / "real.yaml"
    config.write_text("name: real\nepochs: 1\nbatch_size: 512\ndevice: cpu\n"
                      "arms:\n  - {name: lamb, optimizer: lamb, lr: 0.01}\n")
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "--data-dir", raw.parent.parent,
                    "--quiet")
    assert result.exit_code == 0, result.output
    (arm_dir,) = tmp_path.glob("runs/real/*/lamb")
    weights = torch.load(arm_dir / "model.pt", weights_only=True)
    test_x, test_y = read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte")
    assert test_x.shape == (10000, 28, 28)
    loss, accuracy = scores(weights, test_x, test_y)
    summary = summary_json(arm_dir)
    assert summary["final_test_accuracy"] == pytest.approx(accuracy, abs=1.5e-4)  # one image at most
    assert summary["final_test_loss"] == pytest.approx(loss, rel=1e-4)
    assert scalar_at(arm_dir, "test/accuracy", 60000) == pytest.approx(accuracy, abs=1.5e-4)
    train_x, train_y = read_idx(raw / "train-images-idx3-ubyte"), read_idx(raw / "train-labels-idx1-ubyte")
    train_loss = scores(weights, train_x[:10000], train_y[:10000])[0]
    assert not math.isclose(train_loss, loss, rel_tol=1e-3)
