"""The names of the files in a run folder, shared by the writer (experiment) and the readers (report).

    <run>/config.yaml          resolved config, written before training
    <run>/environment.json     command line, versions, device, git commit
    <run>/<arm>/events.*       TensorBoard
    <run>/<arm>/metrics.jsonl  every logged number, exact
    <run>/<arm>/summary.json   the arm's outcome; present once the arm has finished
"""

import json
import os
from pathlib import Path

from lambexp.errors import UserError

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def read_jsonl(path: Path) -> list[dict]:
    """The records a JsonlSink wrote; a torn last line (a killed process) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that a reader sees the old file or the whole new one, never half of it,
    even after a crash: a temporary name, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_summary(arm_dir: Path) -> dict | None:
    """An arm's summary.json; None when there is none (the arm never finished nor stopped). A file
    that is not a JSON object is a UserError that names it and says what to do."""
    path = Path(arm_dir) / SUMMARY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"{path}: damaged (not the JSON object lambexp writes); delete it and run"
                        f" `lambexp resume` on the run folder to train {Path(arm_dir).name} again")
    return value


def is_finished(arm_dir: Path) -> bool:
    """Whether the arm's summary.json says it finished (a damaged one is a UserError)."""
    return (read_summary(arm_dir) or {}).get("status") == "finished"
