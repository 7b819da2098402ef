"""Issue 29, config and rules: the record says what ran, and every refusal is one line in the
user's words (a rule's missing switch, a key the optimizer does not use, a pattern that matches no
parameter, a bound, a typo), before any run folder is made."""

from __future__ import annotations

import json
import re
import typing

import annotated_types
import pytest
import yaml
from helpers import invoke, run_dirs, summary_json, tiny_config

from lambexp.base.variants import VARIANTS
from lambexp.config import Arm, Settings, experiment_to_yaml, load_experiment, parse_experiment
from lambexp.config.schema import NAME_PATTERN
from lambexp.errors import ConfigError

SWITCHLESS = sorted(name for name, v in VARIANTS.items() if v.switch is None)
SWITCHED = sorted(name for name, v in VARIANTS.items() if v.switch is not None)
LEAKS = ("function-", "functools", "<function", "validator", "pydantic")


def errors_of(text: str, overrides=(), sweeps=()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_experiment(text, "x.yaml", overrides, sweeps)
    return caught.value.lines


def arm_record(text: str, arm: str) -> str:
    """One arm's block of the resolved record (show-config, config.yaml) of config ``text``."""
    record = experiment_to_yaml(parse_experiment(text))
    return record.split(f"- name: {arm}\n")[1].split("\n- name: ")[0]


# --- 6. a rule without a bias-correction switch: the record says what ran ------------------------

def test_the_switchless_rules_are_the_ones_the_issue_names():
    assert SWITCHLESS == ["blog", "optax", "readme2019", "tfa"]


@pytest.mark.parametrize("rule", [*SWITCHLESS, *SWITCHED])
def test_the_record_states_bias_correction_only_for_rules_with_the_switch(rule):
    block = arm_record(f"name: e\narms: [{{name: a, rule: {rule}}}]\n", "a")
    assert ("bias_correction:" in block) == (rule in SWITCHED), block
    assert "  rule: " + rule in block


def test_show_config_of_readme2019_has_no_bias_correction_true(tmp_path):
    (tmp_path / "c.yaml").write_text("name: e\narms: [{name: a, rule: readme2019}]\n")
    shown = invoke("show-config", tmp_path / "c.yaml")
    assert shown.exit_code == 0, shown.output
    assert "bias_correction" not in shown.output and "rule: readme2019" in shown.output


def test_summary_settings_of_readme2019_have_no_bias_correction_true(tiny_mnist_env, tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text(tiny_config(arms=("lamb",), rule="readme2019", expect=""))
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    (run_dir,) = run_dirs(tmp_path / "runs")
    settings = summary_json(run_dir / "lamb")["settings"]
    assert settings["rule"] == "readme2019" and "bias_correction" not in settings
    assert "bias_correction" not in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("rule", SWITCHLESS)
@pytest.mark.parametrize("value", ["true", "false"])
def test_an_explicit_switch_the_rule_lacks_is_refused(rule, value):
    lines = errors_of(f"name: e\narms: [{{name: a, rule: {rule}, bias_correction: {value}}}]\n")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: x.yaml: arms[0].bias_correction: rule {rule} has no"
                               " bias-correction switch (arm a"), lines
    assert lines[0].endswith(f"(got {value})")


@pytest.mark.parametrize("rule", SWITCHED)
def test_rules_with_the_switch_take_it(rule):
    exp = parse_experiment(f"name: e\narms: [{{name: a, rule: {rule}, bias_correction: false}}]\n")
    assert exp.arms[0].bias_correction is False


def old_record(arms: list[dict]) -> str:
    """A config.yaml as earlier versions wrote it: every setting of every arm, including the ones
    the arm does not use (bias_correction: true on readme2019, momentum on LAMB, eps on LARS)."""
    exp = validate_arms(arms)
    dumped = [{"name": a.name, **a.model_dump(mode="json", exclude={"name"})} for a in exp.arms]
    dumped[2]["momentum"] = 0.5  # an adam arm under a shared momentum meant for a LARS arm
    return yaml.safe_dump({"name": "e", "description": "", "arms": dumped}, sort_keys=False)


def validate_arms(arms: list[dict]):
    return parse_experiment(yaml.safe_dump({"name": "e", "arms": arms}))


OLD_ARMS = [{"name": "r", "rule": "readme2019"}, {"name": "t", "rule": "timm"},
            {"name": "b", "optimizer": "adam"}, {"name": "l", "optimizer": "lars"},
            {"name": "x", "optimizer": "torch_adam"}, {"name": "p", "rule": "paper", "clamp": None}]


def test_a_run_folder_written_with_the_old_record_still_loads(tmp_path):
    text = old_record(OLD_ARMS)
    assert "bias_correction: true" in text.split("- name: t")[0]  # readme2019, as it was written
    run_dir = tmp_path / "runs" / "e" / "20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(text)
    (run_dir / "environment.json").write_text("{}")
    back = load_experiment(run_dir / "config.yaml")
    assert back.arms == validate_arms(OLD_ARMS).arms
    # the same text as a config of one's own: the keys the arms cannot use are refused
    (tmp_path / "mine.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(tmp_path / "mine.yaml")
    assert any("arms[0].bias_correction: rule readme2019" in line for line in caught.value.lines)


# --- 8. no pydantic internals in a message -------------------------------------------------------

def bounds(annotation) -> list:
    """The numeric bounds (annotated_types Gt, Ge, Lt, Le) anywhere in a field's annotation, with
    whether they sit inside a tuple (betas)."""
    found = []
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, annotated_types.Gt | annotated_types.Ge | annotated_types.Lt
                      | annotated_types.Le):
            found.append((meta, False))
        for inner in getattr(meta, "metadata", ()):  # FieldInfo inside Annotated
            if isinstance(inner, annotated_types.Gt | annotated_types.Ge | annotated_types.Lt
                          | annotated_types.Le):
                found.append((inner, False))
    inside_tuple = typing.get_origin(annotation) is tuple
    for arg in typing.get_args(annotation):
        found += [(meta, tuple_ or inside_tuple) for meta, tuple_ in bounds(arg)]
    return found


def out_of_bounds(meta) -> object:
    """A value just outside the bound ``meta``."""
    if isinstance(meta, annotated_types.Gt):
        return meta.gt
    if isinstance(meta, annotated_types.Ge):
        return meta.ge - 1
    if isinstance(meta, annotated_types.Lt):
        return meta.lt
    return meta.le + 1


def bad_values() -> list[tuple[str, object]]:
    """(key, a value out of its bounds) for every bounded numeric setting of the schema."""
    out = []
    for key, field in Settings.model_fields.items():
        metas = [(m, False) for m in field.metadata if not isinstance(m, type)]
        metas = [(m, t) for m, t in metas if isinstance(m, annotated_types.Gt | annotated_types.Ge
                                                        | annotated_types.Lt | annotated_types.Le)]
        for meta, in_tuple in metas + bounds(field.annotation):
            value = out_of_bounds(meta)
            pair = (key, [value, 0.5] if in_tuple else value)
            if pair not in out:
                out.append(pair)
    return out


BAD = bad_values()


def test_the_table_of_bad_values_covers_the_bounded_keys():
    keys = {key for key, _ in BAD}
    assert {"lr", "grad_clip_norm", "trust_clip", "clamp", "eps", "betas", "batch_size", "seed",
            "momentum", "eval_interval", "warmup_epochs"} <= keys


@pytest.mark.parametrize(("key", "value"), BAD, ids=[f"{k}={v}" for k, v in BAD])
@pytest.mark.parametrize("where", ["top", "arm"])
def test_a_value_out_of_bounds_is_one_line_naming_the_key(key, value, where):
    shown = json.dumps(value)
    text = (f"name: e\n{key}: {shown}\narms: [{{name: a}}]\n" if where == "top"
            else f"name: e\narms: [{{name: a, {key}: {shown}}}]\n")
    lines = errors_of(text)
    path = key if where == "top" else f"arms[0].{key}"
    assert len(lines) == 1, lines
    assert re.match(rf"error: x\.yaml: {re.escape(path)}(\[\d\])?: must be [<>]=? ", lines[0]), lines
    assert not any(leak in lines[0] for leak in LEAKS), lines


def test_grad_clip_norm_0_reads_as_the_user_wrote_it():
    assert errors_of("name: e\narms: [{name: lamb, grad_clip_norm: 0}]\n") == [
        "error: x.yaml: arms[0].grad_clip_norm: must be > 0 (got 0)"]
    assert errors_of("name: e\narms: [{name: lamb}]\n", overrides=["arms.lamb.grad_clip_norm=0"]) == [
        "error: x.yaml: arms[0].grad_clip_norm: must be > 0 (got 0)"]
    assert errors_of("name: e\ngrad_clip_norm: x\narms: [{name: lamb}]\n") == [
        "error: x.yaml: grad_clip_norm: must be a number, or rule (got x)"]


@pytest.mark.parametrize("text", [
    "exclude_from_trust: [3]", "grad_clip_norm: true", "trust_clip: [1]", "grad_clip_norm: [1]",
    "eps: {a: 1}", "fused: 3", "betas: [x, 0.9]"])
def test_type_errors_leak_nothing_either(text):
    lines = errors_of(f"name: e\n{text}\narms: [{{name: a}}]\n")
    assert len(lines) == 1 and not any(leak in lines[0] for leak in LEAKS), lines
    assert lines[0].startswith(f"error: x.yaml: {text.split(':')[0]}"), lines


# --- 9. a pattern that matches no parameter ------------------------------------------------------

PATTERN_KEYS = [key for key, field in Settings.model_fields.items() if field.default == ()]


def test_the_pattern_keys_are_the_two_lists():
    assert PATTERN_KEYS == ["exclude_from_decay", "exclude_from_trust"]


@pytest.mark.parametrize("key", PATTERN_KEYS)
@pytest.mark.parametrize("pattern", ["ndim<=1x", "ndim<2", "ndim <= 1", "ndim>=2"])
def test_a_misspelt_ndim_form_is_bad_syntax_at_load(key, pattern):
    lines = errors_of(f"name: e\narms: [{{name: a, {key}: ['{pattern}']}}]\n")
    assert lines == [f"error: x.yaml: arms[0].{key}[0]: the one rank form is ndim<=1 (every bias and"
                     " norm weight); as a regular expression this could match no parameter name"
                     f" (got {pattern})"]


@pytest.mark.parametrize("key", PATTERN_KEYS)
def test_a_pattern_matching_no_parameter_of_the_model_is_refused(key):
    assert errors_of(f"name: e\narms: [{{name: a, {key}: [bias, bais]}}]\n") == [
        f"error: x.yaml: arms[0].{key}[1]: matches no parameter of lenet (its parameters:"
        " conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc1.weight, …) (got bais)"]
    assert errors_of(f"name: e\nmodel: mlp\n{key}: [conv]\narms: [{{name: a}}]\n") == [
        f"error: x.yaml: {key}[0]: matches no parameter of mlp (its parameters: fc1.weight,"
        " fc1.bias, fc2.weight, fc2.bias, fc3.weight, …) (got conv)"]


def test_patterns_that_match_are_taken_and_a_shared_one_needs_one_arm_it_matches():
    exp = parse_experiment("name: e\nexclude_from_decay: ['ndim<=1', '^fc', 'conv\\d\\.bias']\n"
                           "exclude_from_trust: [fc3]\n"  # mlp's alone: shared, so it may miss lenet
                           "arms: [{name: a, model: mlp}, {name: b, model: lenet}]\n")
    assert exp.arms[1].exclude_from_trust == ("fc3",)
    assert errors_of("name: e\narms: [{name: a, model: mlp}, {name: b, exclude_from_trust: [fc3]}]\n")


def test_the_parameter_table_is_the_models_own():
    from lambexp.config.schema import MODEL_PARAMETERS
    from lambexp.model import MODELS

    for name, model in MODELS.items():
        real = tuple((n, p.ndim) for n, p in model().named_parameters())
        assert MODEL_PARAMETERS[name] == real, name


def test_validate_and_run_refuse_the_pattern_and_make_no_run_folder(tiny_mnist_env, tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text(tiny_config(arms=("lamb",), exclude_from_trust="[bais]", expect=""))
    checked = invoke("validate", config)
    assert checked.exit_code == 2 and "exclude_from_trust[0]: matches no parameter of lenet" in \
        checked.output, checked.output
    ran = invoke("run", config, "--runs-dir", tmp_path / "runs")
    assert ran.exit_code == 2 and len(ran.output.strip().splitlines()) == 1, ran.output
    assert "exclude_from_trust[0]: matches no parameter of lenet" in ran.output
    assert not (tmp_path / "runs").exists()


# --- smaller items -------------------------------------------------------------------------------

def test_a_typo_in_a_value_gets_did_you_mean():
    (line,) = errors_of("name: e\narms: [{name: a, rule: papr}]\n")
    assert line == (f"error: x.yaml: arms[0].rule: must be one of {', '.join(VARIANTS)};"
                    " did you mean paper? (got papr)")
    (line,) = errors_of("name: e\nrule: nvlam\narms: [{name: a}]\n")
    assert "did you mean nvlamb?" in line


@pytest.mark.parametrize(("optimizer", "rule"), [("torch_adam", None), *(
    (optimizer, rule) for optimizer in ("adam", "lamb") for rule in VARIANTS)])
def test_eps_0_is_refused_where_it_divides(optimizer, rule):
    rule_text = f", rule: {rule}" if rule else ""
    assert errors_of(f"name: e\narms: [{{name: a, optimizer: {optimizer}{rule_text}, eps: 0}}]\n") == [
        "error: x.yaml: arms[0].eps: must be > 0 (got 0)"]


UNUSED = [("lars", "eps", "1.0e-6"), ("lars", "clamp", "5"), ("lars", "bias_correction", "false"),
          ("lars", "betas", "[0.9, 0.9]"), ("sgd", "rule", "paper"), ("lamb", "momentum", "0.5"),
          ("adam", "trust_coefficient", "0.01"), ("torch_adam", "rule", "paper"),
          ("torch_adam", "clamp", "null"), ("lars", "fused", "false"),
          ("sgd", "exclude_from_decay", "[bias]")]


@pytest.mark.parametrize(("optimizer", "key", "value"), UNUSED)
def test_a_key_the_optimizer_does_not_use_is_refused_on_its_arm(optimizer, key, value):
    lines = errors_of(f"name: e\narms: [{{name: a, optimizer: {optimizer}, {key}: {value}}}]\n")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: x.yaml: arms[0].{key}: only "), lines
    assert f"(arm a is optimizer {optimizer})" in lines[0]


@pytest.mark.parametrize(("optimizer", "key", "value"), UNUSED)
def test_a_shared_key_no_arm_uses_is_refused_and_one_some_arm_uses_is_not(optimizer, key, value):
    lines = errors_of(f"name: e\n{key}: {value}\narms: [{{name: a, optimizer: {optimizer}}}]\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: x.yaml: {key}: no arm uses it: "), lines
    user = "lars" if key in ("momentum", "trust_coefficient") else "lamb"
    rule = ", rule: paper" if key in ("clamp", "bias_correction") else ""
    exp = parse_experiment(f"name: e\n{key}: {value}\narms: [{{name: a, optimizer: {optimizer}}},"
                           f" {{name: b, optimizer: {user}{rule}}}]\n")
    fresh = parse_experiment(f"name: e\narms: [{{name: a, optimizer: {optimizer}}}]\n").arms[0]
    assert exp.arms[0] == fresh  # the arm that cannot use it runs, and records, without it
    assert f"  {key}:" not in arm_record(f"name: e\n{key}: {value}\narms: [{{name: a, optimizer:"
                                         f" {optimizer}}}, {{name: b, optimizer: {user}{rule}}}]\n", "a")


def test_a_swept_key_counts_as_shared():
    exp = parse_experiment("name: e\narms: [{name: a, optimizer: lars}, {name: b, rule: paper}]\n",
                           sweeps=["clamp=5,10"])
    assert [a.name for a in exp.arms] == ["a_clamp5", "a_clamp10", "b_clamp5", "b_clamp10"]
    assert exp.arms[0] == exp.arms[1].model_copy(update={"name": "a_clamp5"})
    assert errors_of("name: e\narms: [{name: a}]\n", sweeps=["momentum=0.5,0.6"]) == [
        "error: x.yaml: sweep.momentum: no arm uses it: only lars, sgd and nesterov have it (arm a_mom0.5 is"
        " optimizer lamb) (got [0.5, 0.6])"]
    assert errors_of("name: e\narms: [{name: a}]\n", sweeps=["exclude_from_trust=[[bias], [bais]]"]) == [
        "error: x.yaml: sweep.exclude_from_trust: matches no parameter of lenet (its parameters:"
        " conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc1.weight, …) (got bais)"]


@pytest.mark.parametrize(("sweep", "names"), [
    ("exclude_from_decay=[[bias], ['ndim<=1'], [], ['conv\\d\\.bias', '^fc']]",
     ["a_nodecay-bias", "a_nodecay-ndim1", "a_nodecay-none", "a_nodecay-conv-d-.bias-fc"]),
    ("exclude_from_trust=[['ndim<=1'], [conv1]]", ["a_notrust-ndim1", "a_notrust-conv1"]),
    ("trust_clip=[null, 1, 0.5]", ["a_tclip-none", "a_tclip1", "a_tclip0.5"]),
    ("lr=[1.0e+6, 0.01]", ["a_lr1e06", "a_lr0.01"]),
])
def test_swept_values_make_valid_distinct_readable_arm_names(sweep, names):
    exp = parse_experiment("name: e\narms: [{name: a}]\n", sweeps=[sweep])
    got = [arm.name for arm in exp.arms]
    assert got == names
    assert all(re.match(NAME_PATTERN, name) for name in got) and len(set(got)) == len(got)


def test_two_values_that_would_share_an_arm_name_are_refused():
    lines = errors_of("name: e\narms: [{name: a}]\n", sweeps=["exclude_from_decay=[['^fc'], [fc]]"])
    assert len(lines) == 1 and lines[0].startswith("error: x.yaml: sweep.exclude_from_decay: "), lines


def test_rules_json_gives_numbers_as_numbers():
    result = invoke("rules", "--json")
    assert result.exit_code == 0, result.output
    by_rule = {row["rule"]: row for row in json.loads(result.output)}
    assert by_rule["paper"]["eps"] == 1e-6 and by_rule["blog"]["eps"] == 1e-8
    assert by_rule["paper"]["betas"] == [0.9, 0.999]
    assert by_rule["timm"]["grad clip"] == 1.0 and by_rule["blog"]["grad clip"] is None
    table = invoke("rules")
    assert "1e-06" in table.output and "global 1" in table.output


def test_arms_are_built_straight_from_the_schema_too():
    """Arm(...) resolves like a config: a setting its optimizer does not use takes its default."""
    assert Arm(name="a", optimizer="lamb", momentum=0.5).momentum == 0.9
    assert Arm(name="a", optimizer="lars", eps=1e-3).eps == Arm(name="b", optimizer="lars").eps
