"""The report on hand-written run folders (known values → known verdicts); `reproduce` rerun into
its --out is in test_reproduce.py."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import claim_row, tiny_config
from typer.testing import CliRunner

from lambexp.base.statuses import Status
from lambexp.cli import app
from lambexp.folders.layout import Summary
from lambexp.report import build
from lambexp.report.build import build_report
from lambexp.report.claims import lr_range, measure
from lambexp.report.series import ArmSeries, load_arm

CONFIG = tiny_config(name="toy", expect="""\
expect:
  - claim: LAMB beats Adam
    arm: lamb
    measure: final_accuracy
    above: adam
  - claim: Adam does not diverge
    arm: adam
    measure: diverged
    equals: false
  - claim: LAMB diverges
    arm: lamb
    measure: diverged
    equals: true
  - claim: LAMB's r peaks between 3 and 6
    arm: lamb
    measure: r_max
    between: [3, 6]
  - claim: conv weight grows over 2x
    arm: lamb
    measure: r1_growth_max
    layer: w1
    above: 2
""")
NAMES = ["w1", "b1"]


def write_arm(folder, *, acc, losses, r, r1, diverged=False, samples_per_epoch=None):
    """A finished arm as lambexp writes it: metrics.jsonl lines and summary.json, values given
    (``diverged``: the trainer's decision, which the report reads from summary.json)."""
    folder.mkdir(parents=True)
    lines = [{"kind": "scalars", "step": 100 * (i + 1), "values": {"train/loss": loss}}
             for i, loss in enumerate(losses)]
    lines += [{"kind": "trust", "step": 100 * (i + 1), "name": NAMES, "r": ri, "r1": r1i,
               "r2": [1.0, 1.0]} for i, (ri, r1i) in enumerate(zip(r, r1))]
    lines += [{"kind": "scalars", "step": 400, "values": {"test/accuracy": a, "test/loss": 0.1}}
              for a in acc]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = {"status": "finished", "final_test_accuracy": acc[-1], "diverged": diverged,
               "wall_seconds": 10.0, "samples_per_second": 1000.0, "device": "cpu",
               "samples_per_epoch": samples_per_epoch}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def two_seed_folder(tmp_path):
    exp = tmp_path / "repro" / "toy"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(CONFIG)
    # seed 1: LAMB better (0.98 > 0.97) and diverges by the loss-rise rule (2.3 → 0.5 → 2.5);
    # r max 4.5; w1's r1 grows 1 → 3 (3x)
    write_arm(exp / "seed1" / "adam", acc=[0.90, 0.97], losses=[2.3, 1.0, 0.5], r=[[0.1, 0.2]] * 3,
              r1=[[1.0, 1.0]] * 3)
    write_arm(exp / "seed1" / "lamb", acc=[0.95, 0.98], losses=[2.3, 0.5, 2.5],
              r=[[0.2, 0.3], [4.5, 1.0], [2.0, 1.0]], r1=[[1.0, 0.5], [2.0, 0.5], [3.0, 0.5]],
              diverged=True)
    # seed 2: LAMB worse (0.96 < 0.97), diverges by a non-finite loss; r max 7; w1 r1 1 → 1.5
    write_arm(exp / "seed2" / "adam", acc=[0.91, 0.97], losses=[2.3, 1.0, 0.4], r=[[0.1, 0.2]] * 3,
              r1=[[1.0, 1.0]] * 3)
    write_arm(exp / "seed2" / "lamb", acc=[0.95, 0.96], losses=[2.3, 0.5, float("nan")],
              r=[[0.2, 0.3], [7.0, 1.0], [float("nan"), 1.0]], r1=[[1.0, 9.0], [1.5, 9.0], [1.5, 9.0]],
              diverged=True)
    return tmp_path / "repro"


def test_measures_on_hand_written_values(two_seed_folder):
    lamb1 = load_arm(two_seed_folder / "toy" / "seed1" / "lamb", 1)
    assert measure(lamb1, "r_max") == 4.5
    assert measure(lamb1, "r_start_median") == pytest.approx(0.25)  # median of 0.2, 0.3
    assert measure(lamb1, "r_median") == pytest.approx(1.0)  # of 0.2 0.3 4.5 1 2 1
    assert measure(lamb1, "r1_growth_max", "w1") == 3.0
    assert measure(lamb1, "r1_growth_max") == 3.0  # b1 stays at 0.5: growth 1
    assert measure(lamb1, "r1_final_max") == 3.0
    assert measure(lamb1, "diverged") == 1.0  # as summary.json says (2.3 → 0.5 → 2.5)
    assert measure(lamb1, "final_accuracy") == 0.98
    adam1 = load_arm(two_seed_folder / "toy" / "seed1" / "adam", 1)
    assert measure(adam1, "diverged") == 0.0
    lamb2 = load_arm(two_seed_folder / "toy" / "seed2" / "lamb", 2)
    assert measure(lamb2, "r_max") == 7.0  # the NaN is skipped
    assert measure(lamb2, "final_loss") == 0.5  # last finite loss
    assert measure(lamb2, "r_max", "b1") == 1.0
    assert measure(lamb2, "r_start_median", "w1") == 0.2


def test_verdicts_reproduced_not_reproduced_and_mixed(two_seed_folder, tmp_path):
    report = build_report([two_seed_folder], tmp_path / "out").read_text()
    assert "MIXED (1 of 2 seeds)" in claim_row(report, "LAMB beats Adam")
    assert "s1: 98.00% · s2: 96.00%" in claim_row(report, "LAMB beats Adam")
    assert "> adam: 97.00% ± 0.00%" in claim_row(report, "LAMB beats Adam")
    assert claim_row(report, "Adam does not diverge").endswith("| REPRODUCED (2 of 2) |")
    assert claim_row(report, "LAMB diverges").endswith("| REPRODUCED (2 of 2) |")  # both rules
    assert "MIXED (1 of 2 seeds)" in claim_row(report, "LAMB's r peaks between 3 and 6")
    row = claim_row(report, "conv weight grows over 2x")
    assert "s1: 3 · s2: 1.5" in row and "MIXED (1 of 2 seeds)" in row
    assert "5.75 ± 1.768" in claim_row(report, "LAMB's r peaks between 3 and 6")  # mean of 4.5, 7


def test_the_report_opens_with_the_tally_of_verdicts(two_seed_folder, tmp_path):
    """Hand-counted: LAMB beats Adam, r peaks, conv weight grows are MIXED; the two diverged claims
    REPRODUCED; every arm has both seeds."""
    line = "2 of 5 claims REPRODUCED, 3 MIXED, 0 NOT REPRODUCED over 2 seeds"
    assert build.tally_line(build.load_runs([two_seed_folder])) == line
    out = tmp_path / "out"
    report = build_report([two_seed_folder], out).read_text().splitlines()
    first_table = min(i for i, row in enumerate(report) if row.startswith("| "))
    assert report[2] == line and first_table > 2  # right under the title
    assert f"<p>{line}</p>" in (out / "report.html").read_text()
    lamb = two_seed_folder / "toy" / "seed{}" / "lamb" / "summary.json"
    Path(str(lamb).format(1)).unlink()  # LAMB's seed 1 unfinished: seed 2 alone, where LAMB loses
    assert build.tally_line(build.load_runs([two_seed_folder])) == (
        "2 of 5 claims REPRODUCED, 0 MIXED, 3 NOT REPRODUCED over 2 seeds")
    Path(str(lamb).format(2)).unlink()  # no LAMB at all: its four claims have no data
    assert build.tally_line(build.load_runs([two_seed_folder])) == (
        "1 of 5 claims REPRODUCED, 0 MIXED, 0 NOT REPRODUCED, 4 NO DATA over 2 seeds")


def test_every_measure_is_computed_and_formatted_by_its_entry():
    from lambexp.base.measures import MEASURES, UNITS, fmt, match_arms
    from lambexp.report.claims import ON_ARM, ON_GROUP

    assert set(ON_ARM) | set(ON_GROUP) == set(MEASURES) and not set(ON_ARM) & set(ON_GROUP)
    assert {n for n, m in MEASURES.items() if m.over_pattern} == set(ON_GROUP)
    assert all(m.unit in UNITS for m in MEASURES.values())
    assert [fmt("final_accuracy", 0.98123), fmt("diverged", 1.0), fmt("diverged", 0.0), fmt("r_max", 4.5312),
            fmt("lr_range", 1.0), fmt("lr_range", 1.5), fmt("r_max", None), fmt("final_loss", math.nan)] == \
        ["98.12%", "yes", "no", "4.531", "1 decade", "1.5 decades", "n/a", "n/a"]
    fell = ArmSeries("a", 1, np.array([[1.0, 2.3], [2.0, 0.4], [3.0, 0.9]]), np.empty((0, 2)),
                     np.array([[1.0, 0.90], [2.0, 0.98], [3.0, 0.95]]), np.empty(0), [], np.empty((0, 0)),
                     np.empty((0, 0)), np.empty((0, 0)), Summary(Status.FINISHED))
    assert [measure(fell, name) for name in ("final_accuracy", "best_accuracy", "final_loss",
                                              "min_train_loss")] == [0.95, 0.98, 0.9, 0.4]
    names = ["adam_lr0.1", "lamb_lr0.1", "lamb_lr1"]
    assert match_arms("lamb_lr*", names) == ["lamb_lr0.1", "lamb_lr1"]
    assert match_arms("adam_lr0.1", names) == ["adam_lr0.1"] and match_arms("sgd", names) == []


def test_not_reproduced_and_figures(two_seed_folder, tmp_path):
    config = two_seed_folder / "toy" / "config.yaml"
    config.write_text(config.read_text().replace("above: adam", "below: 0.5"))
    out = tmp_path / "out"
    report = build_report([two_seed_folder], out).read_text()
    assert claim_row(report, "LAMB beats Adam").endswith("| NOT REPRODUCED (0 of 2) |")
    pngs = sorted((out / "figures").glob("*.png"))
    assert [p.name for p in pngs] == ["toy_curves.png", "toy_r1_layers.png", "toy_trust.png"]
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"figures/{png.name}" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "<td class='no'>NOT REPRODUCED (0 of 2)</td>" in html  # verdicts in colour
    assert "<td class='yes'>REPRODUCED (2 of 2)</td>" in html


def test_report_cli_and_no_runs(two_seed_folder, tmp_path):
    result = CliRunner().invoke(app, ["report", str(two_seed_folder)])
    assert result.exit_code == 0 and (two_seed_folder / "REPORT.md").is_file()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no such folder" in result.output


@pytest.mark.parametrize("expect, message", [
    ("  - claim: x\n    arm: nosuch\n    measure: r_max\n    above: 1\n",
     "expect[0].arm: no arm of that name"),
    ("  - claim: x\n    arm: lamb\n    measure: speed\n    above: 1\n", "expect[0].measure: must be one of"),
    ("  - claim: x\n    arm: lamb\n    measure: r_max\n", "expect[0]: give exactly one of"),
    ("  - claim: x\n    arm: lamb\n    measure: r_max\n    above: 1\n    when: now\n",
     "expect[0].when: unknown key"),
])
def test_expectation_schema_errors_exit_2(tmp_path, expect, message):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.split("expect:")[0] + "expect:\n" + expect)
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 2 and f"error: {config}: {message}" in result.output


