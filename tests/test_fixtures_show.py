"""Fixtures that can show a mistake: runs whose numbers a planted mistake would change, each checked
against values worked out here from the config and the tiny set, not read from lambexp.

An audit planted one mistake at a time and found gaps the rest of the suite passed: no training with
warm-up on, no ``--jobs`` run of several seeds, no evaluation history whose best is not its last,
and no check of the report's arms table beyond r. Each test here asserts first that its fixture
really has the property that exposes the mistake (warm-up steps logged, seeds that differ, a best
before the last, seeds that differ in accuracy and in divergence), then the numbers.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_TRAIN, events, invoke, run_dirs, summary_json, tiny_config
from reference_lenet import initial_lenet, lenet, normalised, scores


def logged(arm_dir: Path, tag: str) -> dict[int, float]:
    """x → value of a scalar in metrics.jsonl, read as plain JSON lines."""
    records = [json.loads(line) for line in (arm_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["values"][tag] for r in records if r["kind"] == "scalars" and tag in r["values"]}


def board(arm_dir: Path, tag: str) -> dict[int, float]:
    """x → value of a scalar in the TensorBoard events, read with TensorBoard's own reader."""
    return {e.step: e.value for e in events(arm_dir).Scalars(tag)}


# --- warm-up, end to end ---------------------------------------------------------------------------

WARM_LR, WARM_BATCH, WARM_EPOCHS, WARMUP_EPOCHS = 0.004, 32, 2, 1.5


def test_the_logged_lr_climbs_through_warm_up_then_holds(tiny_mnist_env, tmp_path):
    """Worked by hand: 256 images in batches of 32 are 8 steps an epoch, so 1.5 warm-up epochs are 12
    steps; step s (1-based) runs at 0.004 × min(1, s / 12) and is logged (log_interval 1) at x = the
    samples seen before it, 32 (s − 1). Two epochs: 16 steps, the last 4 at the full 0.004."""
    config = tmp_path / "warm.yaml"
    config.write_text(tiny_config("warm", arms=("lamb",), expect="", epochs=WARM_EPOCHS,
                                  batch_size=WARM_BATCH, log_interval=1, lr=WARM_LR,
                                  warmup_epochs=WARMUP_EPOCHS, seed=3))
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    [run_dir] = run_dirs(tmp_path / "runs")
    steps_per_epoch = TINY_TRAIN // WARM_BATCH  # 8: 256 divides evenly
    warmup_steps = int(WARMUP_EPOCHS * steps_per_epoch)  # 12
    steps = WARM_EPOCHS * steps_per_epoch  # 16
    expected = {WARM_BATCH * (s - 1): WARM_LR * min(1.0, s / warmup_steps) for s in range(1, steps + 1)}
    # the three that show a schedule off by a step: the first, the end of warm-up, the step after
    assert expected[0] == pytest.approx(0.004 / 12)
    assert expected[32 * 10] == pytest.approx(0.004 * 11 / 12)
    assert expected[32 * 11] == expected[32 * 12] == 0.004
    for read in (logged, board):
        lrs = read(run_dir / "lamb", "lr")
        assert sorted(lrs) == sorted(expected), read.__name__
        for x, lr in expected.items():
            assert lrs[x] == pytest.approx(lr, rel=1e-6), f"{read.__name__}: lr at x={x} (step {x // 32 + 1})"


# --- --jobs with several seeds ---------------------------------------------------------------------

def first_batch_loss(tiny, seed: int, batch_size: int) -> float:
    """Seed ``seed``'s initial LeNet on seed ``seed``'s first batch (the first ``batch_size`` of
    ``torch.randperm`` of a CPU generator seeded with it: the data order of docs/cli.md), by hand."""
    order = torch.randperm(len(tiny.train_labels), generator=torch.Generator().manual_seed(seed))
    batch = order[:batch_size].numpy()
    with torch.no_grad():
        out = lenet(initial_lenet(seed), normalised(tiny.train_images[batch]))
    return F.nll_loss(out, torch.from_numpy(tiny.train_labels[batch].astype(np.int64))).item()


