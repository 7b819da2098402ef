"""Claims measured on what a real run wrote: a tiny `lambexp reproduce` with an `expect:` block of
every per-arm measure, each value compared with the same measure computed here from the TensorBoard
event files (read with TensorBoard's own reader), so a writer/reader drift cannot turn measures into
NaN and verdicts into NOT REPRODUCED unnoticed."""

import math
import shutil
import statistics

import pytest
from helpers import events, invoke, point_env_at, summary_json

from lambexp.report.build import load_runs
from lambexp.report.claims import judge

CONFIG = """\
name: e2e
epochs: 2
batch_size: 64
log_interval: 1
device: cpu
arms:
  - {name: adam, optimizer: adam, lr: 0.01}
  - {name: lamb, optimizer: lamb, lr: 0.01}
expect:
  - {claim: final, arm: lamb, measure: final_accuracy, above: 0.2}
  - {claim: best, arm: lamb, measure: best_accuracy, above: 0.2}
  - {claim: loss, arm: lamb, measure: final_loss, below: 2.5}
  - {claim: early, arm: lamb, measure: min_train_loss, within_epochs: 1, below: 2.5}
  - {claim: median, arm: lamb, measure: r_median, above: 0.0}
  - {claim: max, arm: lamb, measure: r_max, between: [0.0, 10.0]}
  - {claim: start, arm: lamb, measure: r_start_median, above: 0.0}
  - {claim: weights, arm: lamb, measure: r1_final_max, above: 0.0}
  - {claim: growth, arm: lamb, measure: r1_growth_max, above: 0.0}
  - {claim: layer, arm: lamb, measure: r_max, layer: fc1.weight, above: 0.0}
  - {claim: pair, arm: [lamb, adam], measure: final_accuracy, above: -1.0}
  - {claim: calm, arm: lamb, measure: diverged, equals: false}
"""
SAMPLES_PER_EPOCH = 256  # the tiny training set


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def from_events(arm_dir, layers: list[str]) -> dict[str, float]:
    """Every measure of CONFIG's claims on one arm, from its event files alone."""
    acc = events(arm_dir)
    accuracy = [v for _, v in scalars(acc, "test/accuracy")]
    loss = scalars(acc, "train/loss")
    r = {n: [v for _, v in scalars(acc, f"trust_layer/{n}/r")] for n in layers}
    r1 = {n: [v for _, v in scalars(acc, f"trust_layer/{n}/r1")] for n in layers}
    every_r = [v for values in r.values() for v in values]
    return {
        "final": accuracy[-1], "best": max(accuracy), "loss": loss[-1][1],
        "early": min(v for step, v in loss if step < SAMPLES_PER_EPOCH),
        "median": statistics.median(every_r), "max": max(every_r),
        "start": statistics.median(values[0] for values in r.values()),
        "weights": max(values[-1] for values in r1.values()),
        "growth": max(values[-1] / values[0] for values in r1.values()),
        "layer": max(r["fc1.weight"]),
    }


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_mnist):
    """One 2-seed reproduce of CONFIG on the tiny MNIST, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("claims")
    (root / "e2e.yaml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as env:
        point_env_at(env, tiny_mnist)
        result = invoke("reproduce", root / "e2e.yaml", "--out", root / "out", "--seeds", "2", "--quiet")
    assert result.exit_code == 0, result.output
    return root / "out"


def test_every_measure_equals_the_one_computed_from_the_event_files(reproduced):
    [runs] = load_runs([reproduced])
    assert sorted(runs.seeds) == [1, 2]
    for seed, arms in runs.seeds.items():
        folder = reproduced / "e2e" / f"seed{seed}"
        layers = arms["lamb"].names
        assert "fc1.weight" in layers and len(layers) == 8
        expected = from_events(folder / "lamb", layers)
        adam_final = scalars(events(folder / "adam"), "test/accuracy")[-1][1]
        expected["pair"] = expected["final"] - adam_final
        expected["calm"] = float(summary_json(folder / "lamb")["diverged"])
        for e in runs.experiment.expect:
            value = judge(e, {seed: arms}).values[0]
            assert math.isfinite(value), e.claim
            assert value == pytest.approx(expected[e.claim], rel=1e-6, abs=1e-7), e.claim


def test_the_report_shows_every_claim_reproduced_on_both_seeds(reproduced):
    report = (reproduced / "REPORT.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "REPRODUCED" in line]
    assert len(rows) == 12 and all("REPRODUCED (2 of 2)" in row and "NOT" not in row for row in rows), rows


def test_claims_on_an_arm_with_no_finished_seed_say_no_data(reproduced, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(reproduced, copy, symlinks=True)
    for seed in (1, 2):
        (copy / "e2e" / f"seed{seed}" / "lamb" / "summary.json").unlink()  # as if never finished
    result = invoke("report", copy, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report" / "REPORT.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "NO DATA" in line]
    assert len(rows) == 12, report
