"""The report's figures render to readable PNGs from small hand-built series, NaN/inf and ragged seeds too."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import line

from lambexp.base.statuses import Status
from lambexp.folders.layout import Summary
from lambexp.report import figures
from lambexp.report.series import ArmSeries

NAMES = ["conv1.weight", "conv1.bias", "fc.weight"]  # 3 tensors: a weight, a bias, a weight
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def series(arm: str, seed: int, n: int = 12, blowup: int | None = None, stopped: bool = False) -> ArmSeries:
    """``n`` loss and trust logs, 3 test evaluations; from index ``blowup`` on, loss and r are NaN/inf;
    ``stopped``: the summary says it diverged though every logged value is finite (training stopped)."""
    rng = np.random.default_rng(seed)
    x = np.arange(1, n + 1) * 1000.0
    loss = 2.3 * np.exp(-x / 4000) + 0.05 + 0.01 * rng.random(n)
    r1 = np.outer(1 + x / 5000, [0.5, 0.05, 0.2]) * rng.uniform(0.9, 1.1, (n, 3))  # (n, 3)
    r2 = np.outer(np.exp(-x / 8000), [0.1, 0.2, 0.05]) + 1e-3  # (n, 3)
    r = np.minimum(r1 / r2, 10.0)
    if blowup is not None:
        loss[blowup] = np.inf
        loss[blowup + 1:] = np.nan
        r[blowup:, 0], r1[blowup:] = np.nan, np.inf
    test_x = np.array([n / 3, 2 * n / 3, n]) * 1000.0
    acc = np.array([0.90, 0.95, 0.97 if blowup is None else 0.098])
    return ArmSeries(arm, seed, np.c_[x, loss], np.c_[test_x, 1 - acc], np.c_[test_x, acc], x, NAMES,
                     r, r1, r2, Summary(Status.FINISHED, diverged=blowup is not None or stopped))


@pytest.fixture(scope="module")
def runs() -> dict[str, list[ArmSeries]]:
    """Two arms, two seeds each; the second arm's seeds diverge: one logs NaN/inf, one stops early."""
    return {"adam": [series("adam", 1), series("adam", 2)],
            "lamb": [series("lamb", 1, blowup=6), series("lamb", 2, n=9, stopped=True)]}


COLORS = {"adam": "#1f77b4", "lamb": "#d62728"}


def assert_png(path: Path, min_width: int = 500, min_height: int = 300) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000
    height, width = matplotlib.image.imread(path).shape[:2]
    assert min_width <= width <= 4000 and min_height <= height <= 4000


def test_curves(runs, tmp_path):
    path = figures.curves("test: adam vs lamb", runs, COLORS, tmp_path / "curves.png", samples_per_epoch=4000)
    assert path == tmp_path / "curves.png"
    assert_png(path, min_width=1000)


def test_curves_one_seed_and_missing_color(tmp_path):
    one = {"adam": [series("adam", 1)], "nan_from_start": [series("x", 3, blowup=0)],
           "short": [series("s", 4, n=5)]}
    assert_png(figures.curves("one seed", one, {}, tmp_path / "sub" / "one.png"))


def test_trust_ridges(runs, tmp_path):
    path = figures.trust_ridges("test: trust", {a: s[0] for a, s in runs.items()}, COLORS, tmp_path / "t.png")
    assert_png(path, min_width=1000, min_height=600)


def test_trust_ridges_subsamples_long_runs(tmp_path):
    path = figures.trust_ridges("test: long", {"lamb": series("lamb", 1, n=45)}, {}, tmp_path / "t.png")
    assert_png(path, min_width=1000)


def test_trust_figures_with_an_arm_that_logs_none(tmp_path):
    """torch's own Adam logs no r, r1, r2: its panels say so, the other arm's still draw."""
    bare = series("torch_adam", 1)
    bare.trust_steps, bare.names = np.zeros(0), []
    bare.r = bare.r1 = bare.r2 = np.zeros((0, 0))
    arms = {"torch_adam": bare, "lamb": series("lamb", 1)}
    assert_png(figures.trust_ridges("test: bare", arms, COLORS, tmp_path / "t.png"), min_width=1000)
    assert_png(figures.layer_norms("test: bare", arms, tmp_path / "n.png", key="r2"), min_width=800)