BATCHES = """\
name: batches
device: cpu
arms:
  - {name: adam_b1, optimizer: adam, batch_size: 1}
  - {name: lamb_b1, optimizer: lamb, batch_size: 1}
  - {name: adam_b2, optimizer: adam, batch_size: 2}
  - {name: lamb_b2, optimizer: lamb, batch_size: 2}
  - {name: adam_b4, optimizer: adam, batch_size: 4}
  - {name: lamb_b4, optimizer: lamb, batch_size: 4}
expect:
  - claim: LAMB keeps within a point
    arm: [lamb_b4, lamb_b1]
    measure: final_accuracy
    above: -0.01
  - claim: Adam loses more than LAMB
    arm: [adam_b4, adam_b1]
    measure: final_accuracy
    below: [lamb_b4, lamb_b1]
"""


def test_pair_claims_and_the_batch_figure(tmp_path):
    exp = tmp_path / "repro" / "batches"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(BATCHES)
    # final accuracies: adam 0.98 → 0.90 (−8 points), lamb 0.98 → 0.975 (−0.5 points)
    for name, acc in [("adam_b1", 0.98), ("adam_b2", 0.95), ("adam_b4", 0.90),
                      ("lamb_b1", 0.98), ("lamb_b2", 0.978), ("lamb_b4", 0.975)]:
        write_arm(exp / name, acc=[acc], losses=[2.3, 0.5], r=[[0.5, 0.5]] * 2, r1=[[1.0, 1.0]] * 2)
    out = tmp_path / "out"
    report = build_report([tmp_path / "repro"], out).read_text()
    row = claim_row(report, "LAMB keeps within a point")
    assert "lamb_b4 − lamb_b1: final_accuracy" in row and "s1: -0.50%" in row
    assert row.endswith("| REPRODUCED (1 of 1) |")
    row = claim_row(report, "Adam loses more than LAMB")
    assert "s1: -8.00%" in row and "< lamb_b4 − lamb_b1: -0.50%" in row
    assert row.endswith("| REPRODUCED (1 of 1) |")
    png = out / "figures" / "batches_batch.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "figures/batches_batch.png" in report


