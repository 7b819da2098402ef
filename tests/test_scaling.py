"""The batch-scaling table and figures (issue 32): per model and optimizer, the test accuracy and
the steps to a validation target at each batch size, checked against hand-worked means; the
perfect-scaling line through the smallest batch's geometric mean."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import line

from lambexp.base.statuses import Status
from lambexp.config import parse_experiment
from lambexp.folders.layout import Summary
from lambexp.report import build, scaling
from lambexp.report.collect import ExperimentRuns
from lambexp.report.document import Image
from lambexp.report.series import ArmSeries
from lambexp.report.variants import variant_grid

EXP = parse_experiment("""\
name: s
validation: 64
arms:
  - {name: adam_b256, optimizer: adam, batch_size: 256}
  - {name: adam_b1024, optimizer: adam, batch_size: 1024}
  - {name: lamb_b256, optimizer: lamb, batch_size: 256}
  - {name: lamb_b1024, optimizer: lamb, batch_size: 1024}
  - {name: vit_adam_b256, optimizer: adam, batch_size: 256, model: vit}
expect:
  - {claim: c, arm: [adam_b256, adam_b1024], pair: ratio, measure: steps_to_target, target: 0.98, above: 2.5}
""")


def run(final: float | None, best: float | None, step: int | None, diverged: bool = False) -> ArmSeries:
    """Validation 0.5 at step 1, then 0.99 at ``step`` (None: never reaches 0.98)."""
    history = [{"step": 1, "samples": 1, "val/accuracy": 0.5}]
    history += [{"step": step, "samples": step, "val/accuracy": 0.99}] if step else []
    empty = np.empty((0, 2))
    return ArmSeries("a", 1, empty, empty, empty, np.empty(0), [], np.empty((0, 0)), np.empty((0, 0)),
                     np.empty((0, 0)), Summary(Status.FINISHED, arm="a", history=history, diverged=diverged,
                                               final_test_accuracy=final, best_test_accuracy=best))


RUNS = ExperimentRuns(None, EXP, {
    1: {"adam_b256": run(0.98, 0.985, 40), "adam_b1024": run(0.97, 0.975, 20),
        "lamb_b256": run(0.99, 0.99, 30), "lamb_b1024": run(0.985, 0.99, 10),
        "vit_adam_b256": run(0.95, 0.96, None)},
    2: {"adam_b256": run(0.99, 0.99, 60), "adam_b1024": run(0.96, 0.97, None),
        "lamb_b256": run(0.99, 0.995, 30), "lamb_b1024": run(0.985, 0.985, 10),
        "vit_adam_b256": run(0.95, 0.95, None)}}, {})


def test_the_table_has_a_row_per_model_and_optimizer_and_a_column_per_batch():
    what, header, rows = scaling.scaling_rows(RUNS)
    assert header == ["model", "optimizer", "batch 256", "batch 1024"]
    assert "steps until 98% validation accuracy is first reached" in what
    # adam at 256: finals 0.98 and 0.99 → 98.50% ± 0.71% (sample std); steps 40 and 60 → 50
    assert rows == [["lenet", "adam (blog)", "98.50% ± 0.71%; 50 steps",
                     "96.50% ± 0.71%; 20 steps (1 of 2 not reached)"],
                    ["lenet", "lamb (blog)", "99.00% ± 0.00%; 30 steps", "98.50% ± 0.00%; 10 steps"],
                    ["vit", "adam (blog)", "95.00% ± 0.00%; not reached", ""]]


def test_the_figures_draw_the_hand_worked_means_and_the_perfect_scaling_line(drawn, tmp_path):
    made = scaling.scaling_figures(RUNS, "t", tmp_path, "s")
    assert [p.name for p, _ in made] == ["s_batch.png", "s_steps.png"]
    accuracy, steps = drawn
    final_lenet, best_lenet, final_vit, _ = accuracy.axes
    for ax, adam, lamb in [(final_lenet, [98.5, 96.5], [99.0, 98.5]),
                           (best_lenet, [98.75, 97.25], [99.25, 98.75])]:
        means = [bars.lines[0] for bars in ax.containers]
        assert [list(m.get_xdata()) for m in means] == [[256, 1024], [256, 1024]]
        assert np.allclose(means[0].get_ydata(), adam) and np.allclose(means[1].get_ydata(), lamb)
    assert final_vit.get_title() == "vit: final test accuracy" and len(final_vit.containers) == 1
    lenet, vit = steps.axes
    assert list(line(lenet, "adam (blog)").get_xdata()) == [256, 1024]
    assert np.allclose(line(lenet, "adam (blog)").get_ydata(), [50, 20])  # the seeds that reached it
    assert np.allclose(line(lenet, "lamb (blog)").get_ydata(), [30, 10])
    perfect = line(lenet, "perfect scaling (steps ∝ 1/batch)")
    s0 = math.sqrt(50 * 30)  # the geometric mean at batch 256
    assert np.allclose(perfect.get_ydata(), [s0, s0 / 4])
    assert lenet.get_xscale() == "log" and lenet.get_yscale() == "log"
    assert len(line(vit, "adam (blog)").get_xdata()) == 0  # never reached: no point, a cross near the top
    [cross] = [ln for ln in vit.lines if ln.get_marker() == "X"]
    assert list(cross.get_xdata()) == [256] and list(cross.get_ydata()) == [scaling.NOT_REACHED_Y]
    [said] = [t.get_text() for t in vit.texts]
    assert said == "no optimizer reached 98% validation accuracy\nat any batch size"
    assert not lenet.texts


def test_optimizers_that_never_reached_the_target_at_one_batch_get_a_cross_each(drawn, tmp_path):
    never = {seed: {**arms, "lamb_b1024": run(0.9, 0.9, None), "adam_b1024": run(0.9, 0.9, None)}
             for seed, arms in RUNS.seeds.items()}
    scaling.scaling_figures(ExperimentRuns(None, EXP, never, {}), "t", tmp_path, "s")
    lenet = drawn[1].axes[0]
    crosses = [ln for ln in lenet.lines if ln.get_marker() == "X"]
    xs = sorted(x for ln in crosses for x in ln.get_xdata())
    # two crosses at batch 1024, 0.06 octave either side of it (DODGE = 0.12 apart)
    assert np.allclose(xs, [1024 * 2 ** -0.06, 1024 * 2 ** 0.06])
    assert {ln.get_color() for ln in crosses} == {line(lenet, "adam (blog)").get_color(),
                                                  line(lenet, "lamb (blog)").get_color()}
    low, high = lenet.get_ylim()
    assert high > 60  # head room above the highest point (adam's 50 steps at 256) for the crosses


def test_no_target_no_steps_figure(drawn, tmp_path):
    runs = ExperimentRuns(None, EXP.model_copy(update={"expect": ()}), RUNS.seeds, {})
    assert [p.name for p, _ in scaling.scaling_figures(runs, "t", tmp_path, "s")] == ["s_batch.png"]
    what, _, rows = scaling.scaling_rows(runs)
    assert "steps" not in what and rows[0][2] == "98.50% ± 0.71%"


@pytest.mark.parametrize(("values", "mean", "never"), [([40, 60], 50, 0), ([20, math.inf], 20, 1),
                                                       ([math.inf], math.nan, 1)])
def test_reached_averages_only_the_seeds_that_got_there(values, mean, never):
    got = scaling.reached(values)
    assert (math.isnan(got[0]) if math.isnan(mean) else got[0] == mean) and got[1] == never


def test_it_applies_to_three_batch_sizes_with_one_arm_each():
    """A tuning's trials (two lrs of one optimizer at one batch) would pool lrs: not a scaling
    experiment; neither is one of two batch sizes."""
    arms = ["{name: a1, batch_size: 256}", "{name: a2, batch_size: 1024}", "{name: a3, batch_size: 4096}"]

    def exp(*more: str):
        return parse_experiment("name: e\narms: [" + ", ".join([*arms, *more]) + "]\n")

    assert scaling.applies(exp())
    assert scaling.applies(exp("{name: v, batch_size: 256, model: vit}",
                               "{name: l, batch_size: 256, optimizer: lars}"))
    assert not scaling.applies(exp("{name: a4, batch_size: 256, lr: 0.1}"))
    assert not scaling.applies(parse_experiment("name: e\narms: [" + ", ".join(arms[:2]) + "]\n"))


def test_a_seed_that_diverged_before_any_test_is_counted_not_averaged():
    """final_test_accuracy is null in summary.json for a run that diverged before its first epoch
    ended: the row averages the others and says how many had none."""
    seeds = {1: {"adam_b256": run(0.98, 0.98, 40)}, 2: {"adam_b256": run(None, None, None, diverged=True)},
             3: {"adam_b1024": run(None, None, None, diverged=True)}}
    _, _, rows = scaling.scaling_rows(ExperimentRuns(None, EXP, seeds, {}))
    assert rows == [["lenet", "adam (blog)", "98.00% (1 of 2 diverged, 1 of 2 without a test evaluation);"
                     " 40 steps (1 of 2 not reached)", "no test accuracy (1 of 1 diverged); not reached"]]


def test_a_seed_that_diverged_later_is_averaged_and_said_and_marked(drawn, tmp_path):
    """A seed that diverged in its last epoch keeps the accuracy of its last test evaluation: it is
    in the mean, the cell says it diverged, and its point in the figure has a ✕."""
    seeds = {1: {"adam_b256": run(0.98, 0.98, 40), "adam_b1024": run(0.97, 0.97, 20)},
             2: {"adam_b256": run(0.90, 0.95, 40, diverged=True), "adam_b1024": run(0.97, 0.97, 20)}}
    runs = ExperimentRuns(None, EXP, seeds, {})
    _, _, rows = scaling.scaling_rows(runs)
    assert rows[0][2] == "94.00% ± 5.66% (1 of 2 diverged); 40 steps"  # (0.98 + 0.90) / 2, std 0.0566
    scaling.scaling_figures(runs, "t", tmp_path, "s")
    final = drawn[0].axes[0]
    [cross] = [ln for ln in final.lines if ln.get_marker() == "X" and len(ln.get_xdata())]
    assert list(cross.get_xdata()) == [256] and np.allclose(cross.get_ydata(), [94.0])


def test_a_line_is_an_optimizer_and_its_rule_and_perfect_scaling_starts_where_it_is_first_reached(
        drawn, tmp_path):
    """Adam on the blog's rule and on the paper's are two lines, not one; nothing reaches the target
    at batch 256, so the perfect-scaling line goes through batch 1024's geometric mean."""
    exp = parse_experiment("name: s\nvalidation: 64\narms:\n"
                           "  - {name: a256, optimizer: adam, rule: blog, batch_size: 256}\n"
                           "  - {name: a1024, optimizer: adam, rule: blog, batch_size: 1024}\n"
                           "  - {name: p1024, optimizer: adam, rule: paper, batch_size: 1024}\n"
                           "  - {name: p4096, optimizer: adam, rule: paper, batch_size: 4096}\n"
                           "expect:\n  - {claim: c, arm: a256, measure: steps_to_target, target: 0.98,"
                           " below: 9}\n")
    assert scaling.applies(exp)
    runs = ExperimentRuns(None, exp, {1: {"a256": run(0.9, 0.9, None), "a1024": run(0.98, 0.98, 8),
                                          "p1024": run(0.98, 0.98, 2), "p4096": run(0.98, 0.98, 1)}}, {})
    assert [row[1] for row in scaling.scaling_rows(runs)[2]] == ["adam (blog)", "adam (paper)"]
    scaling.scaling_figures(runs, "t", tmp_path, "s")
    [ax] = drawn[1].axes
    assert np.allclose(line(ax, "adam (paper)").get_ydata(), [2, 1])
    perfect = line(ax, "perfect scaling (steps ∝ 1/batch)")
    assert list(perfect.get_xdata()) == [256, 1024, 4096]
    assert np.allclose(perfect.get_ydata(), [16, 4, 1])  # √(8·2) = 4 at 1024, so 16 at 256 and 1 at 4096