def test_layer_norms(runs, tmp_path):
    path = figures.layer_norms("test: r1 per layer", {a: s[0] for a, s in runs.items()}, tmp_path / "n.png")
    assert_png(path, min_width=800)


def test_arm_colors_by_optimizer_when_distinct():
    colors = figures.arm_colors([("adam", "adam"), ("lamb", "lamb")])
    assert colors == {"adam": "#1f77b4", "lamb": "#d62728"}
    assert figures.arm_colors([("a", "torch_adam"), ("l", "lamb")]) == {"a": "#1f77b4", "l": "#d62728"}


@pytest.mark.parametrize("arms", [
    [("lamb_lr0.01", "lamb"), ("lamb_lr0.1", "lamb")],
    [("adam", "adam"), ("torch", "torch_adam")],  # distinct optimizers, same colour: fall back to order
    [("x", "mystery"), ("y", "lamb"), ("z", "lamb"), ("w", "adam")],
])
def test_arm_colors_distinct_when_optimizers_repeat(arms):
    colors = figures.arm_colors(arms)
    assert list(colors) == [name for name, _ in arms]
    assert len(set(colors.values())) == len(arms)
    assert colors[arms[0][0]] == "#1f77b4"  # the post: first (lr 0.01) blue, second (lr 0.1) green


def test_fmt_samples():
    assert [figures.fmt_samples(v) for v in (0, 512, 60000, 1_200_000)] == ["0", "512", "60k", "1.2M"]


# What the figures show, read back from the matplotlib Figure each one saves: the plotted data must
# be the series given (computed here from the hand-built inputs), not merely a PNG of some size.

def test_curves_draw_the_seed_means_and_mark_where_each_seed_diverged(runs, drawn, tmp_path):
    figures.curves("t", runs, COLORS, tmp_path / "c.png")
    ax_loss, ax_acc = drawn[0].axes[:2]
    a1, a2 = runs["adam"]
    mean_loss = (a1.train_loss[:, 1] + a2.train_loss[:, 1]) / 2
    assert np.allclose(line(ax_loss, "adam (2 seeds)").get_ydata(), mean_loss)
    assert np.allclose(line(ax_acc, "adam (2 seeds)").get_ydata(), 50 * (a1.test_accuracy[:, 1]
                                                                         + a2.test_accuracy[:, 1]))
    assert ax_loss.get_yscale() == "log" and ax_acc.get_ylim()[1] <= 100
    assert ax_loss.get_legend_handles_labels()[1] == ["adam (2 seeds)", "lamb (2 seeds, diverged 2/2)"]
    legend = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert legend[-1] == "where it diverged (last finite loss)"
    marks = [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in ax_loss.lines if ln.get_marker() == "X"]
    l1, l2 = runs["lamb"]  # seed 1 turns inf at index 6: last finite is 5; seed 2 stopped: its last log
    assert marks == [tuple(l1.train_loss[5]), tuple(l2.train_loss[8])]


def test_ridges_show_each_layers_value_at_its_step_and_keep_at_most_40_rows(drawn, tmp_path):
    s = series("lamb", 1, n=45)
    figures.trust_ridges("t", {"lamb": s}, {}, tmp_path / "t.png")
    panels = drawn[0].axes[:3]
    assert [ax.get_title() for ax in panels] == ["r (trust ratio)", "r₁ (weight norm)", "r₂ (update norm)"]
    assert all(len(ax.lines) == figures.MAX_RIDGES for ax in panels)  # 45 steps, 40 drawn
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    assert labels[0] == "1k" and labels[-1] == "45k"  # first step at the top, the last at the bottom
    for ax, key in zip(panels, ["r", "r1", "r2"]):
        last = ax.lines[-1]  # the last step's ridge, drawn last (in front), at the bottom
        x, y = last.get_xdata(), np.nan_to_num(last.get_ydata())
        at = [np.abs(x - value).argmin() for value in getattr(s, key)[-1]]
        assert all(y[i] > 0.3 * y.max() for i in at), key  # high at every layer's value,
        assert min(at) - 4 <= y.argmax() <= max(at) + 4, key  # highest among them
        far = np.min(np.abs(np.arange(len(x))[:, None] - np.array(at)[None, :]), axis=1) > 20
        assert far.any() and (y[far] == 0).all()  # nothing > 5 kernel widths from every value


