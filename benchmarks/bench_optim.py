"""ms per optimizer step, side by side in one process, as a ratio to torch.optim.Adam(fused=True).

Run: ``make bench-optim`` (or ``python benchmarks/bench_optim.py --rounds 7``). Workloads:
(a) LeNet's 8 tensors, (b) a 144-tensor, 25M-parameter stack of
24 × [Linear 512→1024, Linear 1024→512, LayerNorm 512]. Gradients are fixed random tensors,
so only the optimizer step is timed; each optimizer steps its own copy of the model. The rounds
alternate the optimizers, in the opposite order every other round (so none always runs after the
same neighbour); the median over rounds is shown with the spread (fastest and slowest round).
The untimed first step allocates state and, for the fused rows, compiles: its time is printed apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_lamb import SeedLamb  # noqa: E402

from lambexp.model import LeNet  # noqa: E402
from lambexp.optim import Lamb  # noqa: E402


def stack() -> nn.Module:
    layers = []
    for _ in range(24):
        layers += [nn.Linear(512, 1024), nn.Linear(1024, 512), nn.LayerNorm(512)]
    return nn.Sequential(*layers)


def contenders() -> dict:
    import timm.optim
    import torch_optimizer

    return {
        "torch Adam fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
        "torch Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
        "lambexp Lamb blog": lambda p: Lamb(p, lr=1e-3, weight_decay=0.01, rule="blog"),
        "lambexp Lamb paper": lambda p: Lamb(p, lr=1e-3, weight_decay=0.01, rule="paper"),
        "lambexp Lamb blog fused": lambda p: Lamb(p, lr=1e-3, weight_decay=0.01, fused=True),
        "lambexp Lamb paper fused": lambda p: Lamb(p, lr=1e-3, weight_decay=0.01, rule="paper",
                                                   fused=True),
        "lambexp Lamb blog per-tensor": lambda p: Lamb(p, lr=1e-3, weight_decay=0.01,
                                                       foreach=False),
        "seed Lamb (May 2019)": lambda p: SeedLamb(p, lr=1e-3, weight_decay=0.01),
        "timm Lamb": lambda p: timm.optim.Lamb(p, lr=1e-3, weight_decay=0.01),
        "torch-optimizer Lamb": lambda p: torch_optimizer.Lamb(p, lr=1e-3, weight_decay=0.01),
    }


def measure(make_model, rounds: int, steps: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """ms per step of each contender in each round, rounds interleaved; and each first step's s."""
    setups, first = {}, {}
    for name, make_opt in contenders().items():
        torch.manual_seed(0)
        model = make_model()
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-2
        opt = make_opt(model.parameters())
        t0 = time.perf_counter()
        opt.step()  # warm-up: state allocation, and compilation for the fused rows
        first[name] = time.perf_counter() - t0
        setups[name] = opt
    times: dict[str, list[float]] = {name: [] for name in setups}
    for k in range(rounds):
        order = list(setups.items())
        for name, opt in order if k % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return times, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for label, make_model, steps in [("(a) LeNet, 8 tensors, 431k params", LeNet, 50),
                                     ("(b) 144 tensors, 25M params", stack, 3)]:
        n = sum(p.numel() for p in make_model().parameters())
        rounds, first = measure(make_model, args.rounds, steps)
        ms = {name: statistics.median(ts) for name, ts in rounds.items()}
        base = ms["torch Adam fused"]
        print(f"\n{label} ({n:,} parameters), median of {args.rounds} rounds [fastest, slowest]")
        print(f"{'optimizer':32s} {'ms/step':>9s} {'× Adam fused':>13s} {'spread ms':>17s}")
        for name, t in ms.items():
            spread = f"[{min(rounds[name]):.2f}, {max(rounds[name]):.2f}]"
            print(f"{name:32s} {t:9.2f} {t / base:12.2f}× {spread:>17s}")
        for name in (name for name in ms if "fused" in name and "Lamb" in name):
            print(f"{name}: first step (compiles) {first[name]:.1f} s")


if __name__ == "__main__":
    main()
