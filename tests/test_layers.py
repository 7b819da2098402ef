"""The layers of docs/design.md hold: `lint-imports`, with pyproject.toml's contracts, passes on the
tree as it is, and fails on an import planted in a copy: one going up a layer, one between two
independent packages of a layer, and torch in a torch-free layer (inside a function, where a lazy
import would hide it from a check that only imports the module)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "planted", "broken"), [
    ("lambexp/config/schema.py", "import lambexp.runner.plan",
     "lambexp.config is not allowed to import lambexp.runner"),
    ("lambexp/base/variants.py", "from lambexp.errors import UserError",
     "lambexp.base is not allowed to import lambexp.errors"),
    ("lambexp/report/figures.py", "from lambexp.training.loop import fit",
     "lambexp.report is not allowed to import lambexp.training"),
    ("lambexp/folders/layout.py", "def planted():\n    import torch\n    return torch",
     "lambexp.folders is not allowed to import torch"),
], ids=["up", "below-errors", "sideways", "torch"])
def test_a_planted_import_breaks_a_contract(tmp_path, module, planted, broken):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "lambexp", tree / "lambexp", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    path = tree / module
    path.write_text(path.read_text(encoding="utf-8") + "\n" + planted + "\n", encoding="utf-8")
    done = lint(tree)
    assert done.returncode != 0
    assert broken in done.stdout, done.stdout
