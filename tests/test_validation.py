"""`validation: N` and the steps to a target (issue 32): the held-out split is disjoint from training,
covers the training set, and is the same for every arm and seed; a run evaluates on it beside the test
set (summary.json, metrics.jsonl, TensorBoard), tied to an independent LeNet on the images as written;
steps_to_target and samples_to_target are checked on hand-worked evaluation logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, events, invoke, run_dirs, summary_json, write
from reference_lenet import scores

from lambexp.base.measures import fmt
from lambexp.base.statuses import Status
from lambexp.config import parse_experiment
from lambexp.data import MnistTensors, held_out
from lambexp.folders.layout import Summary
from lambexp.report.claims import judge, measure
from lambexp.report.series import ArmSeries


def spec_split(n_train: int, n: int) -> np.ndarray:
    """docs/config.md's definition: the first n of torch.randperm(n_train) from a generator seeded
    with 2019 are held out."""
    return np.sort(torch.randperm(n_train, generator=torch.Generator().manual_seed(2019))[:n].numpy())


def ids_data(n: int = 100) -> MnistTensors:
    """Image i is filled with i, label i % 10: where each image went shows in its values."""
    ids = torch.arange(n, dtype=torch.float32)
    x = ids.reshape(n, 1, 1, 1).expand(n, 1, 28, 28).clone()
    return MnistTensors(x, torch.arange(n) % 10, x[:5], torch.arange(5))


@pytest.mark.parametrize("n", [1, 10, 99])
def test_the_split_is_disjoint_covers_training_and_keeps_labels(n):
    data = held_out(ids_data(), n)
    train_ids = data.train_x[:, 0, 0, 0].long().tolist()
    val_ids = data.val_x[:, 0, 0, 0].long().tolist()
    assert len(val_ids) == n and len(train_ids) == 100 - n
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(100))
    assert data.val_y.tolist() == [i % 10 for i in val_ids]
    assert data.train_y.tolist() == [i % 10 for i in train_ids]
    assert val_ids == spec_split(100, n).tolist()
    assert torch.equal(data.test_x, ids_data().test_x)  # the test set is untouched


def test_the_split_does_not_follow_the_global_seed_and_grows_as_a_superset():
    torch.manual_seed(1)
    a = held_out(ids_data(), 20).val_x
    torch.manual_seed(2)
    torch.rand(7)  # the arm's own draws before it (init, shuffling) change nothing
    b = held_out(ids_data(), 20).val_x
    assert torch.equal(a, b)
    small, large = (set(held_out(ids_data(), n).val_x[:, 0, 0, 0].tolist()) for n in (10, 30))
    assert small < large
    assert held_out(ids_data(), 0).val_x is None


def test_a_run_evaluates_on_the_held_out_images_the_same_for_two_seeds(tiny_mnist_env, tmp_path):
    """Two arms of different seeds hold out the same 64 of the 256 training images: each arm's
    validation accuracy and loss equal an independent LeNet's on exactly those images (as written),
    from its model.pt; it trained on the other 192 (3 batches of 64 an epoch)."""
    config = write(tmp_path / "v.yaml", "name: v\nepochs: 2\nbatch_size: 64\nlog_interval: 1\n"
                   "device: cpu\nvalidation: 64\nlr: 0.003\narms:\n  - {name: a, optimizer: adam, seed: 1}\n"
                   "  - {name: b, optimizer: lamb, seed: 7}\n")
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    [run_dir] = run_dirs(tmp_path / "runs")
    assert "validation: 64" in (run_dir / "config.yaml").read_text()
    held = spec_split(TINY_TRAIN, 64)
    images, labels = tiny_mnist_env.train_images[held], tiny_mnist_env.train_labels[held]
    for arm in ("a", "b"):
        s = summary_json(run_dir / arm)
        assert s["samples_per_epoch"] == TINY_TRAIN - 64 and s["steps"] == 2 * 3
        weights = torch.load(run_dir / arm / "model.pt", weights_only=True)
        loss, accuracy = scores(weights, images, labels)
        assert s["final_val_accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert s["history"][-1]["val/loss"] == pytest.approx(loss, rel=1e-4)
        assert s["best_val_accuracy"] == max(h["val/accuracy"] for h in s["history"])
        board = events(run_dir / arm)
        assert [e.step for e in board.Scalars("val/accuracy")] == [192, 384]  # after each epoch
        assert board.Scalars("val/accuracy")[-1].value == pytest.approx(accuracy, abs=1e-6)


def series(history: list[dict]) -> ArmSeries:
    empty = np.empty((0, 2))
    return ArmSeries("a", 1, empty, empty, empty, np.empty(0), [], np.empty((0, 0)), np.empty((0, 0)),
                     np.empty((0, 0)), Summary(Status.FINISHED, arm="a", history=history))


# Evaluations every 4 steps of 64 samples: validation 0.60, 0.97, 0.985, 0.99 (test set lower).
LOG = [{"step": 4 * k, "samples": 256 * k, "test/accuracy": t, "val/accuracy": v}
       for k, (t, v) in enumerate([(0.5, 0.60), (0.95, 0.97), (0.97, 0.985), (0.98, 0.99)], start=1)]


@pytest.mark.parametrize(("target", "steps", "samples"), [
    (0.5, 4, 256),  # the first evaluation already reaches it
    (0.97, 8, 512),  # reached exactly
    (0.98, 12, 768),
    (0.99, 16, 1024),
    (0.995, math.inf, math.inf),  # never: not reached, a result
])
def test_steps_to_target_on_a_hand_worked_log(target, steps, samples):
    s = series(LOG)
    assert measure(s, "steps_to_target", target=target) == steps
    assert measure(s, "samples_to_target", target=target) == samples


def test_without_a_validation_split_the_test_accuracy_is_read_and_not_reached_reads_so():
    s = series([{k: v for k, v in h.items() if k != "val/accuracy"} for h in LOG])
    assert measure(s, "steps_to_target", target=0.97) == 12  # the test accuracy reaches 0.97 at step 12
    assert fmt("steps_to_target", math.inf) == "not reached"
    assert fmt("steps_to_target", 1234.0) == "1,234"


def test_a_claim_on_steps_to_target_is_judged_and_a_misplaced_target_refused():
    exp = parse_experiment("name: t\narms: [{name: a}]\nexpect:\n"
                           "  - {claim: fast, arm: a, measure: steps_to_target, target: 0.98, below: 13}\n"
                           "  - {claim: slow, arm: a, measure: steps_to_target, target: 0.995, below: 100}\n")
    fast, slow = (judge(e, {1: {"a": series(LOG)}, 2: {"a": series(LOG[:2])}}) for e in exp.expect)
    assert fast.values == [12, math.inf] and fast.holds == [True, False]
    assert slow.holds == [False, False]  # never reached is not below anything
    for text, why in [("measure: steps_to_target, below: 10", "takes `target:`"),
                      ("measure: final_accuracy, target: 0.9, above: 0.5", "takes `target:`")]:
        with pytest.raises(Exception, match=why):
            parse_experiment(f"name: t\narms: [{{name: a}}]\nexpect:\n  - {{claim: c, arm: a, {text}}}\n")


def test_a_ratio_of_two_arms_steps_is_judged_as_the_ratio():
    """Shallue's form: steps to target at batch 256 over batch 1024, at least 2.5 (12 / 4 = 3 here;
    one seed where the larger batch never gets there, so the ratio is 0: not held)."""
    exp = parse_experiment("name: t\narms: [{name: b256}, {name: b1024}]\nexpect:\n"
                           "  - {claim: scales, arm: [b256, b1024], pair: ratio, measure: steps_to_target,"
                           " target: 0.98, above: 2.5}\n")
    [e] = exp.expect
    fast = series(LOG[2:])  # reaches 0.98 at its first evaluation, step 12 → as logged: 12
    quick = series([{**LOG[0], "val/accuracy": 0.99}])  # step 4
    result = judge(e, {1: {"b256": fast, "b1024": quick}, 2: {"b256": fast, "b1024": series(LOG[:1])}})
    assert result.values == [3.0, 0.0] and result.holds == [True, False]


@pytest.mark.parametrize(("validation", "steps", "with_test", "with_val"), [
    # 256 images, batches of 32: 8 steps an epoch; every 3 steps and at each epoch's end, the test set
    (0, [3, 6, 8, 9, 12, 15, 16], [3, 6, 8, 9, 12, 15, 16], []),
    # 64 held out: 6 steps an epoch; every 4 steps the validation split alone, both at an epoch's end
    # (step 12 is both: one evaluation, not two)
    (64, [4, 6, 8, 12], [6, 12], [4, 6, 8, 12]),
])
def test_eval_interval_evaluates_between_epochs_what_the_target_reads(tiny_mnist_env, tmp_path, validation,
                                                                      steps, with_test, with_val):
    config = write(tmp_path / "e.yaml", "name: e\nepochs: 2\nbatch_size: 32\nlog_interval: 100\n"
                   f"device: cpu\neval_interval: {3 if not validation else 4}\nvalidation: {validation}\n"
                   "arms: [{name: a, optimizer: lamb}]\n")
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    [run_dir] = run_dirs(tmp_path / "runs")
    s = summary_json(run_dir / "a")
    assert [h["step"] for h in s["history"]] == steps
    assert [h["step"] for h in s["history"] if "test/accuracy" in h] == with_test
    assert [h["step"] for h in s["history"] if "val/accuracy" in h] == with_val
    last_test = next(h for h in reversed(s["history"]) if "test/accuracy" in h)
    assert s["final_test_accuracy"] == last_test["test/accuracy"]
    board = events(run_dir / "a")
    assert [e.step for e in board.Scalars("test/accuracy")] == [32 * k for k in with_test]
    if validation:
        assert [e.step for e in board.Scalars("val/accuracy")] == [32 * k for k in with_val]


def test_the_report_counts_seeds_that_never_reached_the_target(tmp_path):
    """Three seeds: 12 steps, never, never. The row says each seed, the mean of those that reached it,
    and how many did not; a ratio whose first arm never got there names that arm."""
    from lambexp.report.build import claim_rows
    from lambexp.report.collect import ExperimentRuns

    exp = parse_experiment("name: t\narms: [{name: b256}, {name: b1024}]\nexpect:\n"
                           "  - {claim: fast, arm: b256, measure: steps_to_target, target: 0.98, below: 20}\n"
                           "  - {claim: scales, arm: [b256, b1024], pair: ratio, measure: steps_to_target,"
                           " target: 0.98, above: 2.5}\n")
    never = series(LOG[:1])
    runs = ExperimentRuns(tmp_path, exp, {1: {"b256": series(LOG), "b1024": series(LOG[2:])},
                                          2: {"b256": never, "b1024": never},
                                          3: {"b256": never, "b1024": series(LOG[2:])}}, {})
    fast, scales = claim_rows(runs, "t")
    assert fast[3] == "s1: 12 · s2: not reached · s3: not reached"
    assert fast[4] == "12 ± 0 (2 of 3 seeds not reached)"
    assert scales[3] == "s1: 1× · s2: n/a · s3: b256 not reached"  # 12/12; inf/inf is no number


def test_an_also_measure_beside_a_ratio_claim_is_shown_as_a_ratio(tmp_path):
    """`also: [samples_to_target]` beside Shallue's ratio: 768 samples over 256 is 3×, not "3"
    samples; and a side that never got there is named, as for the claim's own measure."""
    from lambexp.report.build import claim_rows
    from lambexp.report.collect import ExperimentRuns

    exp = parse_experiment("name: t\narms: [{name: b256}, {name: b1024}]\nexpect:\n"
                           "  - {claim: scales, arm: [b256, b1024], pair: ratio, measure: steps_to_target,"
                           " target: 0.98, above: 2.5, also: [samples_to_target]}\n")
    quick = series([{**LOG[0], "val/accuracy": 0.99}])  # step 4, 256 samples
    runs = ExperimentRuns(tmp_path, exp, {1: {"b256": series(LOG), "b1024": quick},
                                          2: {"b256": series(LOG[:1]), "b1024": quick}}, {})
    [row] = claim_rows(runs, "t")
    assert row[3] == "s1: 3× · s2: b256 not reached (samples_to_target: 3×, b256 not reached)"
    once = "3× ± 0× (1 of 2 seeds not reached)"
    assert row[4] == f"{once} (samples_to_target: {once})"
