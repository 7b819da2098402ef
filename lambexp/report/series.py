"""One arm's logged numbers for one seed, read back from its run folder (metrics.jsonl, summary.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lambexp.base.files import METRICS_FILE
from lambexp.errors import UserError
from lambexp.folders.layout import Summary, read_jsonl, read_summary


@dataclass
class ArmSeries:
    """Everything the report uses of one arm and seed. x is training samples seen throughout."""

    arm: str
    seed: int
    train_loss: np.ndarray  # (n, 2): samples, loss, every log_interval batches
    test_loss: np.ndarray  # (m, 2): samples, mean test loss, after each epoch
    test_accuracy: np.ndarray  # (m, 2): samples, accuracy in [0, 1]
    trust_steps: np.ndarray  # (T,) samples at each trust log
    names: list[str]  # (L,) parameter names, in parameter order
    r: np.ndarray  # (T, L) trust ratio of each tensor at each log
    r1: np.ndarray  # (T, L) weight-norm part
    r2: np.ndarray  # (T, L) update-norm part
    summary: Summary  # summary.json as written by the run
    folder: Path | None = None  # where it was read from, links resolved (a shared training is one)
    lr: float | None = None  # the arm's learning rate (from its config), for lr_range
    kept_out: list[str] = field(default_factory=list)  # tensors kept out of the trust ratio (r = 1)

    @property
    def diverged(self) -> bool:
        """As the trainer decided it, by the one rule of lambexp.base.divergence (summary.json)."""
        return self.summary.diverged

    @property
    def samples_per_epoch(self) -> int | None:
        """Training samples in one epoch (None in summaries of versions that did not record it)."""
        return self.summary.samples_per_epoch


def _pairs(records: list[dict], tag: str) -> np.ndarray:
    rows = [(r["step"], r["values"][tag]) for r in records
            if r["kind"] == "scalars" and tag in r["values"]]
    return np.array(rows, dtype=float).reshape(-1, 2)


def load_arm(arm_dir: Path, seed: int) -> ArmSeries:
    """Read ``arm_dir``'s metrics.jsonl and summary.json (a finished arm: both must be there)."""
    if not (arm_dir / METRICS_FILE).is_file():
        raise UserError(f"{arm_dir / METRICS_FILE}: missing, though summary.json says the arm finished;"
                        f" delete {arm_dir} and run `lambexp resume` on its run folder to train it again")
    records = read_jsonl(arm_dir / METRICS_FILE)
    trust = [r for r in records if r["kind"] == "trust"]
    names = trust[0]["name"] if trust else []

    def table(key: str) -> np.ndarray:
        return np.array([r[key] for r in trust], dtype=float).reshape(len(trust), len(names))

    return ArmSeries(
        arm=arm_dir.name, seed=seed,
        train_loss=_pairs(records, "train/loss"),
        test_loss=_pairs(records, "test/loss"),
        test_accuracy=_pairs(records, "test/accuracy"),
        trust_steps=np.array([r["step"] for r in trust], dtype=float),
        names=names, r=table("r"), r1=table("r1"), r2=table("r2"),
        summary=read_summary(arm_dir),
        folder=arm_dir.resolve(),
        kept_out=list(trust[0].get("kept_out", [])) if trust else [],
    )
