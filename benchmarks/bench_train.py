"""Training throughput, side by side in one process: the seed's pipeline vs lambexp's trainer.

Run: ``make bench`` (or ``python benchmarks/bench_train.py --rounds 3 --batches 40``).
Workload: the blog's — LeNet, batch 512, MNIST, the LAMB blog rule, r/r1/r2 logged every 30
batches. Real MNIST only (``lambexp data fetch``): the seed's per-sample transforms are part of
what is measured. One untimed warm-up round first; then the rounds alternate the pipelines and
medians are shown. Also printed: LeNet's training
FLOPs per sample, a matmul peak measured in the same run, and the share of it reached.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_pipeline import seed_samples_per_second  # noqa: E402

from lambexp.data import default_data_dir, load_mnist, verify_mnist  # noqa: E402
from lambexp.model import LeNet, build_model  # noqa: E402
from lambexp.optim import Lamb  # noqa: E402
from lambexp.training.loop import LoopOptions, fit  # noqa: E402
from lambexp.training.malloc import keep_freed_memory  # noqa: E402
from lambexp.training.sinks import JsonlSink, Tee, TensorBoardSink  # noqa: E402

BATCH, LOG_INTERVAL = 512, 30


def real_mnist() -> Path:
    """The verified MNIST folder; without one, exit with a line that says how to get it (synthetic
    tensors would skip the seed's per-sample PIL transforms and flatter it)."""
    folder = default_data_dir()
    if not all(c.ok for c in verify_mnist(folder)):
        sys.exit(f"error: bench needs real MNIST in {folder}; get it with: lambexp data fetch")
    return folder


def lambexp_samples_per_second(n: int, data_dir: Path, log_interval: int = LOG_INTERVAL) -> float:
    """lambexp's loop as `lambexp run` drives it (TensorBoard + JSON-lines sinks), one epoch of n."""
    d = load_mnist(data_dir, "cpu")
    x, y, tx, ty = d.train_x[:n], d.train_y[:n], d.test_x, d.test_y
    torch.manual_seed(1)
    model = build_model("lenet")
    opt = Lamb(model.named_parameters(), lr=0.01, betas=(0.9, 0.99))
    with tempfile.TemporaryDirectory() as tmp, TensorBoardSink(Path(tmp)) as tb, \
            JsonlSink(Path(tmp) / "m.jsonl") as js:
        state = fit(model, opt, (x, y), (tx, ty), epochs=1, seed=1, sink=Tee(tb, js),
                    options=LoopOptions(batch_size=BATCH, log_interval=log_interval))
    return state.samples / state.train_seconds


def flops_per_sample() -> float:
    """Training FLOPs (forward + backward) of LeNet per sample, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = LeNet(), torch.randn(64, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.nll_loss(model(x), torch.zeros(64, dtype=torch.long)).backward()
    return counter.get_total_flops() / 64


def matmul_gflops(size: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=117, help="training batches per measurement")
    args = ap.parse_args()
    n = args.batches * BATCH
    data_dir = real_mnist()
    keep_freed_memory()  # as `lambexp run` does; the seed's loop gains from it as much
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; real MNIST; "
          f"{args.batches} batches of {BATCH} per measurement, 1 warm-up + {args.rounds} rounds")
    measure = {
        "seed pipeline": lambda m=n: seed_samples_per_second(m, data_dir, LOG_INTERVAL),
        "lambexp": lambda m=n: lambexp_samples_per_second(m, data_dir),
        "lambexp, no trust logging": lambda m=n: lambexp_samples_per_second(m, data_dir, 10**9),
    }
    for run in measure.values():  # untimed: first-call costs (kernels, file caches, allocator)
        run(min(n, 10 * BATCH))
    runs: dict[str, list[float]] = {name: [] for name in measure}
    peaks = []  # measured every round: a peak is the best the host did, and it moves with its state
    for r in range(args.rounds):  # the order flips every round, so drift favours no one
        for name in (list(measure) if r % 2 == 0 else list(reversed(measure))):
            runs[name].append(measure[name]())
        peaks.append(matmul_gflops())
    speed = {k: statistics.median(v) for k, v in runs.items()}
    flops, peak = flops_per_sample(), max(peaks)
    limit = peak * 1e9 / flops
    print(f"\n{'pipeline':28s} {'samples/s':>10s} {'× seed':>8s} {'% of limit':>11s}")
    for name, s in speed.items():
        print(f"{name:28s} {s:10.0f} {s / speed['seed pipeline']:7.2f}× {s / limit:10.1%}")
    print(f"\nLeNet training cost {flops / 1e6:.1f} MFLOP/sample; matmul peak {peak:.0f} GFLOP/s (the best"
          f" of {len(peaks)}, one a round: {min(peaks):.0f} to {max(peaks):.0f}); compute limit {limit:.0f}"
          f" samples/s")
    costs = [1 - a / b for a, b in zip(runs["lambexp"], runs["lambexp, no trust logging"])]
    print(f"logging (loss, r/r1/r2 histograms and per-layer scalars) every {LOG_INTERVAL} batches"
          f" costs {statistics.median(costs):.1%} of training time (median of the rounds' paired"
          f" ratios; range {min(costs):.1%} to {max(costs):.1%})")


if __name__ == "__main__":
    main()