def test_min_train_loss_within_epochs_and_measures_shown_beside(tmp_path):
    exp = tmp_path / "repro" / "toy"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(CONFIG.split("expect:")[0] + """expect:
  - claim: LAMB converges at once
    quote: it converges almost instantly
    arm: lamb
    measure: min_train_loss
    within_epochs: 1.5
    below: 1.5
  - claim: r generally below 1
    arm: lamb
    measure: r_median
    also: [r_max]
    below: 1.0
""")
    write_arm(exp / "seed1" / "adam", acc=[0.9], losses=[2.3, 1.0, 0.5], r=[[0.1, 0.2]] * 3,
              r1=[[1.0, 1.0]] * 3)
    # losses at x = 100, 200, 300; an epoch is 200 samples: 1.5 epochs keeps x < 300
    write_arm(exp / "seed1" / "lamb", acc=[0.9], losses=[2.3, 1.0, 0.5],
              r=[[0.2, 0.4], [0.6, 3.0], [0.5, 0.1]],
              r1=[[1.0, 1.0]] * 3, samples_per_epoch=200)
    lamb = load_arm(exp / "seed1" / "lamb", 1)
    assert measure(lamb, "min_train_loss") == 0.5
    assert measure(lamb, "min_train_loss", within_epochs=1.5) == 1.0
    assert measure(lamb, "min_train_loss", within_epochs=0.75) == 2.3  # x < 150
    report = build_report([tmp_path / "repro"], tmp_path / "out").read_text()
    row = claim_row(report, "LAMB converges at once — “it converges almost instantly” (the post)")
    assert "lamb: min_train_loss in the first 1.5 epochs" in row and "s1: 1 |" in row
    assert row.endswith("| REPRODUCED (1 of 1) |")
    row = claim_row(report, "r generally below 1")
    assert "s1: 0.45 (r_max: 3)" in row  # median of 0.2 0.4 0.6 3.0 0.5 0.1 = 0.45; max beside it
    assert row.endswith("| REPRODUCED (1 of 1) |")


