"""Stacked trainings against the same trainings one after another, side by side in one process.

Run: ``make bench-stack`` (or ``python benchmarks/bench_stack.py --members 1 2 4 8 --steps 20``).
Workload: the blog's step (LeNet, batch 512, LAMB blog rule, r/r1/r2 kept on the device) on random
MNIST-shaped batches, each member its own seed and batches. For each N: N members stepped one after
another (N separate models and optimizers, as `--stack off` trains) and as one stack
(lambexp.training.stack), in alternating rounds; prints the median training samples per second over
all members and the ratio. A GPU is used when there is one (``--device``).

``--loop``: the whole path instead, as a person runs it: ``lambexp reproduce`` of N LAMB arms (lr
0.01 × 1.1^i, one epoch of real MNIST, batch 512, logging and evaluation on) with ``--stack N``
against ``--stack off``, in alternating rounds; prints the wall time of each and the ratio.
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
from lambexp.model import build_model  # noqa: E402
from lambexp.optim import Lamb  # noqa: E402
from lambexp.training.stack import Stack  # noqa: E402

BATCH = 512


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


MODEL = "lenet"


def setup(n: int, device: str):
    nets = []
    for i in range(n):
        torch.manual_seed(i + 1)
        nets.append(build_model(MODEL, device))
    x = torch.randn(8192, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (8192,), device=device)
    return nets, x, y


def one_after_another(n: int, steps: int, device: str) -> float:
    nets, x, y = setup(n, device)
    opts = [Lamb(net.named_parameters(), lr=0.01, betas=(0.9, 0.99)) for net in nets]
    idx = torch.randint(0, len(x), (steps, n, BATCH), device=device)
    sync(device)
    t0 = time.perf_counter()
    for t in range(steps):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad(set_to_none=True)
            F.nll_loss(net(x[idx[t, i]]), y[idx[t, i]]).backward()
            opt.step()
    sync(device)
    return n * steps * BATCH / (time.perf_counter() - t0)


def stacked(n: int, steps: int, device: str) -> float:
    nets, x, y = setup(n, device)
    stack = Stack(nets)
    opts = [Lamb(stack.member_params(i), lr=0.01, betas=(0.9, 0.99)) for i in range(n)]
    idx = torch.randint(0, len(x), (steps, n, BATCH), device=device)
    sync(device)
    t0 = time.perf_counter()
    for t in range(steps):
        stack.backward(stack.losses(x[idx[t]], y[idx[t]]))
        for opt in opts:
            opt.step()
    sync(device)
    return n * steps * BATCH / (time.perf_counter() - t0)


def loop(n: int, device: str, stack: int, out: Path) -> float:
    """Seconds for `reproduce` of n one-epoch LAMB arms into a fresh ``out``, with ``stack``."""
    import shutil

    from lambexp.runner.reproduce import reproduce

    arms = "\n".join(f"  - {{name: lr{i}, lr: {0.01 * 1.1 ** i:.6g}}}" for i in range(n))
    config = out.parent / f"stack{n}.yaml"
    config.write_text(f"name: stack{n}\nmodel: {MODEL}\noptimizer: lamb\nrule: blog\nbatch_size: {BATCH}\n"
                      f"epochs: 1\nlog_interval: 30\ndevice: {device}\narms:\n{arms}\n")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    reproduce([config], seeds=1, out=out, say=lambda s: None, stack=stack)
    return time.perf_counter() - t0


def main_loop(args) -> None:
    import tempfile

    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; `reproduce` of N"
          f" LAMB arms, 1 epoch of MNIST, batch {BATCH}; {args.rounds} alternating rounds, median shown")
    print(f"{'members':>7s} {'--stack off s':>14s} {'--stack N s':>12s} {'stacked ×':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.members:
            times = {1: [], n: []}
            for r in range(args.rounds):
                for stack in ((1, n) if r % 2 == 0 else (n, 1)):
                    times[stack].append(loop(n, args.device, stack, Path(tmp) / "out"))
            off, on = statistics.median(times[1]), statistics.median(times[n])
            print(f"{n:7d} {off:14.1f} {on:12.1f} {off / on:9.2f}×")


def main() -> None:
    global BATCH, MODEL
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=BATCH, help="samples per batch (default: the blog's)")
    ap.add_argument("--model", default=MODEL, choices=["lenet", "mlp"])
    ap.add_argument("--loop", action="store_true", help="time `lambexp reproduce --stack N` against"
                    " --stack off on real MNIST instead of the bare step")
    args = ap.parse_args()
    BATCH, MODEL = args.batch, args.model
    if args.loop:
        main_loop(args)
        return
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; {MODEL}, batch {BATCH}, LAMB blog; {args.steps} steps,"
          f" {args.rounds} alternating rounds, median shown")
    print("\nsamples/s over all members")
    print(f"{'members':>7s} {'one after another':>18s} {'stacked':>10s} {'stacked ×':>10s}")
    for n in args.members:
        one_after_another(n, 2, args.device), stacked(n, 2, args.device)  # warm-up
        runs = {"seq": [], "stack": []}
        for r in range(args.rounds):
            order = [("seq", one_after_another), ("stack", stacked)]
            for key, fn in (order if r % 2 == 0 else reversed(order)):
                runs[key].append(fn(n, args.steps, args.device))
        seq, st = statistics.median(runs["seq"]), statistics.median(runs["stack"])
        print(f"{n:7d} {seq:18.0f} {st:10.0f} {st / seq:9.2f}×")


if __name__ == "__main__":
    main()
