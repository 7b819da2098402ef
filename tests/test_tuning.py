"""`tune:` (issue 32): each arm's lr (and warm-up) grid trained once, the pick made on validation
accuracy and never on the test set, flagged at the grid's edge, and the chosen points trained over
the seeds by `lambexp reproduce`."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from helpers import invoke, summary_json, write

from lambexp.base.statuses import Status
from lambexp.config import parse_experiment
from lambexp.folders.layout import Summary, write_summary
from lambexp.runner.plan import seeded_arms
from lambexp.runner.tuning import Point, chosen, pick, picks, trial_name, trials

TUNED = """\
name: t
validation: 64
epochs: 1
batch_size: 64
log_interval: 2
device: cpu
tune:
  lr: [0.0001, 0.003, 0.1]
  warmup_epochs: [0, 0.5]
arms:
  - {name: adam, optimizer: adam}
  - {name: lamb, optimizer: lamb}
"""


def test_a_tune_needs_a_validation_split_and_two_rates():
    with pytest.raises(Exception, match="adam, lamb hold out no images; set validation"):
        parse_experiment(TUNED.replace("validation: 64\n", ""))
    with pytest.raises(Exception, match="lr: give at least 2 values"):
        parse_experiment(TUNED.replace("[0.0001, 0.003, 0.1]", "[0.003]"))
    with pytest.raises(Exception, match="give exactly one of lr"):
        parse_experiment(TUNED.replace("  lr: [0.0001, 0.003, 0.1]\n", ""))
    exp = parse_experiment(TUNED)
    names = [arm.name for arm in trials(exp).arms]
    assert names[:2] == ["adam_lr0.0001_warm0", "adam_lr0.0001_warm0.5"] and len(names) == 12
    assert trials(exp).name == "t-tuning"
    one = parse_experiment(TUNED.replace("  warmup_epochs: [0, 0.5]\n", ""))
    assert trial_name("adam", one.tune, 0.003, 0.0) == "adam_lr0.003"  # a warm-up not tuned: not named


@pytest.mark.parametrize(("values", "chosen_lr", "edge"), [
    ([0.90, 0.95, 0.93], 0.003, False),  # an interior best
    ([0.96, 0.95, 0.93], 0.0001, True),  # the smallest lr: the best may lie below the grid
    ([0.90, 0.95, 0.97], 0.1, True),  # the largest
    ([0.95, 0.95, 0.90], 0.0001, True),  # equals: the first in grid order
    ([None, 0.5, 0.99], 0.003, False),  # 0.99 diverged (below), None had no evaluation
])
def test_the_pick_on_hand_worked_points(values, chosen_lr, edge):
    exp = parse_experiment(TUNED.replace("  warmup_epochs: [0, 0.5]\n", ""))
    tried = [Point(lr, 0.0, v, diverged=(v == 0.99)) for lr, v in zip(exp.tune.lr, values, strict=True)]
    made = pick("adam", tried)
    assert made.chosen.lr == chosen_lr and made.edge is edge
    assert made.tried[0].score == (-math.inf if values[0] is None else values[0])


def test_the_pick_reads_validation_never_the_test_set(tmp_path):
    """Hand-written summaries whose test accuracies rank the points the other way round: the pick
    follows validation, and the chosen experiment holds the pick, each arm under its own name."""
    exp = parse_experiment(TUNED.replace("  warmup_epochs: [0, 0.5]\n", ""))
    val = {0.0001: 0.90, 0.003: 0.97, 0.1: 0.93}
    test = {0.0001: 0.99, 0.003: 0.91, 0.1: 0.95}
    for arm, folder in seeded_arms(trials(exp), 1, tmp_path / "t-tuning"):
        folder.mkdir(parents=True)
        write_summary(folder, Summary(Status.FINISHED, arm=arm.name, final_val_accuracy=val[arm.lr],
                                      final_test_accuracy=test[arm.lr]))
    made = picks(exp, tmp_path)
    assert [(p.arm, p.chosen.lr, p.chosen.value) for p in made] == [("adam", 0.003, 0.97),
                                                                    ("lamb", 0.003, 0.97)]
    settled = chosen(exp, made)
    assert [(a.name, a.lr) for a in settled.arms] == [("adam", 0.003), ("lamb", 0.003)]


def test_reproduce_tunes_then_trains_the_chosen_points_over_the_seeds(tiny_mnist_env, tmp_path):
    config = write(tmp_path / "t.yaml", TUNED)
    out = tmp_path / "out"
    result = invoke("reproduce", config, "--out", out, "--seeds", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "t" / "tuning.json").read_text())
    report = (out / "REPORT.md").read_text()
    assert (out / "figures" / "t_tuning.png").is_file()
    assert record["by"] == "final_val_accuracy" and record["grid"]["lr"] == [0.0001, 0.003, 0.1]
    settled = {a["name"]: a for a in yaml.safe_load((out / "t" / "config.yaml").read_text())["arms"]}
    for entry in record["arms"]:
        arm = entry["arm"]
        tried = {}
        for lr in (0.0001, 0.003, 0.1):
            for warm in (0, 0.5):
                s = summary_json(out / "t-tuning" / "seed1001" / f"{arm}_lr{lr:g}_warm{warm:g}")
                assert s["seed"] == 1001 and s["samples_per_epoch"] == 192  # a seed of its own; 64 held out
                tried[(lr, warm)] = -math.inf if s["diverged"] else s["final_val_accuracy"]
        best = max(tried, key=lambda k: tried[k])  # first of equals, in grid order (lr, then warm-up)
        assert (entry["chosen"]["lr"], entry["chosen"]["warmup_epochs"]) == best
        assert entry["edge"] is (best[0] in (0.0001, 0.1))
        assert (settled[arm]["lr"], settled[arm]["warmup_epochs"]) == best
        for seed in (1, 2):
            s = summary_json(out / "t" / f"seed{seed}" / arm)
            assert s["settings"]["lr"] == best[0] and s["seed"] == seed
        assert f"t: {arm} → lr {best[0]:g}, warm-up {best[1]:g} epochs" in result.output
        row = next(line for line in report.splitlines() if line.startswith(f"| {arm} | {best[0]:g} |"))
        assert ("at the grid's edge" in row) is (best[0] in (0.0001, 0.1))
        assert row.count("/0.5: ") == 3 and row.count("/0: ") == 3  # every point it tried
    again = invoke("reproduce", config, "--out", out, "--seeds", "2")  # nothing left to train
    assert again.exit_code == 0, again.output
    assert "finished before, skipped" in again.output and "continuing" not in again.output


def test_run_refuses_a_tuned_config(tiny_mnist_env, tmp_path):
    result = invoke("run", write(tmp_path / "t.yaml", TUNED), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "run it with `lambexp reproduce`" in result.output
    assert not (tmp_path / "runs").exists()


def test_lr_scale_tries_factors_of_each_arms_own_rate():
    exp = parse_experiment("name: s\nvalidation: 10\ntune: {lr_scale: [0.1, 0.316, 1, 3.16, 10]}\n"
                           "arms: [{name: lars, optimizer: lars, lr: 2.0},"
                           " {name: adamw, optimizer: torch_adamw, lr: 0.001}]\n")
    rates = {arm.name: arm.lr for arm in trials(exp).arms}
    assert rates == {"lars_lr0.2": 0.2, "lars_lr0.632": 0.632, "lars_lr2": 2.0, "lars_lr6.32": 6.32,
                     "lars_lr20": 20.0, "adamw_lr0.0001": 0.0001, "adamw_lr0.000316": 0.000316,
                     "adamw_lr0.001": 0.001, "adamw_lr0.00316": 0.00316, "adamw_lr0.01": 0.01}
    # the edge is each arm's own grid's: 0.632 is inside lars's grid, 0.0001 at adamw's lower end
    lars = pick("lars", [Point(lr, 0.0, v, False)
                         for lr, v in zip((0.2, 0.632, 2, 6.32, 20), (1, 5, 2, 1, 0))])
    adamw = pick("adamw", [Point(lr, 0.0, v, False) for lr, v in zip((1e-4, 3e-4, 1e-3), (9, 5, 2))])
    assert (lars.chosen.lr, lars.edge, adamw.chosen.lr, adamw.edge) == (0.632, False, 1e-4, True)


@pytest.mark.parametrize(("tune", "line"), [
    ("{lr: [0.1, -1]}", "tune.lr[1]: must be > 0 (got -1)"),
    ("{lr: [0.1]}", "tune: lr: give at least 2 values to choose from (got {lr: [0.1]})"),
    ("{lr: [0.1, 0.2], bye: x}",
     "tune.bye: unknown key (did you mean by?); allowed: lr, lr_scale, warmup_epochs, by (got x)"),
    ("{lr: [0.1, 0.2], by: test_accuracy}", "tune.by: must be one of final_val_accuracy, best_val_accuracy;"
                                            " did you mean best_val_accuracy? (got test_accuracy)"),
])
def test_a_bad_tune_gets_one_line_naming_its_key(tmp_path, tune, line):
    config = write(tmp_path / "t.yaml", f"name: t\nvalidation: 10\ntune: {tune}\narms: [{{name: a}}]\n")
    result = invoke("validate", config)
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"error: {tmp_path / 't.yaml'}: {line}"]


def test_an_unquoted_on_key_is_explained():
    """YAML reads `on:` (and yes, no, off) as the boolean true: the line says so, and how to write it."""
    with pytest.raises(Exception) as caught:
        parse_experiment("name: t\nvalidation: 10\ntune: {lr: [0.1, 0.2], on: x}\narms: [{name: a}]\n")
    assert getattr(caught.value, "lines", None) == [
        "error: <string>: tune: keys must be strings; YAML reads on, off, yes and no as true and false:"
        " quote the key ('on') (got true)"]


def test_what_the_review_found_is_refused_or_said(tiny_mnist_env, tmp_path):
    """Two points that would train under one name; a steps measure shown beside a claim without a
    target; a ratio of one arm; every point diverged; trials resumed without a pick."""
    from lambexp.errors import UserError
    from lambexp.runner.tuning import pick_lines

    same = parse_experiment(TUNED.replace("[0.0001, 0.003, 0.1]", "[0.001, 0.0010000001]"))
    with pytest.raises(UserError, match="would both train as adam_lr0.001_warm0"):
        trials(same)
    with pytest.raises(Exception, match="also: steps_to_target needs `target:`"):
        parse_experiment("name: t\narms: [{name: a}]\nexpect:\n  - {claim: c, arm: a,"
                         " measure: final_accuracy, also: [steps_to_target], above: 0.5}\n")
    with pytest.raises(Exception, match="pair: ratio combines a pair of arms"):
        parse_experiment("name: t\narms: [{name: a}]\nexpect:\n  - {claim: c, arm: a, pair: ratio,"
                         " measure: final_accuracy, above: 0.5}\n")
    exp = parse_experiment(TUNED.replace("  warmup_epochs: [0, 0.5]\n", ""))
    dead = pick("adam", [Point(lr, 0.0, 0.1, diverged=True) for lr in exp.tune.lr])
    assert pick_lines(exp, [dead]) == ["t: adam → lr 0.0001, warm-up 0 epochs (every point diverged or has no"
                                       " validation accuracy: the first is kept)"]
    out = tmp_path / "out"
    text = TUNED.replace("[0, 0.5]", "[0]").replace("[0.0001, 0.003, 0.1]", "[0.001, 0.003]")
    config = write(tmp_path / "t.yaml", text)
    assert invoke("reproduce", config, "--out", out, "--seeds", "1", "--quiet").exit_code == 0
    assert "tune:" not in (out / "t" / "config.yaml").read_text()  # the record is the chosen points
    assert not (out / "t" / "seed1" / "adam").is_symlink()  # never the trial its pick was made on
    (out / "t" / "tuning.json").unlink()  # as if stopped before the pick
    resumed = invoke("resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert "t-tuning: its tuning trials are all here, but no point was picked yet" in resumed.output


def test_a_pick_that_moved_after_the_grid_grew_is_named_and_its_old_runs_kept(tmp_path):
    """The grid grown past its edge (0.003 was the best of two, 0.1 is better): `reproduce` says
    which arm's pick moved, from what to what, and leaves the runs at the old pick as they were;
    with none trained at the old picks, the new picks are recorded and train."""
    from lambexp.errors import UserError
    from lambexp.runner.reproduce import settle

    def tried(text: str, val: dict[float, float]):
        exp = parse_experiment(text.replace("  warmup_epochs: [0, 0.5]\n", ""))
        for arm, folder in seeded_arms(trials(exp), 1, tmp_path / "t-tuning"):
            folder.mkdir(parents=True, exist_ok=True)
            write_summary(folder, Summary(Status.FINISHED, arm=arm.name, final_val_accuracy=val[arm.lr]))
        return exp

    narrow = tried(TUNED.replace("[0.0001, 0.003, 0.1]", "[0.0001, 0.003]"), {0.0001: 0.9, 0.003: 0.95})
    assert [a.lr for a in settle(narrow, tmp_path, [], print).arms] == [0.003, 0.003]
    (tmp_path / "t" / "seed1" / "adam").mkdir(parents=True)  # adam trained at the old pick; lamb not yet
    record = (tmp_path / "t" / "config.yaml").read_text()
    wide = tried(TUNED, {0.0001: 0.9, 0.003: 0.95, 0.1: 0.97})
    with pytest.raises(UserError, match=r"t: the pick moved for adam \(lr 0.003 → 0.1\), which trained at"):
        settle(wide, tmp_path, [], print)
    assert (tmp_path / "t" / "config.yaml").read_text() == record
    assert json.loads((tmp_path / "t" / "tuning.json").read_text())["grid"]["lr"] == [0.0001, 0.003]
    (tmp_path / "t" / "seed1" / "adam").rmdir()  # nothing trained at the old picks: the new ones stand
    assert [a.lr for a in settle(wide, tmp_path, [], print).arms] == [0.1, 0.1]
    assert "lr: 0.1" in (tmp_path / "t" / "config.yaml").read_text()


def test_a_stale_tuning_record_is_left_out_of_the_report_and_said(tmp_path):
    """tuning.json says lamb was picked at lr 0.1, but the folder's lamb trained at 0.003: that row
    is another tuning's, so the report leaves it out and says so; adam's, which matches, is shown."""
    from lambexp.report.collect import ExperimentRuns
    from lambexp.report.document import Para, Table
    from lambexp.report.tuning import tuning_blocks

    exp = parse_experiment("name: t\nvalidation: 64\narms:\n  - {name: adam, optimizer: adam, lr: 0.003}\n"
                           "  - {name: lamb, optimizer: lamb, lr: 0.003}\n")

    def entry(arm: str, lr: float) -> dict:
        point = {"lr": lr, "warmup_epochs": 0.0, "value": 0.9, "diverged": False}
        return {"arm": arm, "chosen": point, "tried": [point], "edge": False}

    record = {"by": "final_val_accuracy", "grid": {"lr": [0.003, 0.1]},
              "arms": [entry("adam", 0.003), entry("lamb", 0.1)]}
    (tmp_path / "tuning.json").write_text(json.dumps(record))
    note, _, table, _ = tuning_blocks(ExperimentRuns(tmp_path, exp, {}, {}), tmp_path, "t")
    assert isinstance(note, Para)
    assert "tuning.json does not match the points these runs trained at for lamb" in note.text
    assert isinstance(table, Table) and [row[:2] for row in table.rows] == [["adam", "0.003"]]


def test_many_arms_are_drawn_a_panel_per_model_and_batch_each_from_its_own_floor(drawn, tmp_path):
    """Nine arms, of two batch sizes: two panels, each with its own arms' lines; a panel's accuracy
    axis starts 1 point under the whole percent below its lowest point (94.6% → 93%), and a diverged
    point sits on that floor."""
    from lambexp.report.collect import ExperimentRuns
    from lambexp.report.tuning import panels, tuning_curves

    arms = [f"{{name: a{i}, batch_size: {256 if i < 5 else 1024}, lr: 0.01}}" for i in range(9)]
    runs = ExperimentRuns(tmp_path, parse_experiment("name: t\narms: [" + ", ".join(arms) + "]\n"), {}, {})

    def entry(i: int) -> dict:
        tried = [{"lr": 0.001, "warmup_epochs": 0.0, "value": 0.946 + i / 1000, "diverged": False},
                 {"lr": 0.01, "warmup_epochs": 0.0, "value": 0.98, "diverged": False},
                 {"lr": 0.1, "warmup_epochs": 0.0, "value": 0.1 if i == 6 else 0.97, "diverged": i == 6}]
        return {"arm": f"a{i}", "chosen": tried[1], "tried": tried, "edge": False}

    titles = panels(runs)
    assert titles["a0"] == "lenet, batch 256" and titles["a8"] == "lenet, batch 1024"
    tuning_curves("t", {"by": "final_val_accuracy", "arms": [entry(i) for i in range(9)]}, tmp_path / "c.png",
                  titles)
    small, large = drawn[0].axes[:2]
    assert small.get_title() == "lenet, batch 256" and large.get_title() == "lenet, batch 1024"
    names = [ln.get_label() for ln in small.lines if ln.get_label().startswith("a")]
    assert names == [f"a{i}" for i in range(5)]
    assert small.get_ylim() == (93.0, 100.0)  # lowest 94.6%: 94 − 1
    assert large.get_ylim() == (94.0, 100.0)  # lowest 95.1% (a5): 95 − 1
    [cross] = [ln for ln in large.lines if ln.get_marker() == "X"]  # none drawn empty: an empty
    assert list(cross.get_xdata()) == [0.1] and list(cross.get_ydata()) == [94.0]  # unclipped line
    assert not [ln for ln in small.lines if ln.get_marker() == "X"]  # stretches tight_layout's box
    assert len(drawn[0].axes) == 2  # a panel each, side by side
    assert panels(ExperimentRuns(tmp_path, parse_experiment("name: t\narms: [" + ", ".join(arms[:3]) + "]\n"),
                                 {}, {})) is None
