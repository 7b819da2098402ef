"""Sweeps: every arm crossed with every value of one or more settings.

    sweep:                      # in a config (or `--sweep lr=0.001,0.01,0.1` on the command line)
      lr: [0.001, 0.01, 0.1]
      weight_decay: [0, 0.01]

makes of each arm one arm per combination, named from the arm and the values: ``lamb`` becomes
``lamb_lr0.001_wd0``, ``lamb_lr0.001_wd0.01``, … The sweep sets its keys in every arm (over what
the arm or the shared settings say). The expansion happens on the mapping read from YAML, before
validation, so every later step (claims naming arms, show-config, run folders) sees plain arms.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from pydantic import ValidationError

from lambexp.base.variants import RANK_FORM
from lambexp.config.problems import problem, pydantic_problems, unknown_key_message
from lambexp.config.schema import SETTINGS, Settings
from lambexp.config.yaml_io import YamlSyntaxError, parse_value

SHORT = {"lr": "lr", "weight_decay": "wd", "batch_size": "b", "betas": "betas", "momentum": "mom",
         "epochs": "ep", "seed": "seed", "warmup_epochs": "warm", "exclude_from_decay": "nodecay",
         "exclude_from_trust": "notrust", "trust_clip": "tclip",
         "grad_clip_norm": "gclip"}  # name part of each swept key


def value_text(value: object) -> str:
    """A value as it appears in an arm's name, which is also a folder name (letters, digits, '.' and
    '-' only): 0.001 → '0.001', 1e-05 → '1e-05', 1e+06 → '1e06', [0.9, 0.99] → '0.9-0.99', true →
    'true', null and [] → 'none', ndim<=1 → 'ndim1', a regular expression with each run of other
    characters as one '-' (conv\\d\\.bias → 'conv-d-.bias')."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | int):
        return f"{value:g}".replace("+", "")
    if isinstance(value, list | tuple):
        return "-".join(value_text(v) for v in value) or "none"
    text = "ndim1" if value == RANK_FORM else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "none"


def name_part(key: str, value: object) -> str:
    """The part of an arm's name that a swept ``key`` = ``value`` adds: lr0.01, tclip-none."""
    text = value_text(value)
    return f"{SHORT.get(key, key)}{'-' if text[:1].isalpha() else ''}{text}"


def sweep_tokens(tokens: Sequence[str]) -> tuple[dict, list[str]]:
    """``KEY=V1,V2,…`` tokens of ``--sweep`` → {key: [values]} (values are YAML), and one problem
    line per bad token. A YAML list, ``KEY=[V1, V2]``, gives values that hold commas themselves
    (``betas=[[0.9, 0.99], [0.9, 0.999]]``)."""
    sweeps, bad = {}, []
    for token in tokens:
        key, sep, text = token.partition("=")
        if not sep or not key or not text:
            bad.append(f"--sweep {token}: expected KEY=V1,V2,… e.g. lr=0.001,0.01,0.1")
            continue
        try:
            whole = text.strip().startswith("[")
            values = parse_value(text) if whole else [parse_value(part.strip()) for part in text.split(",")]
        except YamlSyntaxError as err:
            bad.append(f"--sweep {token}: {err}")
            continue
        sweeps[key.strip()] = values
    return sweeps, bad


def sweep_problems(sweep: object) -> list[tuple[tuple, str]]:
    """(loc, problem) for a `sweep:` that is not a mapping of settings to non-empty lists of values
    each setting accepts."""
    if not isinstance(sweep, dict):
        return [(("sweep",), problem("sweep", "must be a mapping of settings to lists of values,"
                                              " e.g. {lr: [0.001, 0.01]}", sweep))]
    out = []
    for key, values in sweep.items():
        where = f"sweep.{key}"
        if key not in SETTINGS:
            out.append((("sweep", key), problem(where, unknown_key_message(str(key), SETTINGS), values)))
            continue
        if not isinstance(values, list) or not values:
            out.append((("sweep", key), problem(where, "must be a non-empty list of values", values)))
            continue
        read = []  # each value as the arm will hold it (the string "1e-3" from an API caller: 0.001)
        for i, value in enumerate(values):
            try:
                read.append(getattr(Settings.model_validate({key: value}), key))
            except ValidationError as err:
                for _, line in pydantic_problems(err):
                    message = line.split(": ", 1)[1] if ": " in line else line
                    out.append((("sweep", key, i), f"{where}[{i}]: {message}"))
        parts = [name_part(key, v) for v in values]  # as expand names the arms
        if len({repr(v) for v in read}) != len(read):
            out.append((("sweep", key), problem(where, "lists the same value twice", values)))
        elif len(set(parts)) != len(parts):
            twice = next(part for part in parts if parts.count(part) > 1)
            out.append((("sweep", key), problem(where, f"two of its values would give their arms one"
                                                       f" name ({twice}); sweep values that differ in"
                                                       " letters or digits", values)))
    return out


def expand(raw: dict) -> dict:
    """``raw`` with its arms crossed with its `sweep:` (which must be valid), the sweep removed."""
    sweep = raw.get("sweep")
    if not sweep or not isinstance(raw.get("arms"), list):
        return {k: v for k, v in raw.items() if k != "sweep"}
    keys = list(sweep)
    arms = []
    for arm in raw["arms"]:
        if not isinstance(arm, dict):
            arms.append(arm)
            continue
        for combo in itertools.product(*(sweep[k] for k in keys)):
            suffix = "_".join(name_part(k, v) for k, v in zip(keys, combo))
            arms.append({**arm, **dict(zip(keys, combo)), "name": f"{arm.get('name')}_{suffix}"})
    return {**{k: v for k, v in raw.items() if k != "sweep"}, "arms": arms}