def test_a_claim_whose_measure_fails_is_not_reproduced(tmp_path):
    """No logged loss in the window: the measure is NaN, and NaN holds no claim."""
    exp = tmp_path / "repro" / "toy"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(CONFIG.split("expect:")[0] + """expect:
  - claim: converges at once
    arm: lamb
    measure: min_train_loss
    within_epochs: 0.25
    below: 100
""")
    write_arm(exp / "seed1" / "adam", acc=[0.9], losses=[2.3], r=[[0.1, 0.2]], r1=[[1.0, 1.0]])
    write_arm(exp / "seed1" / "lamb", acc=[0.9], losses=[2.3], r=[[0.1, 0.2]], r1=[[1.0, 1.0]],
              samples_per_epoch=200)  # the only loss is at x = 100, after a quarter epoch (50)
    report = build_report([tmp_path / "repro"], tmp_path / "out").read_text()
    row = claim_row(report, "converges at once")
    assert "s1: n/a" in row and row.endswith("| NOT REPRODUCED (0 of 1) |")


def test_a_claim_judged_on_the_mean_over_seeds(two_seed_folder, tmp_path):
    config = two_seed_folder / "toy" / "config.yaml"
    config.write_text(config.read_text().replace(
        "    above: adam\n", "    above: adam\n    judge: mean\n", 1))
    report = build_report([two_seed_folder], tmp_path / "out").read_text()
    # LAMB 0.98, 0.96 (mean 0.97) against Adam 0.97, 0.97 (mean 0.97): not above on the mean
    row = claim_row(report, "LAMB beats Adam")
    assert row.endswith("| NOT REPRODUCED (on the mean of 2 seeds) |")
    config.write_text(config.read_text().replace("above: adam\n    judge", "below: 0.975\n    judge"))
    row = claim_row(build_report([two_seed_folder], tmp_path / "out").read_text(), "LAMB beats Adam")
    assert row.endswith("| REPRODUCED (on the mean of 2 seeds) |")  # 0.97 < 0.975