def test_two_jobs_train_each_seed_with_its_own_seed(tiny_mnist_env, tmp_path):
    """Three seeds of one arm in two worker processes: seed folder k holds seed k's training, its
    first logged loss that of seed k's model on seed k's first batch, worked out here."""
    (tmp_path / "seeds.yaml").write_text(tiny_config("seeds", arms=("lamb",), expect=""))
    out = tmp_path / "out"
    result = invoke("reproduce", tmp_path / "seeds.yaml", "--out", out, "--seeds", 3, "--jobs", 2)
    assert result.exit_code == 0, result.output
    assert "3 trainings, 2 at once" in result.output
    first_losses = {}
    for seed in (1, 2, 3):
        arm_dir = out / "seeds" / f"seed{seed}" / "lamb"
        assert summary_json(arm_dir)["seed"] == seed
        first_losses[seed] = logged(arm_dir, "train/loss")[0]
        assert board(arm_dir, "train/loss")[0] == pytest.approx(first_losses[seed], rel=1e-6)
    assert len(set(first_losses.values())) == 3, first_losses  # the fixture: seeds that differ
    for seed, loss in first_losses.items():
        assert loss == pytest.approx(first_batch_loss(tiny_mnist_env, seed, 64), rel=1e-5), f"seed {seed}"


# --- a best accuracy that is not the last ----------------------------------------------------------

# LAMB at lr 1.0 on the tiny set learns in epoch 2 (about 84% correct) and falls apart in epoch 3
# (about 9%), without meeting the divergence rule: a best that is neither the first nor the last.
PEAKED = dict(arms=("lamb",), expect="", lr=1.0, seed=2)
PEAKED_EPOCHS = 3


def test_best_accuracy_is_the_best_epoch_not_the_last(tiny_mnist_env, tmp_path):
    """The test accuracy after each epoch, scored here from the weights saved by a run stopped there
    (a run of 1, 2 and 3 epochs trains the same first epochs): the summary's best is their maximum,
    which is not the last, and its final is the last."""
    config = tmp_path / "peaked.yaml"
    config.write_text(tiny_config("peaked", epochs=PEAKED_EPOCHS, **PEAKED))
    accuracies = []
    for epochs in range(1, PEAKED_EPOCHS + 1):
        runs = tmp_path / f"runs{epochs}"
        result = invoke("run", config, f"epochs={epochs}", "--runs-dir", runs, "--quiet")
        assert result.exit_code == 0, result.output
        [run_dir] = run_dirs(runs)
        weights = torch.load(run_dir / "lamb" / "model.pt", weights_only=True)
        accuracies.append(scores(weights, tiny_mnist_env.test_images, tiny_mnist_env.test_labels)[1])
    assert max(accuracies) - accuracies[-1] > 0.25, accuracies  # the fixture: it peaks before the end
    summary = summary_json(run_dir / "lamb")  # the 3-epoch run
    assert not summary["diverged"] and summary["epochs_done"] == PEAKED_EPOCHS
    assert [h["test/accuracy"] for h in summary["history"]] == pytest.approx(accuracies, abs=1e-9)
    assert summary["best_test_accuracy"] == pytest.approx(max(accuracies), abs=1e-9)
    assert summary["final_test_accuracy"] == pytest.approx(accuracies[-1], abs=1e-9)


# --- every column of the report's arms table -------------------------------------------------------

# Two arms whose seeds differ in final accuracy, one of which diverges on some seeds and not others.
TABLE_CONFIG = """\
name: table
epochs: 2
batch_size: 64
log_interval: 2
device: cpu
arms:
  - {name: fast_lamb, optimizer: lamb, lr: 0.5, weight_decay: 0.001}
  - {name: hot_sgd, optimizer: sgd, lr: 0.2}
"""
TABLE_ARMS = {"fast_lamb": ("lamb (blog)", "0.5", "0.001"), "hot_sgd": ("sgd", "0.2", "0")}
SEEDS = (1, 2, 3)


