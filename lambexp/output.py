"""What a person reads on the terminal, in one place: percentages and other numbers as lambexp writes
them, plain-text tables, JSON for scripts, and an optimizer's short name. Torch-free; the CLI, the
runner, the catalog and the progress lines format through it."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence

from lambexp.base.variants import uses_lamb_rule


def pct(x: float | None) -> str:
    """0.9866 → '98.66%'; None → 'n/a'."""
    return "n/a" if x is None else f"{x:.2%}"


def yes_no(x: bool | None) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


def optimizer_text(optimizer: str, rule: str, bias_correction: bool = True) -> str:
    """'lamb (blog)', 'adam (paper, no bias correction)', 'lars': the rule only where it applies."""
    if not uses_lamb_rule(optimizer):
        return optimizer
    return f"{optimizer} ({rule}{'' if bias_correction else ', no bias correction'})"


def table_lines(header: Sequence[str], rows: Sequence[Sequence[object]],
                right: Collection[int] = ()) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks; the columns numbered
    in ``right`` (numbers) flush right, the others left."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    return ["  ".join(str(x).rjust(w) if i in right else str(x).ljust(w)
                      for i, (x, w) in enumerate(zip(row, widths))).rstrip() for row in (header, *rows)]


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                echo: Callable[[str], None] = print, right: Collection[int] = ()) -> None:
    for line in table_lines(header, rows, right):
        echo(line)


def json_text(value: object) -> str:
    """One JSON document, indented; paths and other objects as their str()."""
    return json.dumps(value, indent=2, default=str)
