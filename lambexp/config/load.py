"""Reading an experiment: file → YAML → overrides → validation → resolved Experiment; and back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from lambexp.config.measures import match_arms
from lambexp.config.overrides import apply_overrides
from lambexp.config.problems import MISSING, in_file_order, problem, pydantic_problems
from lambexp.config.schema import Arm, Experiment, ExperimentSpec, Header, resolve, uses_lamb_rule
from lambexp.config.sweep import expand, sweep_problems, sweep_tokens
from lambexp.config.yaml_io import YamlSyntaxError, dump_document, parse_document
from lambexp.errors import ConfigError
from lambexp.optim.variants import COMPILED_RULES as FUSED_RULES
from lambexp.optim.variants import VARIANTS

MAX_CONFIG_BYTES = 10**6  # the largest shipped config is 4 kB; 50 MB of YAML took 105 s to refuse


def load_experiment(path: str | Path, overrides: Sequence[str] = (),
                    sweeps: Sequence[str] = ()) -> Experiment:
    """Read, override, validate and resolve the experiment config at ``path``.

    Args:
        path: a YAML file (see configs/ for examples); error lines name it as given.
        overrides: `key=value` tokens applied before validation (see lambexp.config.overrides):
            `epochs=1` sets a shared setting for every arm (also arms that set it themselves),
            `arms.lamb.lr=0.1` or `arms.1.lr=0.1` one arm's; tokens apply left to right.
        sweeps: `KEY=V1,V2,…` tokens (``--sweep``), added to the file's `sweep:` (a key given
            both ways takes the command line's values); the file's `expect:` is dropped, as its
            claims name the arms before the sweep renames them. See lambexp.config.sweep.
    Returns:
        the Experiment, every arm fully resolved (eps filled in when the file leaves it null).
    Raises:
        ConfigError: with one line per problem, every problem found at once.
    """
    source = str(path)
    path = Path(path)
    if path.is_dir():
        raise _error(source, "is a directory, not a config file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise _error(source, f"is {path.stat().st_size / 1e6:.1f} MB; a config is at most"
                                 f" {MAX_CONFIG_BYTES // 10**6} MB of YAML")
        data = path.read_bytes()
    except FileNotFoundError:
        raise _error(source, "no such file") from None
    except OSError as err:
        raise _error(source, f"cannot read it: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(source, "is not UTF-8 text") from None
    return parse_experiment(text, source, overrides, sweeps).model_copy(update={"source": path})


def parse_experiment(text: str, source: str = "<string>", overrides: Sequence[str] = (),
                     sweeps: Sequence[str] = ()) -> Experiment:
    """Like load_experiment, for YAML ``text``; ``source`` names it in error lines."""
    try:
        raw = parse_document(text)
    except YamlSyntaxError as err:
        raise _error(source, f"{err}") from None
    return validate_experiment(raw, source, overrides, sweeps)


def validate_experiment(raw: object, source: str = "<mapping>", overrides: Sequence[str] = (),
                        sweeps: Sequence[str] = ()) -> Experiment:
    """Like load_experiment, for a mapping already read from YAML (plain dicts, lists, scalars)."""
    if raw is None:
        raise _error(source, "the file is empty; a config needs at least name and arms")
    if not isinstance(raw, dict):
        raise _error(source, problem("(top level)", "must be a mapping of keys to values", raw))
    raw, bad_tokens = apply_overrides(_renamed(raw), overrides)
    swept, bad_sweeps = sweep_tokens(sweeps)
    if bad_tokens or bad_sweeps:
        raise _error(source, *bad_tokens, *bad_sweeps)
    if swept:  # the file's claims name its arms as they were before this sweep renames them
        raw["sweep"] = {**(raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}), **swept}
        raw.pop("expect", None)
    if "sweep" in raw:
        problems = sweep_problems(raw["sweep"])
        if problems:
            raise _error(source, *in_file_order(raw, problems))
        raw = expand(raw)
    problems = []
    spec = None
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as err:
        problems += pydantic_problems(err)
    problems += _duplicate_arm_names(raw.get("arms"))
    problems += unknown_arm_references(raw)
    if problems or spec is None:
        raise _error(source, *in_file_order(raw, problems))
    experiment = resolve(spec)
    problems = _rule_conflicts(raw, experiment)
    if problems:
        raise _error(source, *in_file_order(raw, problems))
    return experiment


def _rule_conflicts(raw: dict, experiment: Experiment) -> list[tuple[tuple, str]]:
    """Settings that are valid alone but not together, which would otherwise be silently ignored:
    bias_correction: false (the paper rule's switch) with the blog rule, which folds the correction
    into its step size, or with an optimizer without it; fused: true with an optimizer that has no
    compiled step."""
    out: list[tuple[tuple, str]] = []

    def conflict(index: int, key: str, value: object, message: str) -> None:
        """One line, at the arm's key when the arm wrote it, else at the shared key (once)."""
        loc = ("arms", index, key) if key in raw["arms"][index] else (key,)
        line = problem(f"arms[{index}].{key}" if len(loc) == 3 else key, message, value)
        if (loc, line) not in out:
            out.append((loc, line))

    for index, arm in enumerate(experiment.arms):
        lamb = uses_lamb_rule(arm.optimizer)
        if arm.fused is True and not lamb:
            conflict(index, "fused", True, f"only LAMB's step is compiled (arm {arm.name} is optimizer"
                                           f" {arm.optimizer}); set fused on the adam and lamb arms alone")
        if not arm.bias_correction and not lamb:
            conflict(index, "bias_correction", False,
                     f"only the LAMB rules have it (arm {arm.name} is optimizer {arm.optimizer});"
                     " set bias_correction: false on the paper-rule arms alone")
        elif not arm.bias_correction and arm.rule == "blog":
            conflict(index, "bias_correction", False,
                     f"false needs rule: paper (arm {arm.name} has rule: {arm.rule}, which always"
                     " folds the bias correction into its step size); set rule: paper, or drop"
                     " bias_correction: false")
        elif not arm.bias_correction and VARIANTS[arm.rule].switch is None:
            conflict(index, "bias_correction", False,
                     f"rule {arm.rule} has no bias-correction switch (arm {arm.name}); drop"
                     " bias_correction: false, or pick a rule with one (`lambexp rules`)")
        for key, moot in LAMB_ONLY.items():
            if not lamb and _written(raw, index, key) and getattr(arm, key) != moot:
                conflict(index, key, getattr(arm, key), f"only the LAMB rules have it (arm {arm.name}"
                                                        f" is optimizer {arm.optimizer})")
        if (lamb and VARIANTS[arm.rule].clamp_on == "none" and _written(raw, index, "clamp")
                and arm.clamp != Arm.model_fields["clamp"].default):  # the default: moot (old records)
            conflict(index, "clamp", arm.clamp, f"rule {arm.rule} has no clamp (arm {arm.name});"
                                               " trust_clip clips r")
        if lamb and arm.fused is True and arm.rule not in FUSED_RULES:
            conflict(index, "fused", True, f"fused compiles the {', '.join(FUSED_RULES)} rules alone"
                                           f" (arm {arm.name} has rule: {arm.rule})")
        elif lamb and arm.fused is True and not fused_supports(arm):
            conflict(index, "fused", True, f"the compiled step gives every tensor the ratio, unclipped"
                                           f" (arm {arm.name} sets trust_clip, always_adapt: false or"
                                           " exclude_from_trust); set fused: false")
    return out


def fused_supports(arm) -> bool:
    """Whether the compiled step (lambexp.optim.fast.fused) runs this arm as the rule says: one of its
    rules, every tensor given the ratio, unclipped."""
    return (arm.rule in FUSED_RULES and arm.trust_clip is None and arm.always_adapt
            and not arm.exclude_from_trust)


def _written(raw: dict, index: int, key: str) -> bool:
    """Whether the file itself sets ``key`` for arm ``index`` (in the arm, or shared)."""
    arm = raw["arms"][index]
    return key in raw or (isinstance(arm, dict) and key in arm)


RENAMED = {"on_nonfinite": "on_divergence"}  # old key → new, so run folders of older versions load


def _renamed(raw: dict) -> dict:
    """``raw`` with renamed keys under their new names (top level and each arm), not modified."""
    def rename(mapping):
        if not isinstance(mapping, dict):
            return mapping
        return {RENAMED.get(k, k) if RENAMED.get(k) not in mapping else k: v for k, v in mapping.items()}
    out = rename(raw)
    if isinstance(out.get("arms"), list):
        out["arms"] = [rename(arm) for arm in out["arms"]]
    return out


def _duplicate_arm_names(arms: object) -> list[tuple[tuple, str]]:
    """Arm names become folder names: they must differ, ignoring case (macOS, Windows)."""
    if not isinstance(arms, list):
        return []
    first: dict[str, int] = {}
    out = []
    for index, arm in enumerate(arms):
        name = arm.get("name", MISSING) if isinstance(arm, dict) else MISSING
        if not isinstance(name, str):
            continue
        if name.casefold() in first:
            other = first[name.casefold()]
            message = f"duplicate arm name, arms[{other}] has it too"
            if arms[other]["name"] != name:
                message = f"arms[{other}] is {arms[other]['name']}: same folder name, case ignored"
            out.append((("arms", index, "name"), problem(f"arms[{index}].name", message, name)))
        else:
            first[name.casefold()] = index
    return out


def unknown_arm_references(raw: dict) -> list[tuple[tuple, str]]:
    """(loc, problem) for each `arm`, `above` or `below` naming no arm of the file."""
    arms, expect = raw.get("arms"), raw.get("expect")
    if not isinstance(arms, list) or not isinstance(expect, list):
        return []
    names = [a.get("name") for a in arms if isinstance(a, dict)]
    out = []
    for i, item in enumerate(expect):
        if not isinstance(item, dict):
            continue
        for key in ("arm", "above", "below"):
            value = item.get(key, MISSING)
            named = value if isinstance(value, list) else [value]
            for name in named:
                if isinstance(name, str) and not match_arms(name, names):
                    where = f"expect[{i}].{key}"
                    out.append((("expect", i, key),
                                problem(where, f"no arm of that name (arms: {', '.join(map(str, names))})",
                                        name)))
    return out


def experiment_to_yaml(experiment: Experiment) -> str:
    """The fully resolved experiment as YAML: its header and every arm with every setting.

    load_experiment reads it back to an equal Experiment (apart from ``source``); each run
    saves it beside its results so the settings used are on record.
    """
    data = experiment.model_dump(mode="json", include=set(Header.model_fields) - {"expect"})
    data["arms"] = [{"name": arm.name, **arm.model_dump(mode="json", exclude={"name", *_moot(arm)})}
                    for arm in experiment.arms]
    if experiment.expect:
        data["expect"] = [e.model_dump(mode="json", exclude_none=True) for e in experiment.expect]
    return dump_document(data)


# The LAMB rules' own pieces, and the value an arm of another optimizer resolves each to: what run
# folders of earlier versions recorded for it, which changes nothing and so loads.
LAMB_ONLY = {"trust_clip": None, "always_adapt": True, "grad_clip_norm": None, "exclude_from_decay": (),
             "exclude_from_trust": ()}


def _moot(arm: Arm) -> set[str]:
    """The settings that mean nothing for this arm, left out of its record, which the loader would
    read as a request it refuses: ``clamp`` on a LAMB rule without one (timm, nvlamb, optax, tfa);
    the LAMB rules' own pieces on an arm of another optimizer (LARS, SGD)."""
    if not uses_lamb_rule(arm.optimizer):
        return set(LAMB_ONLY)
    return {"clamp"} if VARIANTS[arm.rule].clamp_on == "none" else set()


def _error(source: str, *problems: str) -> ConfigError:
    """One ConfigError holding every problem as a line `error: <source>: <problem>`."""
    lines = [_printable(f"error: {source}: {p}") for p in problems]
    summary = lines[0] if len(lines) == 1 else f"error: {source}: {len(lines)} problems"
    return ConfigError(summary, lines=lines)


def _printable(line: str) -> str:
    """Keep a line one line: escape line breaks and other control characters (from tokens, keys)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)
