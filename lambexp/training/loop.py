"""The training loop: one training as an object that takes one step at a time (``Trainer``), ``fit``
a loop over its steps, and ``evaluate``, over tensors already on the device.

The loop reads values back to the host only at a log step (every ``log_interval`` batches) and at
an evaluation; the step of the first non-finite loss is tracked on the device, and what a check reads
there is judged by lambexp.training.divergence.
The TensorBoard step (x-axis) is the number of training samples seen, the same unit for every arm
whatever its batch size. ``LoopState`` holds everything needed to continue mid-epoch.
Under torchrun (``LoopOptions.world``) the model is wrapped in DDP and each global batch is split
over the ranks; every rank then takes the same step, logs the same numbers and stops at the same step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lambexp.base.divergence import diverged_text
from lambexp.data import batches_per_epoch, epoch_batches
from lambexp.errors import Interrupted
from lambexp.training.distributed import SINGLE, World, unwrap
from lambexp.training.divergence import Reading, decide, track_first_bad
from lambexp.training.progress import NoProgress, Progress
from lambexp.training.sinks import Sink

EVAL_BATCH = 2000  # test-set batch: large, since evaluation needs no gradients


@dataclass
class LoopState:
    step: int = 0  # optimizer steps taken
    samples: int = 0  # training samples seen: the TensorBoard x-axis
    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # batches of that epoch done
    epoch_rng: Tensor | None = None  # shuffling generator's state before this epoch's permutation
    train_seconds: float = 0.0  # wall time spent in training steps (not evaluation)
    wall_seconds: float = 0.0  # wall time in fit, evaluation included, over every session
    last_loss: float = float("nan")  # last logged (finite) training loss
    diverged_step: int | None = None  # the step at which it diverged (lambexp.training.divergence)
    diverged_reason: str | None = None
    first_loss: float | None = None  # LossWatch.first: the first logged training loss
    loss_fell: bool = False  # LossWatch.fell: a logged loss has been below first_loss / 2
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    first_bad: Tensor | None = field(default=None, repr=False)  # on device: first bad step or -1


@dataclass
class LoopOptions:
    batch_size: int
    log_interval: int
    eval_interval: int | None = None
    on_divergence: str = "stop"  # stop | continue (lambexp.training.divergence says when it diverged)
    stop_requested: Callable[[], bool] = lambda: False  # polled before each step; under DDP at log steps
    world: World = SINGLE  # the training processes: batch_size is split over world.size ranks
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps, then constant


def batch_loss(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, world: World) -> Tensor:
    """The loss to backpropagate for the global batch ``idx`` (B,): its mean NLL in one process;
    under DDP this rank's share of it (``World.share``), whose gradients DDP averages into the
    one-process gradient."""
    local, scale = world.share(idx)
    if scale is None:
        return F.nll_loss(model(x[local]), y[local])
    return F.nll_loss(model(x[local]), y[local], reduction="sum") * scale


def separate_step(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, world: World) -> Tensor:
    """The loss step of a training alone: forward and backward of the batch ``idx``."""
    loss = batch_loss(model, x, y, idx, world)
    loss.backward()
    return loss


class Checked(NamedTuple):
    """How a check ended."""

    diverged: bool  # the run diverged at this check (lambexp.training.divergence.decide)
    stop: bool  # a stop was requested (under DDP: on any rank)


def _read(model: nn.Module, state: LoopState, loss: Tensor, options: LoopOptions) -> tuple[Reading, bool]:
    """This check's readings and whether a stop was requested, in one host sync; under DDP agreed by
    every rank (``World.agree``). One process polls for a stop before each step instead."""
    params_finite = torch.stack(torch._foreach_norm(list(model.parameters()))).isfinite().all()
    reading = Reading(loss.detach(), state.first_bad, params_finite)
    if not options.world.active:
        return Reading.from_row(reading.row().tolist()), False
    return options.world.agree(reading, options.stop_requested())


def _check_log_step(model: nn.Module, opt, state: LoopState, loss: Tensor, sink: Sink,
                    progress: Progress, options: LoopOptions, at: int | None) -> Checked:
    """Read the values (``_read``), take lambexp.training.divergence's decision and, at a log step,
    log the loss at ``at`` (samples seen before its batch; None: not a log step, so the loss rule
    is not fed). A non-finite value is logged only when continuing."""
    reading, stop = _read(model, state, loss, options)
    diverged = decide(state, reading, logged=at is not None) is not None
    if at is not None:
        if math.isfinite(reading.loss):
            state.last_loss = reading.loss
        if reading.finite or options.on_divergence == "continue":
            log_train(sink, opt, at, state.step, loss=reading.loss)
            progress.advance(state.step, reading.loss)
    return Checked(diverged, stop)


def warm_up(opt: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """lr of step ``step`` (1-based) = the group's initial lr × min(1, step / warmup_steps).
    Stateless: a resumed run gets the same rates from the step count alone."""
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])  # saved with the optimizer's state_dict
        group["lr"] = group["initial_lr"] * min(1.0, step / warmup_steps)


def log_train(sink: Sink, opt: torch.optim.Optimizer, x: int, step: int, loss: float) -> None:
    """The batch's loss, the lr and the optimizer's r, r1, r2 at x (samples seen before the batch)."""
    scalars = {"train/loss": loss, "lr": opt.param_groups[0]["lr"], "train/step": step}
    if getattr(opt, "grad_norm", None) is not None:  # a rule that clips: the norm before the clip
        scalars["train/grad_norm"] = float(opt.grad_norm)
    sink.scalars(x, scalars)
    if hasattr(opt, "trust_stats"):
        sink.trust(x, opt.trust_stats())


def log_eval(sink: Sink, state: LoopState, test: tuple[float, float] | None,
             validation: tuple[float, float] | None = None) -> None:
    """An evaluation's (loss, accuracy) on the test set and on the validation set, each when given,
    logged at the samples seen and kept in ``state.history``."""
    metrics = {} if test is None else {"test/loss": test[0], "test/accuracy": test[1]}
    if validation is not None:
        metrics |= {"val/loss": validation[0], "val/accuracy": validation[1]}
    sink.scalars(state.samples, metrics)
    state.history.append({"step": state.step, "samples": state.samples, **metrics})


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, world: World = SINGLE) -> tuple[float, float]:
    """Mean NLL loss and accuracy (in [0, 1]) of ``model`` on (x, y).

    Under DDP each rank evaluates its contiguous shard and the sums are added over the ranks: the
    whole set's numbers (the parameters are the same on every rank), identical on every rank, for
    one all_reduce; evaluating the whole set on every rank would not shrink with W as training does.
    """
    model.eval()
    n = len(x)
    if world.active:
        x, y = x.tensor_split(world.size)[world.rank], y.tensor_split(world.size)[world.rank]
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])  # (B, 10) log-probabilities
        loss_sum += F.nll_loss(out, y[i:i + EVAL_BATCH], reduction="sum")
        correct += (out.argmax(dim=1) == y[i:i + EVAL_BATCH]).sum()
    loss, right = world.sum_over_ranks(torch.stack([loss_sum.double(), correct.double()])).tolist()
    return loss / n, right / n


class Trainer:
    """One training that takes one step at a time; ``fit`` is a loop over it.

    A step has three parts, so that a stack (lambexp.training.members) can run the middle one
    for all its members at once: ``next_batch`` (a stop request polled, the lr warmed up, the
    gradients zeroed), the forward and backward of that batch, and ``take_step`` (the optimizer's
    step, the checks of lambexp.training.divergence, logging, evaluations and the epoch's end).
    ``step`` is the three for a training alone. ``begin`` before the first step and ``end`` after
    the last (also after a failure): ``with Trainer(...) as trainer``.
    ``state`` continues an earlier run exactly where it stopped (see ``LoopState``);
    ``on_epoch_end`` runs after each epoch's evaluation (e.g. a checkpoint); ``validation``, held-out
    training images, is evaluated at each evaluation beside ``test`` (``val/loss``, ``val/accuracy``).
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, train: tuple[Tensor, Tensor],
                 test: tuple[Tensor, Tensor], *, epochs: int, seed: int, options: LoopOptions,
                 sink: Sink, progress: Progress | None = None, state: LoopState | None = None,
                 on_epoch_end: Callable[[LoopState], None] = lambda state: None,
                 validation: tuple[Tensor, Tensor] | None = None):
        self.model, self.opt, self.train, self.test = model, opt, train, test
        self.validation = validation  # held-out training images, evaluated beside the test set
        self.epochs, self.options, self.sink = epochs, options, sink
        self.progress = progress or NoProgress()
        self.state = state or LoopState()
        self.on_epoch_end = on_epoch_end
        self.net = model  # the model that trains: wrapped in DDP by ``begin`` under torchrun
        self.generator = torch.Generator()
        if self.state.epoch_rng is None:
            self.generator.manual_seed(seed)
            self.state.epoch_rng = self.generator.get_state()
        self.ended = False  # every epoch done, or diverged with on_divergence stop
        self._batches: list[Tensor] | None = None  # the epoch in progress's batches, drawn at its start
        self._train_mark = 0.0  # perf_counter when training time last began counting
        self._wall_mark: float | None = None  # when the wall clock last read; None before ``begin``

    def __enter__(self) -> Trainer:
        self.begin()
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    def begin(self) -> None:
        """Show where the training stands and start its wall clock. Under DDP the model is wrapped
        for the training steps: rank 0's parameters broadcast, gradients averaged."""
        self.net = self.options.world.wrap(self.model)
        state = self.state
        self.progress.begin(self.epochs * batches_per_epoch(len(self.train[0]), self.options.batch_size),
                            done=state.step)
        if state.step:  # resumed: show where it stands before the next log step
            self.progress.advance(state.step, state.last_loss)
        self._wall_mark = time.perf_counter()

    def end(self) -> None:
        """Stop the clocks and flush what was logged; the progress display ends. Once: a later call
        (an ending after a failure) does nothing."""
        if self._wall_mark is None:  # never begun, or ended
            return
        self._clock()
        self._wall_mark = None
        # DDP's reducer must go before the process group does: a wrapper left on a Trainer that
        # outlives the group is torn down at exit, and aborts the process (seen on rank 1)
        self.net = self.model
        self.sink.flush()
        self.progress.end()

    def step(self) -> bool:
        """One step of a training alone; False when it has ended (then no step was taken)."""
        idx = self.next_batch()
        if idx is None:
            return False
        self.take_step(separate_step(self.net, *self.train, idx, self.options.world))
        return True

    def next_batch(self) -> Tensor | None:
        """The global batch (indices into the training set) of the next step, its gradients zeroed
        and its lr warmed up; None once the training has ended. Raises Interrupted, the state
        consistent, when a stop is requested (one process: polled before each step; under DDP
        ``take_step`` reads it at a check, agreed by every rank)."""
        state, options = self.state, self.options
        if self.ended or state.epoch > self.epochs:
            self.ended = True
            return None
        if self._batches is None:
            self._begin_epoch()
        if not options.world.active and options.stop_requested():
            self._interrupt()
        if options.warmup_steps:
            warm_up(self.opt, state.step + 1, options.warmup_steps)
        self.opt.zero_grad(set_to_none=True)
        return self._batches[state.batch]

    def take_step(self, loss: Tensor) -> None:
        """After ``loss``'s backward: the optimizer's step, and at a log step, an evaluation or the
        epoch's last batch, a check (no evaluation of a diverged model). Logs the loss and r, r1, r2
        after the batches whose index in the epoch is a multiple of ``log_interval`` (the post's
        ``batch_idx % log_interval == 0``), at x = the samples seen before that batch, as its
        script did."""
        state, options = self.state, self.options
        idx = self._batches[state.batch]
        self.opt.step()
        batch_index, seen_before = state.batch, state.samples
        state.step, state.batch, state.samples = state.step + 1, state.batch + 1, state.samples + len(idx)
        state.first_bad = track_first_bad(state.first_bad, loss, state.step)
        logs = batch_index % options.log_interval == 0  # the post's `batch_idx % log_interval`
        evaluates = bool(options.eval_interval and state.step % options.eval_interval == 0)
        last = state.batch == len(self._batches)
        if logs or evaluates or last:
            checked = _check_log_step(self.net, self.opt, state, loss, self.sink, self.progress,
                                      options, at=seen_before if logs else None)
            if checked.diverged and options.on_divergence == "stop":
                self._diverge()
                return
            if checked.stop:
                self._interrupt()
        if evaluates and not last:  # the epoch's end evaluates anyway
            self._evaluate(test=self.validation is None)
            self.net.train()
        if last:
            self._end_epoch()

    def _begin_epoch(self) -> None:
        """Draw epoch ``state.epoch``'s permutation (from the generator's state before it, so a run
        resumed mid-epoch draws the same) and start its training clock."""
        self.generator.set_state(self.state.epoch_rng)
        self._batches = list(epoch_batches(len(self.train[0]), self.options.batch_size, self.generator,
                                           self.train[0].device))
        self.net.train()
        self._train_mark = time.perf_counter()

    def _evaluate(self, test: bool = True) -> None:
        """An evaluation on the test set (unless not ``test``) and on the validation set, logged; its
        time is not training time. Between epochs (``eval_interval``) an arm with a validation split
        evaluates that alone: the steps to a target read it, and the test set waits for the epoch's
        end."""
        self._stop_train_clock()
        model, world = unwrap(self.net), self.options.world
        log_eval(self.sink, self.state, evaluate(model, *self.test, world) if test else None,
                 evaluate(model, *self.validation, world) if self.validation is not None else None)
        self._train_mark = time.perf_counter()

    def _end_epoch(self) -> None:
        """The epoch's evaluation, its line, and the next epoch's place (then ``on_epoch_end``)."""
        state = self.state
        self._evaluate()
        self.sink.flush()
        self.progress.epoch_end(state.epoch, state.history[-1])
        state.epoch, state.batch, state.epoch_rng = state.epoch + 1, 0, self.generator.get_state()
        self._batches = None
        self._clock()
        self.on_epoch_end(state)

    def _diverge(self) -> None:
        self._stop_train_clock()
        self.ended = True
        self.progress.note(f"{diverged_text(self.state.diverged_step, self.state.diverged_reason)};"
                           " this arm stops here")

    def _interrupt(self) -> None:
        self._stop_train_clock()
        raise Interrupted(f"at step {self.state.step}; the arm in progress was checkpointed")

    def _stop_train_clock(self) -> None:
        self.state.train_seconds += time.perf_counter() - self._train_mark

    def _clock(self) -> None:
        now = time.perf_counter()
        self.state.wall_seconds += now - self._wall_mark
        self._wall_mark = now


def fit(model: nn.Module, opt: torch.optim.Optimizer, train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor], *, epochs: int, seed: int, options: LoopOptions, sink: Sink,
        progress: Progress | None = None, state: LoopState | None = None,
        on_epoch_end: Callable[[LoopState], None] = lambda state: None) -> LoopState:
    """Train until ``epochs`` epochs are done (or the run diverges), evaluating after each epoch:
    a ``Trainer``'s steps, one after another.

    ``state`` continues an earlier run exactly where it stopped (see ``LoopState``).
    ``on_epoch_end`` runs after each epoch's evaluation (e.g. a checkpoint).
    Raises Interrupted, leaving ``state`` consistent, when ``options.stop_requested()``.
    Under DDP (``options.world``) every rank calls ``fit`` with the same arguments; the model is
    wrapped in DDP for the training steps, and the permutation, from the same seeded generator,
    is the same on every rank.
    """
    with Trainer(model, opt, train, test, epochs=epochs, seed=seed, options=options, sink=sink,
                  progress=progress, state=state, on_epoch_end=on_epoch_end) as trainer:
        while trainer.step():
            pass
    return trainer.state