def test_summary_round_trip_and_damaged_ones(tmp_path):
    from lambexp.base.statuses import Status
    from lambexp.errors import UserError
    from lambexp.folders.layout import Summary, read_summary, write_summary

    summary = Summary(Status.INTERRUPTED, arm="lamb", final_test_accuracy=0.5, diverged=True,
                      diverged_step=7, history=[{"step": 4, "samples": 256, "test/accuracy": 0.5}])
    write_summary(tmp_path, summary)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert read_summary(tmp_path) == summary
    assert read_summary(tmp_path / "nothing") is None
    for text in ("[1, 2]", '{"status": "halfway"}', '{"arm": "x"}', "{"):
        (tmp_path / "summary.json").write_text(text)
        with pytest.raises(UserError, match="summary.json: damaged"):
            read_summary(tmp_path)


SWEEP = """\
name: sweep
device: cpu
arms:
  - {name: adam, optimizer: adam}
  - {name: lamb, optimizer: lamb}
sweep:
  lr: [0.001, 0.01, 0.1, 1.0]
expect:
  - {claim: LAMB's band is wider, arm: lamb_lr*, measure: lr_range, above: adam_lr*}
  - {claim: Adam's band at 90%, arm: adam_lr*, measure: lr_range, threshold: 0.9, between: [0.9, 1.1]}
"""


