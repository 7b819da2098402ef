"""`lambexp lens FOLDER` on a watched training of the example transformer: every layer kind found,
the table's medians against the records read as plain JSON, the figures written; bad folders refused
in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from torch import nn

from lambexp.lens.kinds import named_kinds

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "char_transformer.py"


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> Path:
    """The example, run as a user runs it, for 8 steps watched at every one."""
    folder = tmp_path_factory.mktemp("lens") / "w"
    command = [sys.executable, str(EXAMPLE), "--steps", "8", "--every", "1", "--logdir", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"lambexp lens {folder}" in result.stdout
    return folder


def test_kinds_of_a_transformer_by_hand():
    sys.path.insert(0, str(EXAMPLE.parent))
    from char_transformer import CharTransformer

    kinds = named_kinds(CharTransformer(10, d=8, layers=1, heads=2, block=4))
    assert kinds == {
        "tok_emb.weight": "embedding", "pos_emb.weight": "embedding",
        "blocks.0.ln_1.weight": "norm", "blocks.0.ln_1.bias": "bias",
        "blocks.0.ln_2.weight": "norm", "blocks.0.ln_2.bias": "bias",
        "blocks.0.attn.qkv.weight": "attention", "blocks.0.attn.qkv.bias": "bias",
        "blocks.0.attn.proj.weight": "attention", "blocks.0.attn.proj.bias": "bias",
        "blocks.0.mlp.0.weight": "MLP", "blocks.0.mlp.0.bias": "bias",
        "blocks.0.mlp.2.weight": "MLP", "blocks.0.mlp.2.bias": "bias",
        "ln_f.weight": "norm", "ln_f.bias": "bias", "head.weight": "linear", "head.bias": "bias"}
    torch_attention = named_kinds(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
    assert torch_attention["self_attn.in_proj_weight"] == "attention"
    assert torch_attention["linear1.weight"] == "linear" and torch_attention["norm1.weight"] == "norm"


def test_the_table_and_figures(watched, tmp_path):
    result = invoke("lens", watched, "--out", tmp_path / "figures")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (watched / "metrics.jsonl").read_text().splitlines()]
    trust = [r for r in records if r["kind"] == "trust"]
    assert [r["step"] for r in trust] == list(range(8))
    kinds = json.loads((watched / "lens.json").read_text())["kinds"]
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:6]}
    assert set(rows) == {"embedding", "attention", "MLP", "norm", "bias"}
    for kind, row in rows.items():  # the last half of the watched steps: steps 4 … 7
        values = {key: [v for r in trust[4:] for n, v in zip(r["name"], r[key]) if kinds[n] == kind]
                  for key in ("relative_step", "r")}
        assert int(row[1]) == sum(k == kind for k in kinds.values())
        assert row[2] == f"{np.median(values['relative_step']):.3g}"  # printed to 3 significant digits
        assert row[3] == f"{np.median(values['r']):.3g}"
        assert row[4] == ("speed" if np.median(values["r"]) > 1 else "slow")
    for name in ("lens_trust.png", "lens_r_per_tensor.png", "lens_kinds.png"):
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8 watched steps, 54 tensors" in result.output  # 4 blocks × 12 + 2 embeddings, ln_f, head


def test_a_folder_that_is_not_watched_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("lens", tmp_path / "empty")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'empty'}: not a watched folder (no metrics.jsonl); pass the logdir given to"
        " lambexp.watch"]
    result = invoke("lens", tmp_path / "nothing-here")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
