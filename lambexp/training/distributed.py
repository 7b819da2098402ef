"""Several training processes under torchrun: which one this is (``World``), the process group's
lifetime, and the few collectives the rest of lambexp needs. Without torchrun (``WORLD_SIZE`` unset
or 1) the world has one process: no process group, no DDP wrapper, no collectives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lambexp.errors import UserError
from lambexp.training.divergence import Reading

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; rank 0 of 1 without torchrun."""

    rank: int = 0  # global rank, 0 … size-1; rank 0 writes every file and prints
    size: int = 1  # processes in all (torchrun's WORLD_SIZE)
    local_rank: int = 0  # rank on this machine: the GPU it uses

    @property
    def active(self) -> bool:
        """True under torchrun with more than one process: DDP and collectives are in use."""
        return self.size > 1

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` when active (it broadcasts rank 0's parameters now and averages
        the gradients in each backward); otherwise ``model`` itself."""
        if not self.active:
            return model
        return nn.parallel.DistributedDataParallel(model)

    def gather(self, row: Tensor) -> Tensor:
        """(size, k): every rank's ``row`` (k,), in rank order, the same on every rank."""
        rows = [torch.empty_like(row) for _ in range(self.size)]
        dist.all_gather(rows, row)
        return torch.stack(rows)

    def sum_over_ranks(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (in place, returned); unchanged in a world of one."""
        if self.active:
            dist.all_reduce(values)
        return values

    def share(self, idx: Tensor) -> tuple[Tensor, float | None]:
        """This rank's part of the global batch ``idx`` (B,) and the factor for its summed loss.

        One process: all of ``idx`` and None (take the mean). Under DDP: the rank's contiguous
        slice and W / B, so that DDP's average of the ranks' gradients is (1/B) Σ over the whole
        batch, the one-process gradient, however B divides by W (a rank whose slice is empty
        contributes zero) and in a partial last batch too."""
        if not self.active:
            return idx, None
        return idx.tensor_split(self.size)[self.rank], self.size / len(idx)  # (B/W rounded,)

    def agree(self, reading: Reading, stop: bool) -> tuple[Reading, bool]:
        """Every rank's ``reading`` (on the device; its loss is the rank's sum × W/B) and stop request,
        in one all_gather and one host sync, reduced alike on every rank: the global batch's mean loss,
        the earliest bad step of any rank, all parameters finite, any stop. So all ranks take the same
        decision at the same step, and none waits in a collective for one that has left."""
        row = reading.row()
        flag = torch.tensor([float(stop)], dtype=row.dtype, device=row.device)
        rows = self.gather(torch.cat([row, flag]))  # (W, 4): the Reading's fields, then the stop flag
        each = Reading(*rows[:, :-1].unbind(1))  # each field over the ranks, (W,)
        first = torch.where(each.first_bad >= 0, each.first_bad, math.inf).min()
        agreed = Reading(each.loss.sum() / self.size,  # Σ_r (S_r · W/B) / W = the global batch's mean loss
                       torch.where(first.isinf(), -1.0, first), each.params_finite.min())
        *values, stop_any = torch.stack([*agreed, rows[:, -1].max()]).tolist()
        return Reading.from_row(values), stop_any > 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def from_lead(self, make: Callable[[], T]) -> T:
        """``make()`` run on rank 0 only (e.g. creating the timestamped run folder), its result
        sent to every rank. If it raises, rank 0 re-raises and the other ranks raise too, so none
        waits for a value that never comes."""
        if not self.active:
            return make()
        box: list = [None, None]  # [result, error message]
        error = None
        if self.lead:
            try:
                box[0] = make()
            except Exception as err:
                error, box[1] = err, f"{type(err).__name__}: {err}"
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        if error is not None:
            raise error
        if box[1] is not None:
            raise UserError(f"rank 0 failed, so rank {self.rank} stops too ({box[1]})")
        return box[0]

    def local_first(self, make: Callable[[], T]) -> T:
        """``make()`` on each machine's local rank 0 first, then on its other ranks: a download
        happens once per machine, and the others find the files and only verify them."""
        if not self.active:
            return make()
        if self.local_rank == 0:
            try:
                return make()
            finally:
                self.barrier()
        self.barrier()
        return make()


SINGLE = World()  # a plain `lambexp run`


def launched_world() -> World:
    """The World torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; SINGLE without them."""
    env = os.environ
    return World(rank=int(env.get("RANK", 0)), size=int(env.get("WORLD_SIZE", 1)),
                 local_rank=int(env.get("LOCAL_RANK", 0)))


def is_lead_process() -> bool:
    """False on ranks > 0 under torchrun: they print nothing."""
    return launched_world().lead


@contextmanager
def process_group() -> Iterator[World]:
    """This process's World; under torchrun (WORLD_SIZE > 1) the default process group is set up
    for the block (torchrun's rendezvous, ``env://``) and destroyed after it, error or not.
    Backend: nccl for CUDA tensors and gloo for CPU tensors when a GPU is present (each process on
    GPU LOCAL_RANK: start one process per GPU), gloo alone otherwise."""
    world = launched_world()
    if not world.active:
        yield world
        return
    if world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)  # `cuda` now means this rank's own GPU
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield world
    finally:
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper; any other model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
