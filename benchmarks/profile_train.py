"""Where a training step's time goes: lambexp's loop on the blog's workload under torch.profiler.

Run: ``make profile`` (or ``python benchmarks/profile_train.py --batches 60``). Workload as
``make bench``: LeNet, batch 512, real MNIST, the LAMB blog rule, r/r1/r2 logged every 30 batches.
One untimed warm-up epoch of the same length, then one profiled. Every aten op's own time (time in
its children excluded) is put in one bucket (the convolutions split by their input channels: conv1
reads 1 channel, conv2 reads 20), and the table gives each bucket's share of the profiled wall time.
Below it, each layer's share of LeNet's training FLOPs (torch's counter): a bucket far above its
layer's share of the FLOPs is where the loop falls short of the compute limit.
Last, each layer's passes timed alone on tensors of the step's shapes (``layer_rates``): the GFLOP/s
each reaches against the matmul peak, and how far the whole step is from the sum of its layers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import BATCH, LOG_INTERVAL, flops_per_sample, matmul_gflops, real_mnist  # noqa: E402

from lambexp.data import load_mnist  # noqa: E402
from lambexp.model import build_model  # noqa: E402
from lambexp.optim import Lamb  # noqa: E402
from lambexp.training.loop import LoopOptions, fit  # noqa: E402
from lambexp.training.malloc import keep_freed_memory  # noqa: E402
from lambexp.training.sinks import JsonlSink, Tee, TensorBoardSink  # noqa: E402


def conv_bucket(name: str, shapes) -> str | None:
    """conv1/conv2 forward/backward by the input image's channels (1 or 20): the first input of a
    forward convolution, the second of convolution_backward (after the output's gradient)."""
    if "conv" not in name:
        return None
    backward = "backward" in name
    image = shapes[1 if backward else 0] if len(shapes) > (1 if backward else 0) else []
    layer = {1: "conv1", 20: "conv2"}.get(image[1] if len(image) == 4 else None, "convolution, other")
    return f"{layer} {'backward' if backward else 'forward'}"


BUCKETS = [  # (bucket, test on the op's name), first match wins
    ("linear (mm, addmm)", lambda name: name in ("aten::mm", "aten::addmm", "aten::matmul")),
    ("max pooling", lambda name: "max_pool" in name),
    ("relu", lambda name: "relu" in name or "threshold" in name or "clamp_min" in name),
    ("log_softmax + nll loss", lambda name: "softmax" in name or "nll" in name),
    ("batch gather (index)", lambda name: name in ("aten::index", "aten::index_select", "aten::take")),
    ("optimizer: foreach, norms", lambda name: "_foreach" in name or "norm" in name or "dot" in name),
    ("optimizer: fused Adam kernel", lambda name: "fused_adam" in name),
    ("fills (zeroing gradients)", lambda name: "fill" in name or "zero" in name),
    ("copies, views", lambda name: any(k in name for k in ("copy", "empty", "clone", "view", "reshape",
                                                           "as_strided", "contiguous", "_to_copy"))),
    ("elementwise, other", lambda name: any(k in name for k in ("add", "mul", "div", "sub", "sqrt",
                                                               "where", "clamp", "minimum", "lerp"))),
]


def bucket(name: str, shapes) -> str:
    conv = conv_bucket(name, shapes)
    if conv:
        return conv
    for label, test in BUCKETS:
        if test(name):
            return label
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=60, help="batches in the profiled epoch")
    args = ap.parse_args()
    n = args.batches * BATCH
    d = load_mnist(real_mnist(), "cpu")
    keep_freed_memory()

    def epoch():
        torch.manual_seed(1)
        model = build_model("lenet")
        opt = Lamb(model.named_parameters(), lr=0.01, betas=(0.9, 0.99))
        with tempfile.TemporaryDirectory() as tmp, TensorBoardSink(Path(tmp)) as tb, \
                JsonlSink(Path(tmp) / "m.jsonl") as js:
            return fit(model, opt, (d.train_x[:n], d.train_y[:n]), (d.test_x[:BATCH], d.test_y[:BATCH]),
                       epochs=1, seed=1, sink=Tee(tb, js),
                       options=LoopOptions(batch_size=BATCH, log_interval=LOG_INTERVAL))

    epoch()  # warm-up, untimed
    t0 = time.perf_counter()
    plain = epoch()
    unprofiled = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        epoch()
        wall = time.perf_counter() - t0
    own: dict[str, float] = defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key.startswith("aten::"):
            own[bucket(e.key, e.input_shapes)] += e.self_cpu_time_total / 1e6
    flops, peak = flops_per_sample(), matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.batches} batches of {BATCH};"
          f" the epoch took {unprofiled:.2f} s unprofiled ({plain.samples / plain.train_seconds:.0f}"
          f" samples/s in training), {wall:.2f} s profiled")
    print(f"compute limit: {flops / 1e6:.1f} MFLOP/sample at {peak:.0f} GFLOP/s ="
          f" {peak * 1e9 / flops:.0f} samples/s\n")
    print(f"{'bucket':32s} {'own time s':>10s} {'share':>7s}")
    for label, seconds in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"{label:32s} {seconds:10.3f} {seconds / wall:7.1%}")
    rest = wall - sum(own.values())
    print(f"{'outside aten (Python, logging)':32s} {rest:10.3f} {rest / wall:7.1%}")
    print("\nshare of training FLOPs (forward + backward) by layer:")
    for layer, share in layer_flops().items():
        print(f"  {layer:30s} {share:6.1%}")
    print(f"\neach layer alone (batch {BATCH}, channels-last, median of 10): its rate against the"
          f" {peak:.0f} GFLOP/s matmul peak")
    print(f"{'layer, pass':24s} {'ms':>7s} {'GFLOP/s':>8s} {'of peak':>8s}")
    total = 0.0
    for label, ms, gflop in layer_rates():
        total += ms
        rate = f"{gflop / ms * 1e3:8.1f} {gflop / ms * 1e3 / peak:8.1%}" if gflop else f"{'':8s} {'':8s}"
        print(f"{label:24s} {ms:7.2f} {rate}")
    step = plain.train_seconds / plain.step * 1e3
    print(f"{'sum of the layers':24s} {total:7.2f}\n{'a whole training step':24s} {step:7.2f}"
          f"  (optimizer, logging, batch gather, loss: the rest)")


