"""The documentation against the code: docs/config.md's tables are what schema.py validates today,
every relative link in README.md and docs/ reaches a file, and the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lambexp.config import reference
from lambexp.config.schema import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)


def test_config_reference_is_current():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert reference.splice(text, reference.render()) == text, (
        "docs/config.md's tables differ from lambexp/config/schema.py: run `make docs`")


def test_config_reference_names_every_setting_with_its_default():
    # by hand, not through render(): a key's row as the reader sees it
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    for key in SETTINGS:
        assert f"| `{key}` |" in text, key
    assert "| `lr` | number > 0 | `0.01` | every arm |" in text
    assert "| `momentum` | number ≥ 0, < 1 | `0.9` | lars, sgd, nesterov |" in text
    assert "| `batch_size` | integer ≥ 1, ≤ 60000 | `512` | every arm |" in text
    assert "| `eps` | number > 0 or null | `null` | adam, lamb, torch_adam, torch_adamw |" in text


def test_a_stale_reference_is_caught():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    stale = text.replace("| `epochs` | integer ≥ 1 | `6` |", "| `epochs` | integer ≥ 1 | `5` |")
    assert stale != text
    assert reference.splice(stale, reference.render()) != stale
    assert reference.splice(stale, reference.render()) == text


def test_splice_refuses_a_document_without_markers():
    with pytest.raises(ValueError, match="markers"):
        reference.splice("# Config keys\n", reference.render())


def test_kind_text_reads_the_schema_annotations():
    from typing import Annotated, Literal

    from pydantic import Field

    assert reference.kind_text(Literal["stop", "continue"]) == "stop, continue"
    assert reference.kind_text(Annotated[float, Field(gt=0)] | None) == "number > 0 or null"
    assert reference.kind_text(tuple[str, ...]) == "list of text"
    assert reference.yaml_text((0.9, 0.99)) == "[0.9, 0.99]"
    assert reference.yaml_text(None) == "null" and reference.yaml_text(False) == "false"


def anchors(page: Path) -> set[str]:
    """The headings of a markdown page as GitHub links them: lower case, punctuation dropped, spaces
    as hyphens ("## Every LAMB side by side" → every-lamb-side-by-side)."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_anchors_are_read_as_github_writes_them():
    assert "every-published-lamb-rule" in anchors(ROOT / "docs" / "rules.md")
    assert "many-trainings-on-this-machine-on-one-gpu-on-ray-on-slurm" in anchors(ROOT / "docs" / "cli.md")


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_heading(page):
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, heading = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target}"
        if heading and path.suffix == ".md":
            assert heading in anchors(path), f"{page.name}: {target}: no such heading"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 210, f"README.md has {len(lines)} lines: move detail into docs/"
    text = "\n".join(lines)
    for page in ("docs/config.md", "docs/cli.md", "docs/results.md", "docs/design.md", "docs/watch.md"):
        assert f"]({page}" in text, page
