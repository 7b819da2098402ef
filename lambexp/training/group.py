"""Several trainings of one model, each in a thread of its own, whose forward and backward run as one
stacked model (``lambexp.training.stack.Stack``).

Each member is a whole training as ``run_arm`` runs it alone: its own seed, data order, optimizer,
divergence checks, evaluations, TensorBoard events, metrics, checkpoints and summary. Only its loss
step is shared. At each step a member hands its batch to the group and waits; the last to arrive
runs the stacked forward and backward for everyone, and each member's parameters get their own
gradient. Then every member steps its own optimizer on its own parameters, which are views of its
slices of the stack (``Stack.bind``): a norm never mixes two members' tensors.

A member joins at its first step, with whatever it restored from a checkpoint, and leaves when its
training ends (finished, diverged with ``on_divergence: stop``, interrupted or failed): its
parameters get their own memory back, and the others are stacked anew without it. Members resumed at
different steps step together all the same; a shorter batch is padded and the padding left out of
its loss.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lambexp.training.distributed import World
from lambexp.training.stack import Stack


class StackGroup:
    """The meeting point of ``size`` members (slots 0…size−1) that train together."""

    def __init__(self, size: int):
        self._cond = threading.Condition()
        self._unseen = set(range(size))  # members that have neither stepped nor left yet
        self._models: dict[int, nn.Module] = {}  # the members in the group, by slot
        self._batches: dict[int, tuple[Tensor, Tensor]] = {}  # this round's, by slot
        self._results: dict[int, Tensor | BaseException] = {}  # each member's loss, or what failed
        self._stack: Stack | None = None
        self._stacked: list[int] = []  # the slots in the stack, in its order
        self._build = threading.Lock()

    @contextmanager
    def building(self):
        """Hold while seeding torch's global RNG and building a member's model from it."""
        with self._build:
            yield

    def member(self, slot: int) -> Member:
        return Member(self, slot)

    def step(self, slot: int, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Member ``slot``'s loss on its batch (x, y), its parameters' ``.grad`` set, after the
        group's stacked forward and backward; raises what failed there."""
        with self._cond:
            if slot not in self._models:  # joins at its first step
                self._unseen.discard(slot)
                self._models[slot] = model
            self._batches[slot] = (x, y)
            self._run_when_ready()
            while slot not in self._results:
                self._cond.wait()
            result = self._results.pop(slot)
        if isinstance(result, BaseException):
            raise result
        return result

    def leave(self, slot: int) -> None:
        """Member ``slot`` trains no more: its parameters own their memory again; the others go on
        without it. Idempotent."""
        with self._cond:
            self._unseen.discard(slot)
            model = self._models.pop(slot, None)
            if model is not None:
                for p in model.parameters():
                    p.data = p.data.clone()
                    p.grad = None
            if not self._models:  # the last one: nothing holds the stack any more
                self._stack, self._stacked = None, []
            self._run_when_ready()

    def _run_when_ready(self) -> None:
        """Once every member in the group has handed in its batch (and none is still to join): one
        stacked forward and backward; each member's loss goes to ``_results``. Holds ``_cond``."""
        if self._unseen or not self._models or len(self._batches) < len(self._models):
            return
        slots = sorted(self._models)
        try:
            if slots != self._stacked:  # the first step, or a member has left: stack anew
                self._stack = Stack([self._models[s] for s in slots])
                self._stack.bind([self._models[s] for s in slots])
                self._stacked = slots
            xs, ys = zip(*(self._batches[s] for s in slots))
            counts = [len(y) for y in ys]
            padded = len(set(counts)) > 1  # members at different points of their epochs
            if padded:
                longest = max(counts)
                xs = [torch.cat([x, x[:1].expand(longest - len(x), *x.shape[1:])]) for x in xs]
                ys = [torch.cat([y, y[:1].expand(longest - len(y))]) for y in ys]
            losses = self._stack.losses(torch.stack(xs), torch.stack(ys), counts if padded else None)
            self._stack.backward(losses)
            for k, s in enumerate(slots):
                self._results[s] = losses[k].detach()
        except BaseException as err:  # every waiting member raises it (run_arm says what it was)
            for s in slots:
                self._results[s] = err
        self._batches.clear()
        self._cond.notify_all()


class Member:
    """One member's side of a StackGroup: the loop's loss step (``LoopOptions.loss_step``)."""

    def __init__(self, group: StackGroup, slot: int):
        self.group, self.slot = group, slot

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, world: World) -> Tensor:
        return self.group.step(self.slot, model, x[idx], y[idx])

    def close(self) -> None:
        self.group.leave(self.slot)
