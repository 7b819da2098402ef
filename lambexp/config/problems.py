"""A config's problems as lines: `error: <file>: <key path>: <message> (got <value>)`.

pydantic's errors (multi-line text, `loc` tuples) are rewritten here into that shape.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import ValidationError

from lambexp.config.expect import Expectation
from lambexp.config.schema import ARM_KEYS, NAME_RULE, PATTERN_KEYS, TOP_KEYS
from lambexp.config.tune import Tune
from lambexp.config.yaml_io import flow

EXPECT_KEYS: tuple[str, ...] = tuple(Expectation.model_fields)
TUNE_KEYS: tuple[str, ...] = tuple(Tune.model_fields)
# The names a key path holds: the config's keys. pydantic's loc holds more, the member of a union it
# tried (`function-after[…]`, `literal['rule']`, `str`), which the user never wrote.
_KEYS = frozenset({*TOP_KEYS, *ARM_KEYS, *EXPECT_KEYS, *TUNE_KEYS})
# Errors of a value of the right kind that breaks a bound: in a union, the member the user meant.
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
           "value_error", "string_too_long", "string_pattern_mismatch")

MISSING = object()  # "got" for a key that is not there at all
_LISTS = ("arms", "betas", "expect", "between", "also", *PATTERN_KEYS,  # items addressed by [index]
          "lr", "lr_scale", "warmup_epochs")  # (tune's grids)

_MESSAGES = {  # pydantic error type → our message; {…} are filled from the error's ctx
    "missing": "required key is missing",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "string_unicode": "must be a string",
    "string_pattern_mismatch": NAME_RULE,
    "string_too_long": "must be at most {max_length} characters",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "invalid_key": "keys must be strings",
}
_BY_KEY = {  # clearer words for type errors on particular keys
    ("arms", "tuple_type"): "must be a list of arms, each a mapping with a name and its settings",
    ("arms", "model_type"): "must be a mapping with a name and the settings this arm changes",
}


def key_path(loc: Iterable[object]) -> str:
    """('arms', 1, 'betas', 0) → 'arms[1].betas[0]'; ('lr',) → 'lr'."""
    out, parent = "", None
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool) and parent in _LISTS:
            out += f"[{part}]"
            parent = None
        else:
            out += f".{part}" if out else str(part)
            parent = part
    return out


def problem(where: str, message: str, value: object = MISSING) -> str:
    """'<key path>: <message> (got <value>)'; the loader puts 'error: <file>: ' in front."""
    got = "nothing" if value is MISSING else flow(value)
    return f"{where}: {message} (got {got})"


def closest(word: object, allowed: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The allowed word that ``word`` most likely misspells, if any is close (difflib's ratio)."""
    close = difflib.get_close_matches(str(word), list(allowed), n=1, cutoff=cutoff)
    return close[0] if close else None


def unknown_key_message(key: object, allowed: tuple[str, ...], what: str = "key") -> str:
    """'unknown key (did you mean lr?); allowed: a, b, c'."""
    close = closest(key, allowed)
    hint = f" (did you mean {close}?)" if close else ""
    return f"unknown {what}{hint}; allowed: {', '.join(allowed)}"


def _number(value: object) -> object:
    """A bound as written in a config: 0 rather than pydantic's 0.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _message(err: dict) -> str:
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = {"arms": ARM_KEYS, "expect": EXPECT_KEYS}.get(loc[0]) if len(loc) == 3 else None
        allowed = TUNE_KEYS if loc[0] == "tune" else allowed
        return unknown_key_message(loc[-1], allowed or TOP_KEYS)
    if kind == "literal_error":  # ctx: "'adam', 'lamb' or 'sgd'"
        allowed = _literals(err)
        # a value is a short word: only a near miss is a typo (papr, not resnet for lenet)
        close = closest(err.get("input"), allowed, 0.8) if isinstance(err.get("input"), str) else None
        return f"must be one of {', '.join(allowed)}" + (f"; did you mean {close}?" if close else "")
    if kind == "value_error" and "error" in ctx:  # our own validators' words
        return str(ctx["error"])
    last = next((p for p in reversed(loc) if isinstance(p, str)), None)
    template = _BY_KEY.get((last, kind)) or _MESSAGES.get(kind)
    if template is None:
        return " ".join(str(err["msg"]).split()).lower()
    try:
        return template.format(**{k: _number(v) for k, v in ctx.items()})
    except (KeyError, IndexError):
        return template


def _literals(err: dict) -> list[str]:
    """The values a literal_error allows, as a config writes them."""
    return err["ctx"]["expected"].replace("'", "").replace(" or ", ", ").split(", ")


def _user_loc(err: dict) -> tuple:
    """The error's loc as the user's key path: the config's keys and list indexes only."""
    loc = err["loc"]
    own = err["type"] in ("extra_forbidden", "invalid_key")  # loc ends with the user's own key
    return tuple(part for i, part in enumerate(loc)
                 if not isinstance(part, str) or part in _KEYS or (own and i == len(loc) - 1))


def _union_message(errors: list[dict]) -> str:
    """One message for the errors of each member of a union (grad_clip_norm: a number > 0, rule or
    null): a bound the value broke, else every kind of value it could have been."""
    broken = [err for err in errors if err["type"] in _BOUNDS]
    if broken:
        return _message(broken[0])
    kinds = []
    for err in errors:
        kind = ", ".join(_literals(err)) if err["type"] == "literal_error" else \
            _message(err).removeprefix("must be ")
        if kind not in kinds:
            kinds.append(kind)
    return "must be " + ", or ".join(kinds)


def pydantic_problems(error: ValidationError) -> list[tuple[tuple, str]]:
    """Every problem pydantic found as (loc, one-line problem): one per key the user wrote, however
    many members of a union pydantic tried on it."""
    by_loc: dict[tuple, list[dict]] = {}
    for err in error.errors():
        loc = _user_loc(err)
        by_loc.setdefault(loc, []).append({**err, "loc": loc})
    out = []
    for loc, errors in by_loc.items():
        err, kind = errors[0], errors[0]["type"]
        value = MISSING if kind == "missing" else err.get("input", MISSING)
        message = _message(err) if len(errors) == 1 else _union_message(errors)
        if kind == "invalid_key":  # loc ends with the offending key itself
            value = loc[-1]
            if isinstance(err.get("input"), bool):  # YAML 1.1: unquoted on, off, yes, no are booleans
                message += "; YAML reads on, off, yes and no as true and false: quote the key ('on')"
                value, loc = err["input"], loc[:-1]
        out.append((loc, problem(key_path(loc) or "(top level)", message, value)))
    return out


def in_file_order(raw: object, located: list[tuple[tuple, str]]) -> list[str]:
    """The problems sorted as their keys appear in the file (pydantic sorts by field order)."""
    return [text for _, text in sorted(located, key=lambda item: _position(raw, item[0]))]


def _position(raw: object, loc: tuple) -> list[int]:
    """Where ``loc`` points in ``raw``: the index of each key or item on the way (absent: last)."""
    out, node = [], raw
    for part in loc:
        keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(
            node, list) else []
        index = next((i for i, key in enumerate(keys) if key == part), len(keys))
        out.append(index)
        node = node[keys[index]] if index < len(keys) else None
    return out