def test_without_a_validation_split_the_target_is_named_on_the_test_set():
    """steps_to_target reads test accuracy where no split is held out: the labels say so."""
    bare = ExperimentRuns(None, EXP.model_copy(update={"arms": tuple(
        a.model_copy(update={"validation": 0}) for a in EXP.arms)}), RUNS.seeds, {})
    assert scaling.target_text(RUNS, 0.98) == "98% validation accuracy"
    assert scaling.target_text(bare, 0.98) == "98% test accuracy"


def test_lrs_set_by_tuning_are_neither_an_lr_sweep_nor_a_variant_grid(tmp_path):
    """Each tuned arm has its own pick: four lrs across arms at two batches are no sweep. The same
    arms untuned are one (the gate is what leaves it out), and the trials (``<name>-tuning``) too, and
    the chosen points as reproduce records them: config.yaml without `tune:`, tuning.json beside it."""
    arms = "".join(f"  - {{name: {rule}_b{b}, optimizer: lamb, rule: {rule}, batch_size: {b}, lr: {lr}}}\n"
                   for (rule, b), lr in zip([(r, b) for r in ("blog", "paper", "timm") for b in (256, 1024)],
                                            [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]))
    untuned = parse_experiment("name: u\nvalidation: 64\narms:\n" + arms)
    tuned = parse_experiment("name: u\nvalidation: 64\ntune: {lr_scale: [0.5, 2]}\narms:\n" + arms)
    trials = untuned.model_copy(update={"name": "u-tuning"})
    seeds = {1: {a.name: run(0.98, 0.98, 10) for a in untuned.arms}}
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "tuning.json").write_text('{"by": "final_val_accuracy", "grid": {}, "arms": []}')
    made = {}
    for key, exp, folder in (("u", untuned, None), ("tuned", tuned, None), ("u-tuning", trials, None),
                             ("recorded", untuned, recorded)):
        runs = ExperimentRuns(folder, exp, seeds, {})
        blocks = build.experiment_figures(runs, tmp_path / key, exp.name, variant_grid(runs))
        made[key] = ({Path(b.path).name.removeprefix(f"{exp.name}_") for b in blocks if isinstance(b, Image)},
                     variant_grid(runs) is not None)
    assert made["u"] == ({"curves.png", "variants.png", "trust.png", "r1_layers.png", "lr.png"}, True)
    plain = ({"curves.png", "trust.png", "r1_layers.png"}, False)
    assert made["tuned"] == made["u-tuning"] == made["recorded"] == plain