def test_the_range_of_learning_rates_that_reach_the_threshold(tmp_path):
    exp = tmp_path / "repro" / "sweep"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(SWEEP)
    accuracy = {"adam": [0.98, 0.95, 0.10, 0.10], "lamb": [0.975, 0.985, 0.98, 0.50]}  # lr 0.001 … 1
    for arm, accs in accuracy.items():
        for lr, acc in zip(("0.001", "0.01", "0.1", "1"), accs):
            write_arm(exp / "seed1" / f"{arm}_lr{lr}", acc=[acc], losses=[2.3, 1.0], r=[[0.5, 0.5]] * 2,
                      r1=[[1.0, 1.0]] * 2)
    out = tmp_path / "out"
    report = build_report([tmp_path / "repro"], out).read_text()
    # LAMB reaches 97% at 0.001, 0.01 and 0.1: 2 decades; Adam at 0.001 only: 0 decades
    row = claim_row(report, "LAMB's band is wider")
    assert "s1: 2 decades" in row and "> adam_lr*: 0 decades" in row
    assert row.endswith("| REPRODUCED (1 of 1) |")
    # at 90% Adam reaches 0.001 and 0.01: 1 decade
    assert claim_row(report, "Adam's band at 90%").endswith("| REPRODUCED (1 of 1) |")
    assert "| adam (blog), wd 0 | 0.001 | 0 decades (0.001 to 0.001) |" in report
    assert build.fmt("lr_range", 1.0) == "1 decade" and build.fmt("lr_range", 1.5) == "1.5 decades"
    assert "| lamb (blog), wd 0 | 0.001, 0.01, 0.1 | 2 decades (0.001 to 0.1) |" in report
    # a table per threshold the claims set: the default 97% and Adam's claim's 90%
    assert "learning rates reaching 97% (mean over seeds)" in report
    assert "| optimizer | learning rates reaching 90% (mean over seeds) |" in report
    assert "| adam (blog), wd 0 | 0.001, 0.01 | 1 decade (0.001 to 0.01) |" in report
    assert (out / "figures" / "sweep_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("accs, expected", [
    ([0.98, 0.96, 0.98, 0.98], 1.0),  # passes at 0.001, 0.1, 1; fails at 0.01: the run 0.1-1
    ([0.98, 0.98, 0.96, 0.98], 1.0),  # 0.001-0.01, then a hole: 1 decade, not 3
    ([0.96, 0.98, 0.96, 0.96], 0.0),  # one lr: 0 decades
    ([0.96, 0.96, 0.96, 0.96], math.nan),  # none
])
def test_lr_range_is_the_widest_run_without_a_hole(accs, expected):
    """Hand-worked: lrs 0.001, 0.01, 0.1, 1 (a decade apart), threshold 97%."""
    group = [ArmSeries(f"a{i}", 1, np.empty((0, 2)), np.empty((0, 2)), np.array([[1.0, acc]]),
                       np.empty(0), [], np.empty((0, 0)), np.empty((0, 0)), np.empty((0, 0)),
                       Summary(Status.FINISHED), lr=lr)
             for i, (lr, acc) in enumerate(zip([1.0, 0.001, 0.1, 0.01], [accs[j] for j in (3, 0, 2, 1)]))]
    value = lr_range(group, 0.97)
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


def test_lr_range_takes_a_pattern_and_names_take_none(tmp_path):
    from lambexp.config import parse_experiment
    from lambexp.errors import ConfigError

    with pytest.raises(ConfigError, match="measure lr_range takes a pattern"):
        parse_experiment(SWEEP.split("expect:")[0] + "expect: [{claim: c, arm: lamb_lr0.1, measure: lr_range,"
                         " above: 1}]\n")
    with pytest.raises(ConfigError, match=r"expect\[0\].arm: no arm of that name"):
        parse_experiment(SWEEP.split("expect:")[0] + "expect: [{claim: c, arm: sgd_lr*, measure: lr_range,"
                         " above: 1}]\n")
    with pytest.raises(ConfigError, match="measure lr_range takes a pattern"):  # `above` too
        parse_experiment(SWEEP.split("expect:")[0] + "expect: [{claim: c, arm: lamb_lr*, measure: lr_range,"
                         " above: adam_lr0.1}]\n")
    with pytest.raises(ConfigError, match="also: r_max cannot be shown beside lr_range"):
        parse_experiment(SWEEP.split("expect:")[0] + "expect: [{claim: c, arm: lamb_lr*, measure: lr_range,"
                         " also: [r_max], above: 1}]\n")