def test_layer_norms_draw_each_tensor_and_where_values_turn_bad(runs, drawn, tmp_path):
    lamb = runs["lamb"][0]  # inf r1 from index 6
    figures.layer_norms("t", {"adam": runs["adam"][0], "lamb": lamb}, tmp_path / "n.png", key="r1")
    ax_adam, ax_lamb = drawn[0].axes[:2]
    for j, name in enumerate(NAMES):
        assert np.allclose(line(ax_adam, name).get_ydata(), runs["adam"][0].r1[:, j])
        assert line(ax_adam, name).get_linestyle() == ("--" if name.endswith("bias") else "-")
        y = line(ax_lamb, name).get_ydata()
        assert np.allclose(y[:6], lamb.r1[:6, j]) and np.isnan(y[6:]).all()
    assert line(ax_lamb, "first NaN/inf").get_xdata()[0] == lamb.trust_steps[6]
    assert ax_adam.get_yscale() == "log"


def test_accuracy_vs_lr_draws_means_bands_and_diverged_marks(drawn, tmp_path):
    points = {"lamb": [(0.1, [0.90, 0.10], 1), (0.01, [0.98, 0.96], 0)], "adam": [(0.01, [0.97], 0)]}
    figures.accuracy_vs_lr("t", points, tmp_path / "lr.png", threshold=0.97)
    ax = drawn[0].axes[0]
    lamb = line(ax, "lamb")
    assert list(lamb.get_xdata()) == [0.01, 0.1] and np.allclose(lamb.get_ydata(), [97.0, 50.0])
    [mark] = [ln for ln in ax.lines if ln.get_marker() == "X"]
    assert (mark.get_xdata()[0], mark.get_ydata()[0]) == (0.1, pytest.approx(50.0))
    [band] = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(10.0) and ys.max() == pytest.approx(98.0)
    assert 97.0 in [ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]  # threshold
    assert "97%: lr_range's threshold" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_accuracy_vs_lr_shows_the_thresholds_the_claims_set(drawn, tmp_path):
    points = {"lamb": [(0.01, [0.98], 0), (0.1, [0.95], 0)]}
    figures.accuracy_vs_lr("t", points, tmp_path / "lr.png", threshold=[0.9, 0.975])
    ax = drawn[0].axes[0]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() in ("--", ":")]
    assert [ln.get_ydata()[0] for ln in dashed] == [90.0, 97.5]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "90%: lr_range's threshold" in texts and "97.5%: lr_range's threshold" in texts
    assert not any("97%" in t for t in texts)


def test_curves_by_group_draw_a_row_per_group_and_a_line_per_arm(runs, drawn, tmp_path):
    groups = {"adam, wd 0": {"lr 0.001": runs["adam"], "lr 0.01": [series("adam", 3)]},
              "lamb, wd 0": {"lr 0.001": runs["lamb"]}}
    figures.curves_by_group("t", groups, tmp_path / "g.png", samples_per_epoch=4000)
    axes = drawn[0].axes
    (adam_loss, adam_acc), (lamb_loss, _) = axes[0:2], axes[2:4]
    assert adam_loss.get_ylabel().startswith("adam, wd 0") and lamb_loss.get_ylabel().startswith("lamb, wd 0")
    a1, a2 = runs["adam"]
    mean_loss = (a1.train_loss[:, 1] + a2.train_loss[:, 1]) / 2
    assert np.allclose(line(adam_loss, "lr 0.001").get_ydata(), mean_loss)
    assert np.allclose(line(adam_acc, "lr 0.01").get_ydata(), 100 * series("adam", 3).test_accuracy[:, 1])
    assert line(lamb_loss, "lr 0.001 (diverged 2/2)") is not None
    assert sum(ln.get_marker() == "X" for ln in lamb_loss.lines) == 2 and adam_acc.get_ylim() == (0, 100)