def sample_std(values: list[float]) -> float:
    """The report's std, as documented: the sample standard deviation, divided by n − 1."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def trust_r(arm_dir: Path) -> list[float]:
    """Every finite r of every tensor at every trust log in metrics.jsonl, as plain JSON."""
    records = [json.loads(line) for line in (arm_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for rec in records if rec["kind"] == "trust" for r in rec["r"] if math.isfinite(r)]


def arms_table(report: str, heading: str) -> dict[str, list[str]]:
    """The arms table under ``## heading``: arm → its cells, the header checked."""
    section = report.split(f"\n## {heading}\n", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.split(" | ")] for line in lines]
    header = [c.strip("| ") for c in cells[0]]
    assert header == ["arm", "optimizer (rule)", "lr", "weight decay", "seeds", "final test accuracy",
                      "diverged", "max r", "median r", "wall s / arm", "samples/s"]
    rows = {row[0].strip("| "): [c.strip("| ") for c in row[1:]] for row in cells[1:]}
    return {arm: rows[arm] for arm in TABLE_ARMS}


def number(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_the_arms_table_is_the_seeds_summaries_worked_by_hand(tiny_mnist_env, tmp_path):
    """Each cell of each arm's row against summary.json and metrics.jsonl read as plain JSON: the
    mean ± sample std of the final accuracy, the seeds that diverged, the means of r's max and median
    over the seeds, of the wall time and of the speed. Numbers are compared to the printed digits."""
    (tmp_path / "table.yaml").write_text(TABLE_CONFIG)
    out = tmp_path / "out"
    result = invoke("reproduce", tmp_path / "table.yaml", "--out", out, "--seeds", len(SEEDS))
    assert result.exit_code == 0, result.output
    table = arms_table((out / "REPORT.md").read_text(), "table")
    diverged = [summary_json(out / "table" / f"seed{s}" / "hot_sgd")["diverged"] for s in SEEDS]
    assert 0 < sum(diverged) < len(SEEDS), diverged  # the fixture: a count neither none nor all
    for arm, (optimizer, lr, wd) in TABLE_ARMS.items():
        dirs = [out / "table" / f"seed{seed}" / arm for seed in SEEDS]
        summaries = [summary_json(d) for d in dirs]
        accs = [s["final_test_accuracy"] for s in summaries]
        assert len(set(accs)) == len(SEEDS), (arm, accs)  # the fixture: a std the ddof changes
        mean, std = sum(accs) / len(accs), sample_std(accs)
        bad = sum(s["diverged"] for s in summaries)
        r_max = sum(max(trust_r(d)) for d in dirs) / len(dirs)
        r_median = sum(statistics.median(trust_r(d)) for d in dirs) / len(dirs)
        wall = sum(s["wall_seconds"] for s in summaries) / len(summaries)
        speed = sum(s["samples_per_second"] for s in summaries) / len(summaries)
        row = table[arm]
        assert row[:4] == [optimizer, lr, wd, str(len(SEEDS))], row
        shown_mean, shown_std = (number(c) for c in re.fullmatch(r"(\S+) ± (\S+)", row[4]).groups())
        assert shown_mean == pytest.approx(100 * mean, abs=0.005 + 1e-9), (arm, row[4])
        assert shown_std == pytest.approx(100 * std, abs=0.005 + 1e-9), (arm, row[4])
        assert row[5] == f"{bad} of {len(SEEDS)}"
        assert number(row[6]) == pytest.approx(r_max, rel=5e-4), (arm, row[6])
        assert number(row[7]) == pytest.approx(r_median, rel=5e-4), (arm, row[7])
        assert number(row[8]) == pytest.approx(wall, abs=0.5 + 1e-9)
        assert number(row[9]) == pytest.approx(speed, abs=0.5 + 1e-9)