def test_a_sweep_groups_its_arms_by_optimizer_and_decay_labelled_by_lr():
    from lambexp.config import parse_experiment
    from lambexp.report.build import arm_groups

    exp = parse_experiment(SWEEP.replace("  lr: [0.001, 0.01, 0.1, 1.0]",
                                         "  lr: [1.0, 0.001, 0.1]\n  weight_decay: [0, 0.01]"))
    by_arm = {a.name: [a.name] for a in exp.arms if a.name != "lamb_lr0.1_wd0.01"}  # one unfinished
    groups = arm_groups(exp, by_arm)
    assert list(groups) == ["adam (blog), wd 0", "adam (blog), wd 0.01", "lamb (blog), wd 0",
                            "lamb (blog), wd 0.01"]
    assert groups["adam (blog), wd 0"] == {"lr 0.001": ["adam_lr0.001_wd0"], "lr 0.1": ["adam_lr0.1_wd0"],
                                           "lr 1": ["adam_lr1_wd0"]}
    assert list(groups["lamb (blog), wd 0.01"]) == ["lr 0.001", "lr 1"]


def test_the_arms_table_gives_each_rule_and_r_max_and_median_over_seeds(two_seed_folder, tmp_path):
    """Worked by hand from the fixture: LAMB's r max is 4.5 and 7 (NaN skipped), mean 5.75; its
    median 1 in both seeds; Adam's r is 0.1 and 0.2 at every log: max 0.2, median 0.15."""
    report = build_report([two_seed_folder], tmp_path / "out").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in report.splitlines() if line.startswith("| lamb |") or line.startswith("| adam |")}
    assert rows["lamb"][:1] == ["lamb (blog)"] and rows["lamb"][6:8] == ["5.75", "1"]
    assert rows["adam"][:1] == ["adam (blog)"] and rows["adam"][6:8] == ["0.2", "0.15"]


VARIANTS_CONFIG = """\
name: variants
optimizer: lamb
arms:
  - {name: blog, rule: blog}
  - {name: paper, rule: paper}
  - {name: timm, rule: timm}
sweep:
  lr: [0.01, 0.1]
  weight_decay: [0.0, 0.01]
"""


