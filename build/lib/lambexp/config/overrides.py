"""Command-line overrides, `key=value` tokens applied to a config's raw mapping before validation.

    epochs=1             a shared setting: set at the top level AND removed from every arm that
                         sets it itself, so it applies to every arm (the usual intent of a
                         quick `epochs=1` or `device=cpu`)
    arms.lamb.lr=0.1     one arm, by name ...
    arms.1.lr=0.1        ... or by index (a name is tried first, then the index)
    name=smoke           a top-level key (name, description)

Values are YAML (`1e-3`, `[0.9, 0.999]`, `null`); tokens apply left to right, so a later
token wins. A bad token is reported as `error: <file>: <token>: <message>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from lambexp.config.problems import unknown_key_message
from lambexp.config.schema import ARM_KEYS, SETTINGS, TOP_KEYS
from lambexp.config.yaml_io import YamlSyntaxError, parse_value

_ARM_FORM = "to change one arm write arms.<name or index>.<key>=value"


def apply_overrides(raw: dict, tokens: Sequence[str]) -> tuple[dict, list[str]]:
    """Return a copy of ``raw`` with ``tokens`` applied, and one '<token>: <message>' per bad token.

    ``raw`` itself is left untouched (its top level, arm list and arm mappings are copied).
    """
    raw = dict(raw)
    if isinstance(raw.get("arms"), list):
        raw["arms"] = [dict(arm) if isinstance(arm, dict) else arm for arm in raw["arms"]]
    problems = []
    for token in tokens:
        problem = _apply(raw, str(token))
        if problem:
            problems.append(f"{token}: {problem}")
    return raw, problems


def _apply(raw: dict, token: str) -> str | None:
    """Apply one token to ``raw`` in place; return what is wrong with it, or None."""
    key, sep, text = token.partition("=")
    if not sep or not key:
        return "an override must look like key=value, e.g. epochs=1 or arms.lamb.lr=0.1"
    try:
        value = parse_value(text)
    except YamlSyntaxError as err:
        return f"cannot read the value: {err}"
    if key.startswith("arms."):
        return _apply_to_arm(raw, key.removeprefix("arms."), value)
    if key == "arms":
        return f"the arm list cannot be replaced from the command line; {_ARM_FORM}"
    if key not in TOP_KEYS:
        return unknown_key_message(key, tuple(k for k in TOP_KEYS if k != "arms"))
    raw[key] = value
    if key in SETTINGS and isinstance(raw.get("arms"), list):
        for arm in raw["arms"]:
            if isinstance(arm, dict):
                arm.pop(key, None)
    return None


def _apply_to_arm(raw: dict, rest: str, value: object) -> str | None:
    selector, sep, key = rest.rpartition(".")  # arm names may hold dots; keys never do
    if not sep or not selector:
        return "an arm override must look like arms.<name or index>.<key>=value"
    if key not in ARM_KEYS:
        return unknown_key_message(key, ARM_KEYS, "arm key")
    arms = raw.get("arms")
    if not isinstance(arms, list):
        return "the config has no list of arms to override"
    names = [arm.get("name") if isinstance(arm, dict) else None for arm in arms]
    if selector in names:
        index = names.index(selector)
    elif selector.isascii() and selector.isdigit() and int(selector) < len(arms):
        index = int(selector)
    elif not arms:
        return "the config's list of arms is empty"
    else:
        listed = ", ".join(str(n) for n in names if isinstance(n, str)) or "none named"
        return f"no arm {selector}; arms are {listed} (indexes 0 to {len(arms) - 1})"
    if not isinstance(arms[index], dict):
        return f"arms[{index}] is not a mapping"
    arms[index][key] = value
    return None
