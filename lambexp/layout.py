"""The names of the files in a run folder, shared by the writer (experiment) and the readers (report).

    <run>/config.yaml          resolved config, written before training
    <run>/environment.json     command line, versions, device, git commit
    <run>/<arm>/events.*       TensorBoard
    <run>/<arm>/metrics.jsonl  every logged number, exact
    <run>/<arm>/summary.json   the arm's outcome; present once the arm has finished
"""

import json
from pathlib import Path

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
