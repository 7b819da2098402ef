"""Reading an experiment: file → YAML → overrides → validation → resolved Experiment; and back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from lambexp.base.files import CONFIG_FILE, ENVIRONMENT_FILE
from lambexp.base.measures import match_arms
from lambexp.base.variants import LAMB_OPTIMIZERS, VARIANTS, pattern_matches
from lambexp.config.overrides import apply_overrides
from lambexp.config.problems import MISSING, in_file_order, problem, pydantic_problems
from lambexp.config.schema import (
    MODEL_PARAMETERS,
    PATTERN_KEYS,
    SETTINGS,
    USED_BY,
    Arm,
    Experiment,
    ExperimentSpec,
    Header,
    resolve,
    unused_settings,
    uses,
)
from lambexp.config.sweep import expand, sweep_problems, sweep_tokens
from lambexp.config.yaml_io import Block, YamlSyntaxError, dump_document, parse_document
from lambexp.errors import ConfigError

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
        A run folder's record (``is_run_record``) loads as a record: what ran, as lambexp of
        that day wrote it (see ``validate_experiment``).
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
    return parse_experiment(text, source, overrides, sweeps, record=is_run_record(path)).model_copy(
        update={"source": path})


def is_run_record(path: Path) -> bool:
    """Whether ``path`` is a run folder's record: its config.yaml, beside its environment.json."""
    return path.name == CONFIG_FILE and (path.parent / ENVIRONMENT_FILE).is_file()


def parse_experiment(text: str, source: str = "<string>", overrides: Sequence[str] = (),
                     sweeps: Sequence[str] = (), *, record: bool = False) -> Experiment:
    """Like load_experiment, for YAML ``text``; ``source`` names it in error lines."""
    try:
        raw = parse_document(text)
    except YamlSyntaxError as err:
        raise _error(source, f"{err}") from None
    return validate_experiment(raw, source, overrides, sweeps, record=record)


def validate_experiment(raw: object, source: str = "<mapping>", overrides: Sequence[str] = (),
                        sweeps: Sequence[str] = (), *, record: bool = False) -> Experiment:
    """Like load_experiment, for a mapping already read from YAML (plain dicts, lists, scalars).

    ``record``: the mapping is a run's record (experiment_to_yaml), perhaps of an earlier version,
    which wrote every setting of every arm: a setting the arm does not use loads as its default
    (as it ran), and patterns are not matched again (the run took them as they were)."""
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
    sweep = dict(raw["sweep"]) if isinstance(raw.get("sweep"), dict) else {}  # expand removes it
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
    problems = []
    problems += tune_problems(experiment) + clamp_problems(experiment)
    if not record:
        problems += unused_keys(raw, experiment, sweep)
        problems += unmatched_patterns(raw, experiment, sweep)
    if problems:
        raise _error(source, *in_file_order(raw, problems))
    return experiment


def clamp_problems(experiment: Experiment) -> list[tuple[tuple, str]]:
    """φ's lower bound above its upper one would clip every ‖w‖ to a point: refused where it loads."""
    return [(("arms", i, "clamp_min"), f"arms[{i}].clamp_min: must be at most clamp ({arm.clamp:g}) (got"
                                       f" {arm.clamp_min:g})")
            for i, arm in enumerate(experiment.arms)
            if arm.clamp_min is not None and arm.clamp is not None and arm.clamp_min > arm.clamp]


def tune_problems(experiment: Experiment) -> list[tuple[tuple, str]]:
    """`tune:` picks on validation accuracy: every arm must hold out validation images, so that the
    test set never chooses."""
    if experiment.tune is None:
        return []
    lacking = [arm.name for arm in experiment.arms if not arm.validation]
    if not lacking:
        return []
    return [(("tune",), f"tune: picks on validation accuracy, and {', '.join(lacking)} hold"
                        f"{'s' * (len(lacking) == 1)} out no images; set validation: N (e.g. 5000),"
                        " so that the test set never chooses")]


