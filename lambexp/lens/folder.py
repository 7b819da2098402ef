"""A watched training's folder read back: its metrics.jsonl's trust records as tables over the union
of the tensors seen (a tensor frozen or added mid-way reads NaN where it was not measured), and each
tensor's layer kind from lens.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lambexp.base.files import METRICS_FILE
from lambexp.errors import UserError
from lambexp.folders.layout import read_jsonl
from lambexp.lens.kinds import kind_of
from lambexp.lens.measure import KEYS

LENS_FILE = "lens.json"


@dataclass
class Watched:
    """What a watched folder holds. x is the optimizer steps taken before each watched step."""

    folder: Path
    steps: np.ndarray  # (T,)
    names: list[str]  # (L,) every tensor measured at least once, in first-seen order
    kinds: dict[str, str]  # name → lambexp.lens.kinds.KINDS
    tables: dict[str, np.ndarray]  # key of KEYS → (T, L), NaN where a tensor was not measured


def read_watched(folder: Path) -> Watched:
    """The trust records of ``folder`` (written by ``lambexp.watch``); a UserError when there are none."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{folder}: not a watched folder (no {METRICS_FILE}); pass the logdir given to"
                        " lambexp.watch")
    records = [r for r in read_jsonl(path) if r.get("kind") == "trust" and "relative_step" in r]
    if not records:
        raise UserError(f"{path}: no watched step recorded yet (lambexp.watch writes at the first"
                        " optimizer step)")
    names = list(dict.fromkeys(n for r in records for n in r["name"]))
    column = {n: j for j, n in enumerate(names)}
    tables = {k: np.full((len(records), len(names)), np.nan) for k in KEYS}
    for t, record in enumerate(records):
        where = [column[n] for n in record["name"]]
        for key in KEYS:
            tables[key][t, where] = np.asarray(record[key], dtype=float)
    try:
        described = json.loads((Path(folder) / LENS_FILE).read_text())["kinds"]
    except (OSError, ValueError, KeyError, TypeError):
        described = {}
    kinds = {n: described.get(n) or kind_of(n, 2) for n in names}
    return Watched(Path(folder), np.array([r["step"] for r in records], dtype=float), names, kinds, tables)
