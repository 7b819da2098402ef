"""Other ways to compute LeNet's forward and backward, against the model as lambexp builds it.

Run: ``python benchmarks/forward_variants.py [--rounds 3]``. Each variant is the blog's LeNet (the
same weights, from seed 1) written with ``torch.nn.functional``, on one random batch of 512: 3
untimed steps, then 20 timed forward + backward steps, in alternating rounds; prints the median
samples/s, the ratio to the model as it is, and the largest difference of its log-probabilities from
the model's. docs/measured.md has the results (issue 24: none gained).
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
from lambexp.training.malloc import keep_freed_memory  # noqa: E402

BATCH = 512
VARIANTS = {  # name: what changes
    "as it is (channels-last)": {},
    "conv1 in NCHW": {"conv1_nchw": True},
    "the whole model in NCHW": {"nchw": True},
    "conv1 as unfold + matmul": {"conv1_unfold": True},
    "max-pool as amax (no indices)": {"amax": True},
    "oneDNN off": {"no_mkldnn": True},
    "torch.compile (inductor)": {"compile": True},
}


def pool_amax(t: torch.Tensor) -> torch.Tensor:
    """2×2 max-pooling as a max over a reshape: no int64 indices; ties share the gradient."""
    _, _, h, w = t.shape
    return t.unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2)).amax(dim=(3, 5))


def variant(v: dict):
    """(weights, forward) of LeNet from seed 1, computed as ``v`` says."""
    torch.manual_seed(1)
    w = dict(build_model("lenet").named_parameters())
    if v.get("nchw"):
        for p in w.values():
            p.data = p.data.contiguous()
    if v.get("conv1_nchw"):
        w["conv1.weight"].data = w["conv1.weight"].data.contiguous()
    pool = pool_amax if v.get("amax") else (lambda t: F.max_pool2d(t, 2, 2))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if v.get("conv1_unfold"):
            cols = F.unfold(x, 5)  # (B, 25, 576)
            h = (w["conv1.weight"].view(20, 25) @ cols + w["conv1.bias"][:, None]).view(len(x), 20, 24, 24)
        else:
            h = F.conv2d(x, w["conv1.weight"], w["conv1.bias"])
        if v.get("conv1_nchw") or v.get("conv1_unfold"):
            h = h.contiguous(memory_format=torch.channels_last)
        h = F.relu(pool(h))
        h = F.relu(pool(F.conv2d(h, w["conv2.weight"], w["conv2.bias"])))
        h = F.relu(F.linear(h.flatten(1), w["fc1.weight"], w["fc1.bias"]))
        return F.log_softmax(F.linear(h, w["fc2.weight"], w["fc2.bias"]), dim=1)

    return w, torch.compile(forward) if v.get("compile") else forward


def samples_per_second(forward, w: dict, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        for p in w.values():
            p.grad = None
        F.nll_loss(forward(x), y).backward()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in (list(VARIANTS) if r % 2 == 0 else reversed(VARIANTS)):
            v = VARIANTS[name]
            torch.backends.mkldnn.enabled = not v.get("no_mkldnn")
            w, forward = variant(v)
            xin = x.contiguous() if v.get("nchw") or v.get("conv1_nchw") or v.get("conv1_unfold") \
                else x.contiguous(memory_format=torch.channels_last)
            samples_per_second(forward, w, xin, y, 3)  # warm-up (and compiling)
            speeds[name].append(samples_per_second(forward, w, xin, y, args.steps))
    torch.backends.mkldnn.enabled = True
    with torch.no_grad():
        w, forward = variant({})
        reference = forward(x.contiguous(memory_format=torch.channels_last))
    base = statistics.median(speeds["as it is (channels-last)"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; LeNet forward + backward, batch"
          f" {BATCH}; {args.steps} steps, median of {args.rounds} alternating rounds")
    print(f"{'variant':32s} {'samples/s':>10s} {'×':>6s} {'max |Δ log-prob|':>17s}")
    for name, v in VARIANTS.items():
        torch.backends.mkldnn.enabled = not v.get("no_mkldnn")
        with torch.no_grad():
            w, forward = variant(v)
            xin = x.contiguous() if v.get("nchw") or v.get("conv1_nchw") or v.get("conv1_unfold") \
                else x.contiguous(memory_format=torch.channels_last)
            diff = (forward(xin) - reference).abs().max().item()
        speed = statistics.median(speeds[name])
        print(f"{name:32s} {speed:10.0f} {speed / base:5.2f}× {diff:17.2e}")
    torch.backends.mkldnn.enabled = True


if __name__ == "__main__":
    main()