def unused_keys(raw: dict, experiment: Experiment, swept: dict) -> list[tuple[tuple, str]]:
    """(loc, problem) for each setting the file writes where nothing reads it, which would otherwise
    be silently ignored (schema.USED_BY, variants.RULE_SWITCHES): on an arm that does not use it; shared
    (or swept) when no arm uses it. A shared setting some arms use is theirs: the others run, and
    record, without it."""
    out = []
    for index, arm in enumerate(experiment.arms):
        for key in unused_settings(arm.optimizer, arm.rule):
            if _written_by_arm(raw, index, key, swept):
                out.append((("arms", index, key),
                            problem(f"arms[{index}].{key}", why_unused(arm, key), raw["arms"][index][key])))
    for key in SETTINGS:
        shared = key in raw or key in swept
        if shared and not any(uses(arm.optimizer, arm.rule, key) for arm in experiment.arms):
            loc, value = ((key,), raw[key]) if key in raw else (("sweep", key), swept[key])
            where = key if len(loc) == 1 else f"sweep.{key}"
            out.append((loc, problem(where, f"no arm uses it: {why_unused(experiment.arms[0], key)}",
                                     value)))
    return out


def why_unused(arm: Arm, key: str) -> str:
    """Why ``arm`` does not read setting ``key``, in the user's words."""
    if arm.optimizer not in USED_BY.get(key, (arm.optimizer,)):
        return f"only {_users(key)} have it (arm {arm.name} is optimizer {arm.optimizer})"
    return VARIANTS[arm.rule].without(key, f"arm {arm.name}")


def _users(key: str) -> str:
    """The optimizers that read ``key``: 'the LAMB rules', 'the LAMB rules, torch_adam and
    torch_adamw', 'lars, sgd and nesterov'."""
    users = USED_BY[key]
    names = [name for name in users if name not in LAMB_OPTIMIZERS]
    if set(LAMB_OPTIMIZERS) <= set(users):
        names.insert(0, "the LAMB rules")
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def unmatched_patterns(raw: dict, experiment: Experiment, swept: dict) -> list[tuple[tuple, str]]:
    """(loc, problem) for each parameter-name pattern that picks no parameter of the model it is
    for, which would otherwise train as if unset: an arm's own pattern, its model's; a shared (or
    swept) one, any model of the arms that take it."""
    models: dict[tuple, list[str]] = {}  # (loc, key path, pattern) → the models of the arms taking it
    for index, arm in enumerate(experiment.arms):
        for key in PATTERN_KEYS:
            if not uses(arm.optimizer, arm.rule, key):
                continue
            for i, pattern in enumerate(getattr(arm, key)):
                if key in swept:
                    place = (("sweep", key), f"sweep.{key}")
                elif _written_by_arm(raw, index, key, swept):
                    place = (("arms", index, key, i), f"arms[{index}].{key}[{i}]")
                else:
                    place = ((key, i), f"{key}[{i}]")
                models.setdefault((*place, pattern), []).append(arm.model)
    return [(loc, problem(where, _matches_none(names[0]), pattern))
            for (loc, where, pattern), names in models.items()
            if not any(pattern_matches(pattern, name, ndim)
                       for model in names for name, ndim in MODEL_PARAMETERS[model])]


def _matches_none(model: str, shown: int = 5) -> str:
    names = [name for name, _ in MODEL_PARAMETERS[model]]
    listed = ", ".join(names[:shown]) + (", …" if len(names) > shown else "")
    return f"matches no parameter of {model} (its parameters: {listed})"


def _written_by_arm(raw: dict, index: int, key: str, swept: dict) -> bool:
    """Whether arm ``index`` itself sets ``key`` (a sweep sets its keys in every arm, as shared)."""
    arm = raw["arms"][index]
    return isinstance(arm, dict) and key in arm and key not in swept


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
    saves it beside its results so the settings used are on record. A setting the arm does not
    use (schema.unused_settings: bias_correction on a rule without the switch, momentum on LAMB,
    eps on LARS, …) is left out: it did not take part.
    """
    data = experiment.model_dump(mode="json", include=set(Header.model_fields) - {"expect", "tune"})
    if experiment.tune is not None:
        data["tune"] = experiment.tune.model_dump(mode="json", exclude_none=True)
    data["arms"] = [Block(name=arm.name, **arm.model_dump(mode="json", exclude={
        "name", *unused_settings(arm.optimizer, arm.rule)})) for arm in experiment.arms]
    if experiment.expect:
        data["expect"] = [e.model_dump(mode="json", exclude_none=True) for e in experiment.expect]
    return dump_document(data)


def _error(source: str, *problems: str) -> ConfigError:
    """One ConfigError holding every problem as a line `error: <source>: <problem>`."""
    lines = [_printable(f"error: {source}: {p}") for p in problems]
    summary = lines[0] if len(lines) == 1 else f"error: {source}: {len(lines)} problems"
    return ConfigError(summary, lines=lines)


def _printable(line: str) -> str:
    """Keep a line one line: escape line breaks and other control characters (from tokens, keys)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)
