"""Sweeps: every arm crossed with every value, in a config's `sweep:` or with `--sweep`; the expanded
arms are plain arms everywhere after (show-config, claims, run folders)."""

import pytest
from helpers import TINY_CONFIG, invoke, run_dirs

from lambexp.config import parse_experiment
from lambexp.errors import ConfigError

SWEPT = """\
name: s
lr: 0.5
arms:
  - {name: adam, optimizer: adam}
  - {name: lamb, optimizer: lamb, lr: 0.3}
sweep:
  lr: [0.001, 0.1]
  weight_decay: [0, 0.01]
expect:
  - {claim: c, arm: lamb_lr0.1_wd0.01, measure: final_accuracy, above: adam_lr0.001_wd0}
"""


def test_every_arm_is_crossed_with_every_combination_and_named_from_it():
    exp = parse_experiment(SWEPT)
    assert [(a.name, a.optimizer, a.lr, a.weight_decay) for a in exp.arms] == [
        ("adam_lr0.001_wd0", "adam", 0.001, 0.0), ("adam_lr0.001_wd0.01", "adam", 0.001, 0.01),
        ("adam_lr0.1_wd0", "adam", 0.1, 0.0), ("adam_lr0.1_wd0.01", "adam", 0.1, 0.01),
        ("lamb_lr0.001_wd0", "lamb", 0.001, 0.0), ("lamb_lr0.001_wd0.01", "lamb", 0.001, 0.01),
        ("lamb_lr0.1_wd0", "lamb", 0.1, 0.0), ("lamb_lr0.1_wd0.01", "lamb", 0.1, 0.01)]
    assert exp.expect[0].arm == "lamb_lr0.1_wd0.01"  # claims name the expanded arms


def test_command_line_sweeps_add_to_the_files_and_drop_its_claims():
    exp = parse_experiment(SWEPT, sweeps=["lr=0.02,0.03,0.04", "betas=[[0.9, 0.99], [0.9, 0.999]]"])
    assert len(exp.arms) == 2 * 3 * 2 * 2 and exp.expect == ()
    assert exp.arms[0].name == "adam_lr0.02_wd0_betas0.9-0.99" and exp.arms[0].betas == (0.9, 0.99)
    assert [a.lr for a in exp.arms[:12:4]] == [0.02, 0.03, 0.04]


@pytest.mark.parametrize("sweep, line", [
    ("sweep: {lr: [0.1, -1]}", "sweep.lr[1]: must be > 0 (got -1)"),
    ("sweep: {lrr: [0.1]}", "sweep.lrr: unknown key (did you mean lr?)"),
    ("sweep: {lr: 0.1}", "sweep.lr: must be a non-empty list of values (got 0.1)"),
    ("sweep: {lr: [0.1, 0.10]}", "sweep.lr: lists the same value twice"),
    ("sweep: [lr]", "sweep: must be a mapping of settings to lists of values"),
])
def test_bad_sweeps_are_one_line_each(sweep, line):
    with pytest.raises(ConfigError) as err:
        parse_experiment(f"name: s\narms: [{{name: a}}]\n{sweep}\n", source="x.yaml")
    assert len(err.value.lines) == 1 and err.value.lines[0].startswith(f"error: x.yaml: {line}")


def test_a_claim_naming_an_arm_before_the_sweep_is_refused():
    with pytest.raises(ConfigError, match=r"expect\[0\].arm: no arm of that name"):
        parse_experiment(SWEPT.replace("arm: lamb_lr0.1_wd0.01", "arm: lamb"))


def test_run_with_sweep_end_to_end(tiny_mnist_env, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    shown = invoke("show-config", tmp_path / "tiny.yaml", "--sweep", "lr=0.01,0.02")
    assert [line for line in shown.output.splitlines() if line.startswith("- name:")] == [
        "- name: adam_lr0.01", "- name: adam_lr0.02", "- name: lamb_lr0.01", "- name: lamb_lr0.02"]
    bad = invoke("run", tmp_path / "tiny.yaml", "--sweep", "lr")
    assert bad.exit_code == 2 and "--sweep lr: expected KEY=V1,V2" in bad.output
    result = invoke("run", tmp_path / "tiny.yaml", "--runs-dir", tmp_path / "runs", "--quiet",
                    "--sweep", "lr=0.01,0.02")
    assert result.exit_code == 0, result.output
    [run_dir] = run_dirs(tmp_path / "runs")
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [
        "adam_lr0.01", "adam_lr0.02", "lamb_lr0.01", "lamb_lr0.02"]
    assert "lr: 0.02" in (run_dir / "config.yaml").read_text()  # the expanded arms, on record

