"""YAML in and out for configs: the only module of lambexp that imports yaml."""

from __future__ import annotations

import re

import yaml


class YamlSyntaxError(Exception):
    """Text that is not one valid YAML document; ``str()`` is one line, with the line number."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error.

    Plain PyYAML keeps the last value silently, so `lr: 0.1` ... `lr: 0.2` would run 0.2.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let the base class report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 reads `1e-3` as a number; PyYAML (YAML 1.1) wants a dot and reads a string, so
# `--sweep lr=1e-3,0.001` would make two arms of one lr. This loader reads both as floats.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    words = [getattr(err, "context", None), getattr(err, "problem", None)]
    problem = ", ".join(str(w) for w in words if w) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return _one_line(f"{where}invalid YAML: {problem}")


def parse_document(text: str) -> object:
    """Parse one YAML document (safe types only, unique keys). Raises YamlSyntaxError."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe types only
    except yaml.YAMLError as err:
        raise YamlSyntaxError(_describe(err)) from None
    except RecursionError:
        raise YamlSyntaxError("invalid YAML: nested too deeply") from None


def parse_value(text: str) -> object:
    """Parse the value of a `key=value` override as YAML: `1e-3`, `[0.9, 0.999]`, `null`, `lamb`."""
    return parse_document(text)


class Block(dict):
    """A mapping that dump_document writes in block style, one key a line, even when none of its
    values is a list (an arm of LARS, which has no betas)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Block, lambda dumper, data: dumper.represent_mapping(
    "tag:yaml.org,2002:map", data, flow_style=False))


def dump_document(data: object) -> str:
    """Block-style YAML with keys in the given order; leaf lists such as betas in flow style."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     allow_unicode=True, width=100)


def flow(value: object, limit: int = 60) -> str:
    """``value`` on one short line, written as in YAML (`true`, `null`, `[0.9, 1.5]`)."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
        text = text.removesuffix("\n").removesuffix("\n...").strip()
    except Exception:  # not a YAML type (an API caller's object): Python's repr will do
        text = repr(value)
    if "\n" in text:  # a string with line breaks: repr keeps it on one line
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
