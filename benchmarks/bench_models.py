"""Each model's training step, side by side in one process: samples/s and the ratio to LeNet's.

Run: ``make bench-models`` (or ``python benchmarks/bench_models.py --rounds 5 --steps 10``).
Workload: one random batch of 512 (the post's batch), forward, NLL loss, backward and a LAMB (blog)
step, on the CPU with torch's threads as they are. Each model takes 2 untimed steps, then the rounds
alternate the models and the medians are shown. docs/measured.md quotes it (the ViTs' cost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lambexp.model import MODELS, build_model  # noqa: E402
from lambexp.optim import build_optimizer  # noqa: E402

BATCH = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round (default 10)")
    args = parser.parse_args()

    torch.manual_seed(1)
    x = torch.randn(BATCH, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    setups = {}
    for name in MODELS:
        model = build_model(name)
        opt = build_optimizer("lamb", list(model.named_parameters()), lr=0.01, betas=(0.9, 0.99), eps=None,
                              weight_decay=0.0, rule="blog", clamp=10.0)
        setups[name] = (model, opt)

    def steps(name: str, n: int) -> float:
        model, opt = setups[name]
        start = time.perf_counter()
        for _ in range(n):
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
        return time.perf_counter() - start

    for name in MODELS:
        steps(name, 2)
    rates: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(args.rounds):
        for name in MODELS:
            rates[name].append(args.steps * BATCH / steps(name, args.steps))
    threads = torch.get_num_threads()
    print(f"batch {BATCH}, {threads} threads, {args.rounds} rounds × {args.steps} steps, medians")
    lenet = statistics.median(rates["lenet"])
    for name, r in rates.items():
        params = sum(p.numel() for p in setups[name][0].parameters())
        print(f"{name:6s} {params / 1e6:6.3f}M parameters  {statistics.median(r):8.0f} samples/s "
              f"(min {min(r):.0f}, max {max(r):.0f})  {lenet / statistics.median(r):5.2f}× LeNet's time")


if __name__ == "__main__":
    main()
