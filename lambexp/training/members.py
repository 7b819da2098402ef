"""Several trainings of one model stepped in turn from one thread, their forwards and backwards run as
one stacked model (``lambexp.training.stack.Stack``).

Each member is a whole training (``lambexp.training.loop.Trainer``), as ``run_arm`` runs it alone: its
own seed, data order, optimizer, divergence checks, evaluations, TensorBoard events, metrics,
checkpoints and summary. Only the forward and backward of its batch are shared. A step of the stack is
each member's ``next_batch`` in turn, one stacked forward and backward of those batches, and each
member's ``take_step`` in turn: every member steps its own optimizer on its own parameters, which are
views of its slices of the stack (``Stack.bind``), so a norm never mixes two members' tensors.

A member leaves when its training ends (finished, or diverged with ``on_divergence: stop``): its
parameters get their own memory back, and the others are stacked anew without it. Members resumed at
different steps share the stack all the same; a shorter batch is padded and the padding left out of
its loss. What a member raises stops the stack's step at once, as ``MemberError``: the caller decides
what it means for the others (lambexp.runner.stacked stops them all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import torch
from torch import Tensor

from lambexp.training.loop import Trainer
from lambexp.training.stack import Stack

T = TypeVar("T")


class MemberError(Exception):
    """A member's part of a step raised ``error``; ``slot`` None: the shared forward and backward,
    so every member's."""

    def __init__(self, slot: int | None, error: Exception):
        super().__init__(slot, error)
        self.slot, self.error = slot, error


class Members:
    """The members of a stack (slots 0…N−1, ``Trainer``s begun), stepped in turn, and their ``Stack``."""

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)
        self.training = list(range(len(self.trainers)))  # the slots still training, in order
        self._stack: Stack | None = None
        self._stacked: list[int] = []  # the slots in the stack, in its order

    def step(self) -> list[int]:
        """One step of every member still training; returns the slots whose training had ended
        (they take no step and leave the stack). Raises MemberError, the members' states as
        consistent as at a stop request."""
        batches: dict[int, Tensor] = {}
        ended = []
        for slot in self.training:
            idx = as_member(slot, self.trainers[slot].next_batch)
            if idx is None:
                ended.append(slot)
            else:
                batches[slot] = idx
        for slot in ended:
            self.leave(slot)
        if batches:
            losses = as_member(None, lambda: self._losses(batches))
            for slot, loss in zip(batches, losses):
                as_member(slot, partial(self.trainers[slot].take_step, loss))
        return ended

    def leave(self, slot: int) -> None:
        """Member ``slot`` trains no more: its parameters own their memory again, and the others
        go on without it. Idempotent."""
        if slot not in self.training:
            return
        self.training.remove(slot)
        if slot in self._stacked:
            for p in self.trainers[slot].model.parameters():
                p.data = p.data.clone()
                p.grad = None
        if not self.training:  # the last one: nothing holds the stack any more
            self._stack, self._stacked = None, []

    def _losses(self, batches: dict[int, Tensor]) -> list[Tensor]:
        """Each stepping member's loss on its batch, its parameters' ``.grad`` set, after one
        stacked forward and backward; restacked when the members stepping changed."""
        slots = list(batches)
        models = [self.trainers[s].model for s in slots]
        if slots != self._stacked:  # the first step, or a member has left: stack anew
            self._stack = Stack(models)
            self._stack.bind(models)
            self._stacked = slots
        xs = [self.trainers[s].train[0][batches[s]] for s in slots]
        ys = [self.trainers[s].train[1][batches[s]] for s in slots]
        counts = [len(y) for y in ys]
        padded = len(set(counts)) > 1  # members at different points of their epochs
        if padded:
            longest = max(counts)
            xs = [torch.cat([x, x[:1].expand(longest - len(x), *x.shape[1:])]) for x in xs]
            ys = [torch.cat([y, y[:1].expand(longest - len(y))]) for y in ys]
        losses = self._stack.losses(torch.stack(xs), torch.stack(ys), counts if padded else None)
        self._stack.backward(losses)
        return list(losses.detach())


def as_member(slot: int | None, part: Callable[[], T]) -> T:
    """``part()``, what it raises (an Exception) re-raised as member ``slot``'s."""
    try:
        return part()
    except Exception as err:
        raise MemberError(slot, err) from err
