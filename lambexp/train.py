"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``, over tensors already on the device.

The loop never reads a value back to the host except at a log step (every ``log_interval``
batches) and at an evaluation; the step of the first non-finite loss is tracked on the device.
The TensorBoard step (x-axis) is the number of training samples seen, the same unit for every arm
whatever its batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lambexp.data import epoch_batches
from lambexp.sinks import Sink

EVAL_BATCH = 2000  # test-set batch: large, since evaluation needs no gradients


@dataclass
class Progress:
    """What the loop tells whoever watches it (a progress bar, a log line); all no-ops here."""

    def begin(self, total_steps: int) -> None: ...
    def advance(self, step: int, loss: float) -> None: ...
    def epoch_end(self, epoch: int, metrics: dict) -> None: ...
    def end(self) -> None: ...


@dataclass
class LoopState:
    step: int = 0  # optimizer steps taken
    samples: int = 0  # training samples seen: the TensorBoard x-axis
    train_seconds: float = 0.0  # wall time spent in training steps (not evaluation)
    first_bad_step: Tensor | None = None  # on device: step of the first non-finite loss, or -1
    last_loss: float = float("nan")
    history: list[dict] = field(default_factory=list)  # one entry per evaluation


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
                    batch_size: int, generator: torch.Generator, log_interval: int, sink: Sink,
                    state: LoopState, progress: Progress, eval_every: int | None = None,
                    test: tuple[Tensor, Tensor] | None = None) -> None:
    """One pass over (x, y) in batches of a seeded permutation; logs every ``log_interval`` steps."""
    model.train()
    t0 = time.perf_counter()
    for idx in epoch_batches(len(x), batch_size, generator, x.device):
        opt.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        state.step += 1
        state.samples += len(idx)
        bad = torch.where(torch.isfinite(loss), -1, state.step)
        state.first_bad_step = bad if state.first_bad_step is None else torch.where(
            state.first_bad_step >= 0, state.first_bad_step, bad)
        if state.step % log_interval == 0:
            state.last_loss = loss.item()  # the one host sync per log_interval
            log_train(sink, opt, state, loss=state.last_loss)
            progress.advance(state.step, state.last_loss)
        if eval_every and test is not None and state.step % eval_every == 0:
            state.train_seconds += time.perf_counter() - t0
            log_eval(sink, state, *evaluate(model, *test))
            model.train()
            t0 = time.perf_counter()
    state.train_seconds += time.perf_counter() - t0


def log_train(sink: Sink, opt: torch.optim.Optimizer, state: LoopState, loss: float) -> None:
    sink.scalars(state.samples, {"train/loss": loss, "lr": opt.param_groups[0]["lr"],
                                 "train/step": state.step})
    if hasattr(opt, "trust_stats"):
        sink.trust(state.samples, opt.trust_stats())


def log_eval(sink: Sink, state: LoopState, loss: float, accuracy: float) -> None:
    metrics = {"test/loss": loss, "test/accuracy": accuracy}
    sink.scalars(state.samples, metrics)
    state.history.append({"step": state.step, "samples": state.samples, **metrics})


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Mean NLL loss and accuracy (in [0, 1]) of ``model`` on (x, y)."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])  # (B, 10) log-probabilities
        loss_sum += F.nll_loss(out, y[i:i + EVAL_BATCH], reduction="sum")
        correct += (out.argmax(dim=1) == y[i:i + EVAL_BATCH]).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def fit(model: nn.Module, opt: torch.optim.Optimizer, train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor], *, epochs: int, batch_size: int, seed: int,
        log_interval: int, sink: Sink, progress: Progress | None = None,
        eval_interval: int | None = None) -> LoopState:
    """Train for ``epochs`` epochs, evaluating on ``test`` after each; returns the loop's state."""
    progress = progress or Progress()
    generator = torch.Generator().manual_seed(seed)
    state = LoopState()
    steps_per_epoch = -(-len(train[0]) // batch_size)
    progress.begin(epochs * steps_per_epoch)
    try:
        for epoch in range(1, epochs + 1):
            train_one_epoch(model, opt, *train, batch_size=batch_size, generator=generator,
                            log_interval=log_interval, sink=sink, state=state, progress=progress,
                            eval_every=eval_interval, test=test)
            log_eval(sink, state, *evaluate(model, *test))
            sink.flush()
            progress.epoch_end(epoch, state.history[-1])
    finally:
        progress.end()
    return state