def layer_rates(batch: int = BATCH, repeats: int = 10) -> list[tuple[str, float, float]]:
    """(layer and pass, median ms, GFLOP) for each LeNet layer alone on tensors of a training step's
    shapes: forward, then backward of a random output gradient (conv1's input needs none)."""
    import statistics

    import torch.nn.functional as F

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    model = build_model("lenet")
    cl = torch.channels_last
    rows = []
    shapes = [("conv1", model.conv1, (batch, 1, 28, 28), False), ("pool1", None, (batch, 20, 24, 24), True),
              ("conv2", model.conv2, (batch, 20, 12, 12), True), ("pool2", None, (batch, 50, 8, 8), True),
              ("fc1", model.fc1, (batch, 800), True), ("fc2", model.fc2, (batch, 500), True)]
    for name, layer, shape, input_grad in shapes:
        x = torch.randn(shape)
        x = (x.contiguous(memory_format=cl) if x.dim() == 4 else x).requires_grad_(input_grad)
        forward = layer if layer is not None else (lambda t: F.max_pool2d(t, 2, 2))
        out = forward(x)
        grad = torch.randn_like(out)
        macs = 0 if layer is None else out.numel() * (layer.weight[0].numel())  # per output: Cin·k²
        rows.append((f"{name} forward", timed(lambda f=forward, x=x: f(x)), 2 * macs / 1e9))
        passes = 2 if input_grad else 1  # the input's gradient, and the weight's
        whole = timed(lambda f=forward, x=x, g=grad: f(x).backward(g))
        rows.append((f"{name} backward", whole - rows[-1][1], 2 * macs * passes / 1e9))
    return rows


def layer_flops() -> dict[str, float]:
    """Each LeNet layer's share of its training FLOPs per sample, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = build_model("lenet"), torch.randn(64, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.nll_loss(model(x), torch.zeros(64, dtype=torch.long)).backward()
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    layers = {k: sum(v.values()) for k, v in counts.items() if k.count(".") == 1}
    return {k: v / total for k, v in sorted(layers.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    main()
