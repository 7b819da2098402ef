"""What lambexp.watch costs a training: step time and peak memory, watched against unwatched.

Run: ``make bench-watch`` (or ``python benchmarks/bench_watch.py --rounds 5``). Two workloads on the
CPU: the post's LeNet at batch 512, and a GPT-shaped transformer of ≥ 10M parameters
(examples/char_transformer.py) at 8 windows of 64 characters, both with AdamW.

Step time: one process holds two identical copies of the model and optimizer; each round trains
``--steps`` steps of each, one watched (every ``--every``) and one not, alternating which goes first,
and the median over rounds of the time per whole training step (forward, backward, optimizer step,
and the lens's work at its watched steps) is compared; glibc's malloc keeps what it frees there
(lambexp/training/malloc.py), as in lambexp's own trainings, so that page faults do not drown the
difference. The memory children keep what they free too: the resident set then moves only with
what is live. Peak memory: a fresh process per variant trains
the same steps and reports how far its resident set rose above where it started (Linux only); the
difference from unwatched is set against the parameters' own bytes (the lens holds one copy of them
during a watched step, nothing otherwise), beside a control that holds one copy throughout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from char_transformer import VOCAB, CharTransformer  # noqa: E402

import lambexp  # noqa: E402
from lambexp.model import LeNet  # noqa: E402
from lambexp.training.malloc import keep_freed_memory  # noqa: E402


def workload(name: str):
    """(model, a function giving the loss of one batch) with a fixed seed."""
    torch.manual_seed(0)
    if name == "lenet":
        model = LeNet()
        x, y = torch.randn(512, 1, 28, 28), torch.randint(0, 10, (512,))  # (512, 1, 28, 28)
        return model, lambda m: nn.functional.cross_entropy(m(x), y)
    model = CharTransformer(VOCAB, d=384, layers=6, heads=6, block=64)
    idx, target = torch.randint(0, VOCAB, (8, 64)), torch.randint(0, VOCAB, (8, 64))  # (B, T)
    return model, lambda m: nn.functional.cross_entropy(m(idx).flatten(0, 1), target.flatten())


def train(model: nn.Module, optimizer, loss_of, steps: int) -> float:
    """Seconds for ``steps`` whole training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_of(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def step_times(name: str, rounds: int, steps: int, every: int) -> dict[str, list[float]]:
    """ms per step of each variant in each round, the order alternating between rounds."""
    copies = {}
    for variant in ("unwatched", "watched"):
        model, loss_of = workload(name)
        copies[variant] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), loss_of)
    for model, optimizer, loss_of in copies.values():
        train(model, optimizer, loss_of, 2)  # untimed: allocate the optimizer state
    times: dict[str, list[float]] = {v: [] for v in copies}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(rounds):
            for variant in (("unwatched", "watched") if k % 2 == 0 else ("watched", "unwatched")):
                model, optimizer, loss_of = copies[variant]
                if variant == "watched":
                    with lambexp.watch(optimizer, model, logdir=Path(tmp) / f"round{k}", every=every):
                        seconds = train(model, optimizer, loss_of, steps)
                else:
                    seconds = train(model, optimizer, loss_of, steps)
                times[variant].append(1000 * seconds / steps)
    return times


def peak_memory(name: str, variant: str, steps: int, every: int) -> dict:
    """Run in a fresh process: the peak resident set while training ``steps`` steps, above the
    resident set at their start (Linux's VmHWM, reset through /proc/self/clear_refs after two untimed
    steps have built the optimizer's state), and the parameters' bytes. ``held``, the control:
    unwatched, with a copy of the parameters made at the start and held throughout (what a lens that
    kept the last weights between steps would cost), to show that the measure sees one copy."""
    model, loss_of = workload(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train(model, optimizer, loss_of, 2)
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from the current RSS
    start = _status_kib("VmRSS")
    held = [p.detach().clone() for p in model.parameters()] if variant == "held" else []  # noqa: F841
    with tempfile.TemporaryDirectory() as tmp:
        if variant == "watched":
            with lambexp.watch(optimizer, model, logdir=Path(tmp) / "w", every=every):
                train(model, optimizer, loss_of, steps)
        else:
            train(model, optimizer, loss_of, steps)
    return {"peak_kib": _status_kib("VmHWM") - start,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def _status_kib(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


REPEATS = 3  # fresh processes per memory variant


def child_memory(name: str, variant: str, steps: int, every: int) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--model", name, "--steps", str(steps),
               "--every", str(every)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    peak, params = out.stdout.split()
    return {"peak_kib": int(peak), "param_bytes": int(params)}


def report(name: str, rounds: int, steps: int, every: int, what: str) -> None:
    n = sum(p.numel() for p in workload(name)[0].parameters())
    print(f"\n{name}: {n / 1e6:.2f}M parameters, AdamW, {rounds} rounds of {steps} steps, every={every}")
    if what in ("time", "both"):
        report_time(name, rounds, steps, every)
    if what in ("memory", "both"):
        report_memory(name, steps, every)


def report_time(name: str, rounds: int, steps: int, every: int) -> None:
    times = step_times(name, rounds, steps, every)
    plain, watched = (statistics.median(times[v]) for v in ("unwatched", "watched"))
    for variant, ms in times.items():
        print(f"  {variant:9s}  ms/step median {statistics.median(ms):8.2f}"
              f"  (min {min(ms):.2f}, max {max(ms):.2f})")
    print(f"  watched / unwatched step time: {watched / plain:.3f}")


def report_memory(name: str, steps: int, every: int) -> None:
    variants = ("unwatched", "watched", "held")
    n = min(steps, every + 1)
    memory = {}
    for v in variants:
        peaks = [child_memory(name, v, n, every)["peak_kib"] for _ in range(REPEATS)]
        memory[v] = {"peak_kib": statistics.median(peaks),
                     "param_bytes": child_memory(name, v, 1, every)["param_bytes"]}
    params = memory["watched"]["param_bytes"]
    print(f"  peak resident set above the start, over {n} steps (median of {REPEATS} fresh"
          f" processes each): unwatched {memory['unwatched']['peak_kib'] / 1024:+.1f} MiB;"
          f" the parameters: {params / 2**20:.1f} MiB")
    for variant, label in (("watched", "watched"), ("held", "control: a copy held throughout")):
        extra = (memory[variant]["peak_kib"] - memory["unwatched"]["peak_kib"]) * 1024
        print(f"    {label:32s} {extra / 2**20:+7.1f} MiB = {extra / params:+.2f} × the parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("lenet", "transformer", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="steps per round and variant")
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--what", choices=("time", "memory", "both"), default="both")
    parser.add_argument("--child", choices=("unwatched", "watched", "held"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        keep_freed_memory()
        result = peak_memory(args.model, args.child, args.steps, args.every)
        print(result["peak_kib"], result["param_bytes"])
        return
    keep_freed_memory()  # steady step times and resident sets, as in lambexp's own training verbs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in (("lenet", "transformer") if args.model == "both" else (args.model,)):
        report(name, args.rounds, args.steps, args.every, args.what)


if __name__ == "__main__":
    main()