def test_the_variants_grid_table_and_figure(tmp_path):
    """Three rules × (lr, wd): the report's variant table, worked by hand. blog at lr 0.1, wd 0:
    seeds 0.10 and 0.12 (mean 11.00%, sample std 1.41%), both diverged; paper at lr 0.01, wd 0.01:
    0.98 and 0.99 (98.50% ± 0.71%), none diverged; timm at lr 0.1, wd 0.01 not finished: blank."""
    exp = tmp_path / "repro" / "variants"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(VARIANTS_CONFIG)
    accs = {"blog_lr0.1_wd0": (0.10, 0.12), "paper_lr0.01_wd0.01": (0.98, 0.99)}
    for seed in (1, 2):
        for rule in ("blog", "paper", "timm"):
            for lr in ("0.01", "0.1"):
                for wd in ("0", "0.01"):
                    arm = f"{rule}_lr{lr}_wd{wd}"
                    if arm == "timm_lr0.1_wd0.01":
                        continue
                    acc = accs.get(arm, (0.97, 0.97))[seed - 1]
                    write_arm(exp / f"seed{seed}" / arm, acc=[acc], losses=[2.3, 1.0],
                              r=[[0.5, 2.0]] * 2, r1=[[1.0, 1.0]] * 2, diverged=arm == "blog_lr0.1_wd0")
    out = tmp_path / "out"
    report = build_report([tmp_path / "repro"], out).read_text()
    assert "| variant | lr 0.01, wd 0 | lr 0.01, wd 0.01 | lr 0.1, wd 0 | lr 0.1, wd 0.01 |" in report
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in report.splitlines() if line.startswith(("| blog |", "| paper |", "| timm |"))}
    assert rows["blog"][2] == "11.00% ± 1.41% · 2 of 2 diverged"
    assert rows["paper"][1] == "98.50% ± 0.71%"
    assert rows["blog"][0] == "97.00% ± 0.00%" and rows["timm"][3] == ""
    assert (out / "figures" / "variants_variants.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_variants_grid_is_only_for_a_comparison_of_rules(two_seed_folder, tmp_path):
    """One rule (the toy experiment): no variant table, no variant figure."""
    out = tmp_path / "out"
    report = build_report([two_seed_folder], out).read_text()
    assert "| variant |" not in report and not list(out.glob("figures/*_variants.png"))


def test_a_variant_that_diverged_before_any_test_reads_not_tested(tmp_path):
    """Both seeds of paper at lr 0.1, wd 0.01 diverged within the first epoch: no accuracy at all
    (summary null), so the cell says so instead of a number."""
    exp = tmp_path / "repro" / "variants"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(VARIANTS_CONFIG)
    for seed in (1, 2):
        for rule in ("blog", "paper", "timm"):
            folder = exp / f"seed{seed}" / f"{rule}_lr0.1_wd0.01"
            write_arm(folder, acc=[0.97], losses=[2.3, 1.0], r=[[0.5, 2.0]] * 2, r1=[[1.0, 1.0]] * 2,
                      diverged=rule == "paper")
            if rule == "paper":
                summary = json.loads((folder / "summary.json").read_text())
                (folder / "summary.json").write_text(json.dumps({**summary, "final_test_accuracy": None}))
    report = build_report([tmp_path / "repro"], tmp_path / "out").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| paper |"))
    assert row.endswith("| not tested · 2 of 2 diverged |")


def test_a_variant_that_stopped_at_its_divergence_says_its_accuracy_is_at_the_stop(tmp_path):
    """Paper at lr 0.1, wd 0.01: seed 1 diverged and stopped after 1 of its 3 epochs (its "final"
    accuracy is the stop's), seed 2 diverged and went on to the end (on_divergence: continue)."""
    exp = tmp_path / "repro" / "variants"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(VARIANTS_CONFIG)
    for seed, done in ((1, 1), (2, 3)):
        for rule in ("blog", "paper", "timm"):
            folder = exp / f"seed{seed}" / f"{rule}_lr0.1_wd0.01"
            write_arm(folder, acc=[0.90 + seed / 100], losses=[2.3, 1.0], r=[[0.5, 2.0]] * 2,
                      r1=[[1.0, 1.0]] * 2, diverged=rule == "paper")
            summary = json.loads((folder / "summary.json").read_text())
            settings = {"rule": rule, "lr": 0.1, "weight_decay": 0.01, "epochs": 3}
            summary |= {"epochs_done": done, "settings": settings}
            (folder / "summary.json").write_text(json.dumps(summary))
    report = build_report([tmp_path / "repro"], tmp_path / "out").read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines()
            if line.startswith(("| paper |", "| blog |"))}
    assert rows["paper"].endswith("| 91.50% ± 0.71% · 2 of 2 diverged (1 stopped: accuracy at the stop) |")
    assert rows["blog"].endswith("| 91.50% ± 0.71% |")  # stopped early without diverging: not a stop


def test_a_batch_scaling_experiment_is_drawn_a_row_per_model_and_batch_a_line_per_optimizer():
    """Its optimizers' lrs and batches all differ, so "lr 0.002" would name neither: each row is one
    model at one batch size, and each line an optimizer."""
    from lambexp.config import parse_experiment
    from lambexp.report.build import arm_groups

    exp = parse_experiment("name: s\narms:\n" + "".join(
        f"  - {{name: {o}_{m}_b{b}, optimizer: {o}, batch_size: {b}, lr: {lr}, model: {m}}}\n"
        for o, lr in (("adam", 0.001), ("lamb", 0.004)) for m in ("lenet", "vit") for b in (256, 1024, 4096)))
    by_arm = {a.name: [a.name] for a in exp.arms if a.name != "lamb_vit_b1024"}  # one unfinished
    groups = arm_groups(exp, by_arm)
    assert list(groups) == ["lenet, batch 256", "lenet, batch 1024", "lenet, batch 4096", "vit, batch 256",
                            "vit, batch 1024", "vit, batch 4096"]
    assert groups["lenet, batch 1024"] == {"adam (blog)": ["adam_lenet_b1024"],
                                           "lamb (blog)": ["lamb_lenet_b1024"]}
    assert groups["vit, batch 1024"] == {"adam (blog)": ["adam_vit_b1024"]}
