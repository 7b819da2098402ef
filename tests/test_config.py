"""lambexp.config: shipped configs load with the blog's settings; every bad input is one exact line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambexp.base.variants import RULES, SWITCHED_RULES
from lambexp.config import (
    SETTINGS,
    Arm,
    Experiment,
    Settings,
    experiment_to_yaml,
    load_experiment,
    parse_experiment,
    validate_experiment,
)
from lambexp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHIPPED = ["adam_vs_lamb", "lamb_lr", "lamb_wd", "adam_lr", "readme_lr02"]
BLOG = {"rule": "blog", "batch_size": 512, "betas": (0.9, 0.99), "epochs": 6, "seed": 1,
        "log_interval": 30, "weight_decay": 0.0, "eps": 1e-8, "clamp": 10.0, "model": "lenet"}


def errors_of(text: str, overrides=(), source="x.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_experiment(text, source, overrides)
    return caught.value.lines


# --- the shipped configs -------------------------------------------------------------------

def test_every_shipped_config_loads_and_is_named_after_its_file():
    paths = sorted(CONFIGS.rglob("*.yaml"))
    assert set(SHIPPED) <= {p.stem for p in paths}
    for path in paths:
        exp = load_experiment(path)
        assert (exp.name, exp.source) == (path.stem, path)
        assert exp.description


@pytest.mark.parametrize("stem", SHIPPED)
def test_shipped_config_documents_itself(stem):
    text = (CONFIGS / f"{stem}.yaml").read_text()
    header = text.split("\nname:")[0]
    assert header.startswith("# E"), "header comment names the experiment and the blog's claim"
    assert "Claim" in header
    assert f"lambexp run configs/{stem}.yaml" in header


@pytest.mark.parametrize(("stem", "arms"), [
    ("adam_vs_lamb", {"adam": {"optimizer": "adam", "lr": 0.01},
                      "lamb": {"optimizer": "lamb", "lr": 0.01}}),
    ("lamb_lr", {"lamb_lr0.01": {"optimizer": "lamb", "lr": 0.01},
                 "lamb_lr0.1": {"optimizer": "lamb", "lr": 0.1}}),
    ("lamb_wd", {"lamb_wd0": {"optimizer": "lamb", "lr": 0.1, "weight_decay": 0.0},
                 "lamb_wd0.01": {"optimizer": "lamb", "lr": 0.1, "weight_decay": 0.01}}),
    ("adam_lr", {"adam_lr0.01": {"optimizer": "adam", "lr": 0.01},
                 "adam_lr0.1": {"optimizer": "adam", "lr": 0.1}}),
])
def test_blog_configs_have_the_blogs_settings(stem, arms):
    exp = load_experiment(CONFIGS / f"{stem}.yaml")
    assert [arm.name for arm in exp.arms] == list(arms)
    for arm in exp.arms:
        expected = {**BLOG, **arms[arm.name]}
        assert {k: arm.model_dump()[k] for k in expected} == expected, arm.name


def test_readme_config_is_the_june_2019_rule_in_both_arms():
    """E6 as docs/claims.md states it: one optimizer class, the paper rule without bias correction, betas
    (0.9, 0.999), eps 1e-6, ‖w‖ clamped at 10, decoupled decay 0.01 in both arms, 6 epochs."""
    adam, lamb = load_experiment(CONFIGS / "readme_lr02.yaml").arms
    assert (adam.name, adam.optimizer, lamb.name, lamb.optimizer) == ("adam", "adam", "lamb", "lamb")
    for arm in (adam, lamb):
        assert (arm.rule, arm.bias_correction, arm.lr, arm.betas, arm.eps, arm.clamp, arm.weight_decay) == (
            "paper", False, 0.02, (0.9, 0.999), 1e-6, 10.0, 0.01), arm.name
        assert (arm.epochs, arm.batch_size, arm.log_interval, arm.seed) == (6, 512, 30, 1)


# --- resolution ----------------------------------------------------------------------------

def test_arm_keys_override_shared_keys_and_defaults_fill_the_rest():
    exp = parse_experiment("name: e\nlr: 0.5\nepochs: 2\narms:\n"
                           "  - {name: a}\n  - {name: b, lr: 0.25, rule: paper}\n")
    a, b = exp.arms
    assert (a.lr, a.epochs, a.rule, a.eps) == (0.5, 2, "blog", 1e-8)
    assert (b.lr, b.epochs, b.rule, b.eps) == (0.25, 2, "paper", 1e-6)
    assert (a.optimizer, a.betas, a.clamp, a.momentum, a.batch_size, a.seed) == (
        "lamb", (0.9, 0.99), 10.0, 0.9, 512, 1)
    assert exp.description == "" and exp.source is None


def test_eps_is_resolved_at_load_time_from_optimizer_and_rule():
    exp = parse_experiment("name: e\nrule: paper\narms:\n  - {name: p}\n  - {name: t, optimizer: "
                           "torch_adam}\n  - {name: x, eps: 0.001}\n  - {name: z, eps: 1.0e-12}\n")
    assert [arm.eps for arm in exp.arms] == [1e-6, 1e-8, 0.001, 1e-12]
    assert (Arm(name="a", rule="paper").eps, Arm(name="b", optimizer="torch_adam", rule="paper").eps
            ) == (1e-6, 1e-8)


def test_an_arm_can_reset_eps_to_its_rules_default_with_null():
    exp = parse_experiment("name: e\neps: 0.01\narms:\n  - {name: a}\n  - {name: b, eps: null}\n")
    assert [arm.eps for arm in exp.arms] == [0.01, 1e-8]


def test_yaml_anchors_and_merge_keys_share_settings_between_arms():
    exp = parse_experiment("name: e\narms:\n  - &a {name: a, lr: 0.5, seed: 3}\n"
                           "  - {<<: *a, name: b, lr: 0.25}\n")
    assert [(arm.name, arm.lr, arm.seed) for arm in exp.arms] == [("a", 0.5, 3), ("b", 0.25, 3)]
    assert errors_of("name: e\narms:\n  - {name: a, lr: 0.5, lr: 3}\n") == [
        "error: x.yaml: line 3, column 24: invalid YAML: duplicate key 'lr'"]


def test_experiment_and_arms_are_frozen():
    exp = parse_experiment("name: e\narms: [{name: a}]\n")
    with pytest.raises(ValueError):
        exp.arms[0].lr = 1.0  # type: ignore[misc]
    assert isinstance(exp.arms, tuple)


def test_every_setting_documents_its_meaning():
    assert SETTINGS == tuple(Settings.model_fields)
    for key, field in Settings.model_fields.items():
        assert field.description, key


# --- numbers as YAML spells them -----------------------------------------------------------

def test_exponent_floats_that_pyyaml_reads_as_strings_are_numbers():
    exp = parse_experiment("name: e\nlr: 1e-3\neps: 1e-6\nweight_decay: 5E-4\n"
                           "arms: [{name: a, betas: [9e-1, 0.99]}]\n")
    arm = exp.arms[0]
    assert (arm.lr, arm.eps, arm.weight_decay, arm.betas) == (0.001, 1e-6, 5e-4, (0.9, 0.99))


def test_integral_floats_are_integers_but_fractions_are_not():
    assert parse_experiment("name: e\nepochs: 3.0\narms: [{name: a}]\n").arms[0].epochs == 3
    assert errors_of("name: e\nepochs: 2.5\narms: [{name: a}]\n") == [
        "error: x.yaml: epochs: must be an integer (got 2.5)"]


def test_booleans_are_not_numbers():
    assert errors_of("name: e\nlr: true\narms: [{name: a, epochs: false}]\n") == [
        "error: x.yaml: lr: must be a number, not true/false (got true)",
        "error: x.yaml: arms[0].epochs: must be an integer, not true/false (got false)",
    ]


def test_nan_and_infinity_are_refused():
    assert errors_of("name: e\nlr: .inf\nclamp: .nan\narms: [{name: a}]\n") == [
        "error: x.yaml: lr: must be a finite number (got .inf)",
        "error: x.yaml: clamp: must be a finite number (got .nan)",
    ]


# --- one exact line per problem ------------------------------------------------------------

ARM_KEYS = ("name, optimizer, rule, lr, weight_decay, betas, bias_correction, trust_clip, always_adapt, "
            "exclude_from_decay, exclude_from_trust, grad_clip_norm, fused, eps, clamp, clamp_min, momentum, "
            "trust_coefficient, batch_size, epochs, seed, model, device, warmup_epochs, log_interval, "
            "eval_interval, data_dir, validation, on_divergence, checkpoint_every")


@pytest.mark.parametrize(("text", "expected"), [
    ("name: e\narms:\n  - name: a\n  - name: b\n    lr: -0.1\n",
     ["error: x.yaml: arms[1].lr: must be > 0 (got -0.1)"]),
    ("name: e\nlrr: 0.1\narms: [{name: a}]\n",
     ["error: x.yaml: lrr: unknown key (did you mean lr?); allowed: name, description, expect, tune, arms, "
      "sweep, " + ARM_KEYS.removeprefix("name, ") + " (got 0.1)"]),
    ("name: e\narms: [{name: a, momentun: 0.5}]\n",
     ["error: x.yaml: arms[0].momentun: unknown key (did you mean momentum?); allowed: "
      + ARM_KEYS + " (got 0.5)"]),
    ("name: e\nbetas: [0.9, 1.0]\narms: [{name: a, betas: [-0.1, 0.99]}]\n",
     ["error: x.yaml: betas[1]: must be < 1 (got 1.0)",
      "error: x.yaml: arms[0].betas[0]: must be >= 0 (got -0.1)"]),
    ("name: e\narms: [{name: a, betas: [0.9, 0.99, 0.999]}]\n",
     ["error: x.yaml: arms[0].betas: must be a list of two numbers, e.g. [0.9, 0.99] "
      "(got [0.9, 0.99, 0.999])"]),
    ("name: e\nbatch_size: 0\narms: [{name: a}]\n",
     ["error: x.yaml: batch_size: must be >= 1 (got 0)"]),
    ("name: e\narms: []\n", ["error: x.yaml: arms: must list at least one arm (got [])"]),
    ("name: e\n", ["error: x.yaml: arms: required key is missing (got nothing)"]),
    ("name: e\narms: [{name: a}, {name: b}, {name: a}]\n",
     ["error: x.yaml: arms[2].name: duplicate arm name, arms[0] has it too (got a)"]),
    ("name: e\narms: [{name: lamb}, {name: LAMB}]\n",
     ["error: x.yaml: arms[1].name: arms[0] is lamb: same folder name, case ignored (got LAMB)"]),
    ("name: e\noptimizer: adamw\narms: [{name: a, model: resnet}]\n",
     ["error: x.yaml: optimizer: must be one of adam, lamb, lars, sgd, torch_adam, torch_adamw, nesterov;"
      " did you mean adam? (got adamw)",
      "error: x.yaml: arms[0].model: must be one of lenet, mlp, vit, vit16 (got resnet)"]),
    ("name: e\narms: [{name: a, rule: lars, device: tpu}]\n",
     [f"error: x.yaml: arms[0].rule: must be one of {', '.join(RULES)} (got lars)",
      "error: x.yaml: arms[0].device: must be one of auto, cpu, cuda (got tpu)"]),
    ("name: my exp\narms: [{name: ../up}, lamb]\n",
     ["error: x.yaml: name: must start with a letter or digit and hold only letters, digits, "
      "'.', '_' and '-' (got my exp)",
      "error: x.yaml: arms[0].name: must start with a letter or digit and hold only letters, "
      "digits, '.', '_' and '-' (got ../up)",
      "error: x.yaml: arms[1]: must be a mapping with a name and the settings this arm changes "
      "(got lamb)"]),
    ("name: e\narms: {a: {lr: 1}}\n",
     ["error: x.yaml: arms: must be a list of arms, each a mapping with a name and its settings "
      "(got {a: {lr: 1}})"]),
    ("name: e\neps: -1\nclamp: 0\neval_interval: 0\narms: [{name: a, epochs: '3x'}]\n",
     ["error: x.yaml: eps: must be > 0 (got -1)",
      "error: x.yaml: clamp: must be > 0 (got 0)",
      "error: x.yaml: eval_interval: must be >= 1 (got 0)",
      "error: x.yaml: arms[0].epochs: must be an integer (got 3x)"]),
    ("name: e\n1: 2\narms: [{name: a}]\n", ["error: x.yaml: 1: keys must be strings (got 1)"]),
    ("name: e\nbias_correction: false\narms: [{name: a, bias_correction: false}, {name: b, rule: paper}]\n",
     ["error: x.yaml: arms[0].bias_correction: rule blog has no bias-correction switch (arm a: it always "
      "folds the correction into its step size); drop bias_correction, or pick a rule with the switch: "
      f"{', '.join(SWITCHED_RULES)} (got false)"]),
    ("name: e\narms: [{name: a, optimizer: torch_adam, bias_correction: false}]\n",
     ["error: x.yaml: arms[0].bias_correction: only the LAMB rules have it (arm a is optimizer "
      "torch_adam) (got false)"]),
    ("name: e\narms: [{name: a}]\nexpect: [{claim: c, arm: a, measure: r_max, within_epochs: 1, above: 1}]\n",
     ["error: x.yaml: expect[0]: within_epochs applies to measure min_train_loss only (got {above: 1, "
      "arm: a, claim: c, measure: r_max, within_epoch...)"]),
    ("name: e\narms: [{name: a}]\nexpect: [{claim: c, arm: a, measure: r_max, also: [speed], above: 1}]\n",
     ["error: x.yaml: expect[0].also[0]: must be one of final_accuracy, best_accuracy, "
      "final_val_accuracy, best_val_accuracy, steps_to_target, samples_to_target, final_loss, "
      "min_train_loss, lr_range, diverged, r_max, r_median, r_start_median, r1_final_max, r1_growth_max "
      "(got speed)"]),
    ("name: e\nseed: 4294967296\narms: [{name: a, momentum: 1}]\n",
     ["error: x.yaml: seed: must be <= 4294967295 (got 4294967296)",
      "error: x.yaml: arms[0].momentum: must be < 1 (got 1)"]),
])
def test_invalid_config_gives_exactly_these_lines(text, expected):
    assert errors_of(text) == expected


def test_bias_correction_reaches_the_paper_rule_and_show_config():
    exp = parse_experiment("name: e\nrule: paper\nbias_correction: false\narms: [{name: a}]\n")
    assert exp.arms[0].bias_correction is False
    assert "bias_correction: false" in experiment_to_yaml(exp)
    assert parse_experiment("name: e\narms: [{name: a}]\n").arms[0].bias_correction is True


def test_a_run_folder_of_the_last_version_still_loads():
    """on_nonfinite was renamed on_divergence; config.yaml files written before still load."""
    exp = parse_experiment("name: e\non_nonfinite: continue\n"
                           "arms: [{name: a}, {name: b, on_nonfinite: stop}]\n")
    assert [a.on_divergence for a in exp.arms] == ["continue", "stop"]


def test_every_shipped_claim_quotes_its_source():
    for config in sorted(CONFIGS.glob("*.yaml")):
        for e in load_experiment(config).expect:
            assert e.quote and e.source, (config.name, e.claim)


def test_all_problems_are_reported_at_once():
    lines = errors_of("name: e\nlr: 0\nseed: -1\narms:\n  - {name: a, betas: [1, 1]}\n"
                      "  - {name: a, foo: 1}\n")
    assert len(lines) == 6
    assert all(line.startswith("error: x.yaml: ") for line in lines)


@pytest.mark.parametrize(("text", "expected"), [
    ("name: e\narms:\n  - name: a\n lr: [0.1\n",
     "error: x.yaml: line 4, column 2: invalid YAML: while parsing a block mapping, "
     "expected <block end>, but found '<block mapping start>'"),
    ("name: e\nlr: 0.1\nlr: 0.2\narms: [{name: a}]\n",
     "error: x.yaml: line 3, column 1: invalid YAML: duplicate key 'lr'"),
    ("", "error: x.yaml: the file is empty; a config needs at least name and arms"),
    ("# only a comment\n", "error: x.yaml: the file is empty; a config needs at least name and arms"),
    ("- name: e\n", "error: x.yaml: (top level): must be a mapping of keys to values "
                    "(got [{name: e}])"),
])
def test_file_level_problems(text, expected):
    assert errors_of(text) == [expected]


def test_missing_file_directory_and_binary_file(tmp_path):
    cases = {tmp_path / "nope.yaml": "no such file", tmp_path: "is a directory, not a config file"}
    (tmp_path / "bin.yaml").write_bytes(b"name: \xff\xfe\n")
    cases[tmp_path / "bin.yaml"] = "is not UTF-8 text"
    for path, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_experiment(path)
        assert caught.value.lines == [f"error: {path}: {message}"]
        assert str(caught.value) == f"error: {path}: {message}"


def test_summary_counts_problems():
    with pytest.raises(ConfigError) as caught:
        parse_experiment("name: e\nlr: 0\nepochs: 0\narms: [{name: a}]\n", "c.yaml")
    assert str(caught.value) == "error: c.yaml: 2 problems"
    assert caught.value.exit_code == 2


def test_no_pydantic_text_leaks_and_lines_follow_the_file_order():
    lines = errors_of("name: 3\ndescription: [1]\ndata_dir: 4\nbatch_size: x\narms: [{name: a}]\n")
    assert lines == ["error: x.yaml: name: must be a string (got 3)",
                     "error: x.yaml: description: must be a string (got [1])",
                     "error: x.yaml: data_dir: must be a string (got 4)",
                     "error: x.yaml: batch_size: must be an integer (got x)"]


# --- command-line overrides ----------------------------------------------------------------

BASE = "name: e\nepochs: 3\narms:\n  - {name: adam, optimizer: adam, epochs: 5}\n  - {name: lamb}\n"


def test_shared_override_applies_to_every_arm_even_ones_that_set_it():
    exp = parse_experiment(BASE, overrides=["epochs=1"])
    assert [arm.epochs for arm in exp.arms] == [1, 1]


def test_arm_override_by_name_and_by_index():
    exp = parse_experiment(BASE, overrides=["arms.lamb.lr=0.1", "arms.0.seed=7"])
    assert [(arm.lr, arm.seed, arm.epochs) for arm in exp.arms] == [(0.01, 7, 5), (0.1, 1, 3)]


def test_overrides_apply_left_to_right():
    exp = parse_experiment(BASE, overrides=["arms.lamb.lr=0.1", "lr=0.2"])
    assert [arm.lr for arm in exp.arms] == [0.2, 0.2]
    exp = parse_experiment(BASE, overrides=["lr=0.2", "arms.lamb.lr=0.1"])
    assert [arm.lr for arm in exp.arms] == [0.2, 0.1]


def test_override_values_are_yaml():
    exp = parse_experiment(BASE, overrides=["betas=[0.9,0.999]", "lr=1e-3", "eps=null",
                                            "clamp=null", "name=smoke", "device=cpu"])
    assert exp.name == "smoke"
    for arm in exp.arms:
        assert (arm.betas, arm.lr, arm.eps, arm.clamp, arm.device) == (
            (0.9, 0.999), 0.001, 1e-8, None, "cpu")


def test_arm_names_with_dots_can_be_overridden():
    exp = parse_experiment("name: e\narms: [{name: lamb_lr0.1}]\n", overrides=["arms.lamb_lr0.1.lr=0.5"])
    assert exp.arms[0].lr == 0.5


def test_overrides_do_not_change_the_callers_mapping():
    raw = {"name": "e", "lr": 0.5, "arms": [{"name": "a", "lr": 0.1}]}
    validate_experiment(raw, overrides=["lr=0.2", "arms.a.seed=3"])
    assert raw == {"name": "e", "lr": 0.5, "arms": [{"name": "a", "lr": 0.1}]}


@pytest.mark.parametrize(("token", "message"), [
    ("epochs", "an override must look like key=value, e.g. epochs=1 or arms.lamb.lr=0.1"),
    ("=1", "an override must look like key=value, e.g. epochs=1 or arms.lamb.lr=0.1"),
    ("epoch=1", "unknown key (did you mean epochs?); allowed: name, description, expect, tune, sweep, "
                + ARM_KEYS.removeprefix("name, ")),
    ("arms.adam.lrr=1", "unknown arm key (did you mean lr?); allowed: " + ARM_KEYS),
    ("arms.adamw.lr=1", "no arm adamw; arms are adam, lamb (indexes 0 to 1)"),
    ("arms.2.lr=1", "no arm 2; arms are adam, lamb (indexes 0 to 1)"),
    ("arms.adam=1", "an arm override must look like arms.<name or index>.<key>=value"),
    ("arms=[]", "the arm list cannot be replaced from the command line; to change one arm "
                "write arms.<name or index>.<key>=value"),
    ("lr=[0.1", "cannot read the value: line 1, column 5: invalid YAML: while parsing a flow "
                "sequence, expected ',' or ']', but got '<stream end>'"),
])
def test_bad_override_token_gives_one_line(token, message):
    assert errors_of(BASE, [token], "c.yaml") == [f"error: c.yaml: {token}: {message}"]


def test_arm_override_needs_a_list_of_arms():
    assert errors_of("name: e\narms: {a: 1}\n", ["arms.a.lr=1"]) == [
        "error: x.yaml: arms.a.lr=1: the config has no list of arms to override"]
    assert errors_of("name: e\narms: []\n", ["arms.0.lr=1"]) == [
        "error: x.yaml: arms.0.lr=1: the config's list of arms is empty"]


def test_overridden_values_are_validated_like_the_file():
    assert errors_of(BASE, ["arms.lamb.betas=[0.9]", "seed=-1"]) == [
        "error: x.yaml: arms[1].betas: must be a list of two numbers, e.g. [0.9, 0.99] (got [0.9])",
        "error: x.yaml: seed: must be >= 0 (got -1)",  # a key the file lacked comes last
    ]


# --- YAML round trip -----------------------------------------------------------------------

@pytest.mark.parametrize("stem", sorted(str(p.relative_to(CONFIGS).with_suffix(""))
                                        for p in CONFIGS.rglob("*.yaml")))
def test_resolved_yaml_loads_back_to_an_equal_experiment(stem, tmp_path):
    """Every bundled config, beyond/ too: each run folder's config.yaml is this text, and report,
    resume and reproduce read it back."""
    exp = load_experiment(CONFIGS / f"{stem}.yaml", ["arms.0.eval_interval=50", "data_dir=/d"])
    saved = tmp_path / "resolved.yaml"
    saved.write_text(experiment_to_yaml(exp))
    back = load_experiment(saved)
    assert back.source == saved
    assert back.model_copy(update={"source": exp.source}) == exp
    assert experiment_to_yaml(back) == experiment_to_yaml(exp)



def test_a_record_of_every_optimizer_side_by_side_loads_back(tmp_path):
    """An arm of each optimizer in one config: LAMB's own pieces (trust_clip, …) are not LARS's, and
    the loader refuses them written on a LARS arm; the record must not write them there."""
    exp = parse_experiment("name: e\narms: [{name: a, optimizer: lamb}, {name: b, optimizer: adam},"
                           " {name: c, optimizer: lars}, {name: d, optimizer: lamb, rule: timm}]\n")
    (tmp_path / "c.yaml").write_text(experiment_to_yaml(exp))
    back = load_experiment(tmp_path / "c.yaml")
    assert back.model_copy(update={"source": exp.source}) == exp
    lars = experiment_to_yaml(exp).split("- name: c\n")[1].split("- name: d\n")[0]
    assert "trust_clip" not in lars and "momentum: 0.9" in lars
    old = ("name: e\narms: [{name: c, optimizer: lars, trust_clip: null, always_adapt: true,"
           " grad_clip_norm: null, exclude_from_decay: [], exclude_from_trust: []}]\n")
    assert parse_experiment(old, record=True).arms[0].optimizer == "lars"  # earlier versions' record
    assert errors_of("name: e\narms: [{name: c, optimizer: lars, trust_clip: 1}]\n") == [
        "error: x.yaml: arms[0].trust_clip: only the LAMB rules have it (arm c is optimizer lars) (got 1)"]

def test_a_clamp_on_a_rule_without_one_is_refused_unless_it_is_a_record():
    """timm has no clamp: any clamp written for it would be ignored, so it is an error; in a run
    folder's record of an earlier version (which wrote the default, 10) it changed nothing and
    loads; the record omits it."""
    with pytest.raises(ConfigError) as err:
        parse_experiment("name: e\nrule: timm\narms: [{name: a, clamp: 5}]\n")
    assert "arms[0].clamp: rule timm has no clamp (arm a); trust_clip clips r (got 5)" in str(err.value)
    for value in ("null", "10"):
        with pytest.raises(ConfigError, match=rf"rule timm has no clamp \(arm a\); .* \(got {value}\)"):
            parse_experiment(f"name: e\nrule: timm\narms: [{{name: a, clamp: {value}}}]\n")
    for moot in ("10.0", "10"):
        exp = parse_experiment(f"name: e\nrule: timm\narms: [{{name: a, clamp: {moot}}}]\n", record=True)
        assert exp.arms[0].rule == "timm"
    record = experiment_to_yaml(parse_experiment("name: e\nrule: timm\narms: [{name: a}]\n"))
    assert "clamp" not in record and "  trust_clip: null\n" in record
    paper = parse_experiment("name: e\nrule: paper\narms: [{name: a}]\n")
    assert "  clamp: 10.0\n" in experiment_to_yaml(paper)


def test_resolved_yaml_states_every_setting_of_every_arm():
    text = experiment_to_yaml(parse_experiment("name: e\nrule: paper\narms: [{name: a}]\n"))
    assert text.startswith("name: e\ndescription: ''\narms:\n- name: a\n")
    for key in set(SETTINGS) - {"momentum", "trust_coefficient"}:  # LARS's: a LAMB arm has none
        assert f"\n  {key}: " in text, key
    assert "  eps: 1.0e-06\n" in text and "  betas: [0.9, 0.99]\n" in text


# --- the loader refuses garbage, never crashes ---------------------------------------------

KEYS = st.sampled_from([*SETTINGS, "name", "description", "arms", "lrr"]) | st.text(max_size=6)
SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
           | st.text(max_size=8) | st.sampled_from(["1e-3", "lamb", "paper", "-1", "0.99", ""]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(KEYS | st.integers(0, 3), inner, max_size=5),
    max_leaves=12,
)
VALID = {"name": "e", "lr": 0.01, "betas": [0.9, 0.99], "eps": None, "epochs": 2,
         "arms": [{"name": "adam", "optimizer": "adam"},
                  {"name": "lamb", "rule": "paper", "clamp": None, "weight_decay": 0.01}]}
TOKENS = st.tuples(
    st.sampled_from(["epochs", "lr", "name", "betas", "arms.0.lr", "arms.lamb.seed", "arms.9.lr",
                     "arms.x", "nope", "arms", ""]) | st.text(max_size=8),
    st.sampled_from(["=", ""]),
    st.sampled_from(["1", "0.1", "[0.9, 0.999]", "null", "-1", "[", "{a: 1}", "x y"])
    | st.text(max_size=8),
).map("".join)


def outcome(call):
    """Run a loader call: an Experiment or a ConfigError of one-line messages, nothing else."""
    try:
        result = call()
    except ConfigError as err:
        assert err.lines and all(len(x.splitlines()) == 1 for x in err.lines)
        assert all(x.startswith("error: ") for x in err.lines)
        return err
    assert isinstance(result, Experiment)
    return result


@st.composite
def mutated_configs(draw):
    config = {**VALID, "arms": [dict(arm) for arm in VALID["arms"]]}
    for _ in range(draw(st.integers(1, 4))):
        arms = config.get("arms") if isinstance(config.get("arms"), list) else []
        target = draw(st.sampled_from([config, *(arm for arm in arms if isinstance(arm, dict))]))
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete" and target:
            target.pop(draw(st.sampled_from(list(target))))
        elif action == "replace" and target:
            target[draw(st.sampled_from(list(target)))] = draw(VALUES)
        else:
            target[draw(KEYS)] = draw(VALUES)
    return config


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(raw=VALUES | st.dictionaries(KEYS, VALUES, max_size=6), tokens=st.lists(TOKENS, max_size=3))
def test_random_input_gives_an_experiment_or_a_config_error(raw, tokens):
    outcome(lambda: validate_experiment(raw, "r.yaml", tokens))


@FAST
@given(raw=mutated_configs(), tokens=st.just([]) | st.lists(TOKENS, max_size=3))
def test_mutated_valid_config_gives_an_experiment_or_a_config_error(raw, tokens):
    outcome(lambda: validate_experiment(raw, "m.yaml", tokens))


YAML_LINES = st.sampled_from([
    "name: e", "arms:", "  - name: a", "  - {name: b, lr: 1e-3}", "    lr: 0.1", "lr: [", "\tx: 1",
    "arms: []", "- 1", "betas: [0.9, 1]", "---", "arms: &a [*a]", "x: !!python/object:os.system",
    "? [a]", ": 1", "eps: null", "name: e", "seed: 1", "'", "data_dir: !!binary aGVsbG8=",
])
YAML_TEXT = st.lists(YAML_LINES | st.text(max_size=12), max_size=8).map("\n".join)


@FAST
@given(text=st.text(max_size=60) | YAML_TEXT)
def test_random_text_gives_an_experiment_or_a_config_error(text):
    outcome(lambda: parse_experiment(text, "t.yaml"))


def test_the_valid_seed_of_the_mutations_is_valid():
    exp = validate_experiment(VALID)
    assert [(arm.name, arm.epochs, arm.eps, arm.clamp) for arm in exp.arms] == [
        ("adam", 2, 1e-8, 10.0), ("lamb", 2, 1e-6, None)]


# --- the module boundary (docs/design.md) ------------------------------------------------------

def test_config_imports_no_torch_and_only_yaml_io_imports_yaml():
    code = "import sys, lambexp.config; assert 'torch' not in sys.modules, 'config imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    importers = [p.relative_to(ROOT).as_posix() for p in (ROOT / "lambexp").rglob("*.py")
                 if any(line.strip().startswith(("import yaml", "from yaml"))
                        for line in p.read_text().splitlines())]
    assert importers == ["lambexp/config/yaml_io.py"]


def test_fused_is_true_false_or_auto_and_reaches_lamb():
    import torch

    from lambexp.optim import build_optimizer
    from lambexp.runner.arm import optimizer_args, use_fused

    arms = parse_experiment("name: e\narms: [{name: a}, {name: b, fused: true},"
                            " {name: c, fused: auto}]\n").arms
    assert [a.fused for a in arms] == [False, True, "auto"]
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_fused("auto", cuda, 10, 10) is True
    assert use_fused("auto", cpu, 431_080, 708) is False  # LeNet for 6 epochs: not worth compiling
    assert use_fused("auto", cpu, 25_000_000, 4000) is True  # 1e11 parameter-steps
    assert use_fused("auto", cpu, 25_000_000, 3999) is False
    assert use_fused("auto", cpu, 1_000_000, 50_000) is False
    assert use_fused(True, cpu, 1, 1) is True and use_fused(False, cuda, 10**9, 10**9) is False
    opt = build_optimizer("lamb", [torch.nn.Parameter(torch.ones(3))], **optimizer_args(arms[1], True))
    assert opt.defaults["fused"] is True
    assert errors_of("name: e\nfused: maybe\narms: [{name: a}]\n")[0].startswith("error: x.yaml: fused:")
    assert errors_of("name: e\narms: [{name: a, optimizer: lars, fused: true}]\n") == [
        "error: x.yaml: arms[0].fused: only the LAMB rules have it (arm a is optimizer lars) (got true)"]
