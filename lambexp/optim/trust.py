"""Per-layer trust-ratio statistics kept on the device, and the optimizer base that records them.

After every step the latest r, r1, r2 of each parameter tensor sit in one small tensor per
param group on the parameters' device; nothing is copied to the host until someone reads them.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor
from torch.optim import Optimizer


class TrustRatioOptimizer(Optimizer):
    """An optimizer that records the per-tensor trust ratio r and its parts r1, r2 at each step."""

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        self._stats: dict[int, Tensor] = {}  # group index -> (3, n_params): rows r, r1, r2

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss.

        Parameters without a gradient are skipped; each group's tensors go to ``_step_tensors``
        in runs sharing a device and dtype, and their r, r1, r2 are recorded."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._before_groups()
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            for bucket in by_device_and_dtype(params, params_with_grad(group)):
                w = [params[j] for j in bucket]
                self._record(gi, group, bucket, *self._step_tensors(group, w))
        return loss

    def _before_groups(self) -> None:
        """What a step does over every group at once before stepping them (e.g. a global
        gradient clip); nothing by default."""

    def _step_tensors(self, group: dict, w: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Update the tensors ``w`` of ``group`` in place; return their r, r1, r2 as vectors.
        Each optimizer defines it: the whole step of its rule, in its own file."""
        raise NotImplementedError

    def trust_stats(self) -> dict:
        """The latest r, r1, r2 of every parameter tensor, in parameter order.

        Returns ``{"name": [str], "r": Tensor, "r1": Tensor, "r2": Tensor}``; names come from
        ``named_parameters()`` when those were given, else ``"group{i}.param{j}"``. A tensor that
        has not been stepped yet reads NaN. The tensors stay on the parameters' device: reading
        their values is the only thing that synchronises.
        """
        names, rows, kept_out = [], [], []
        for gi, group in enumerate(self.param_groups):
            given = group.get("param_names")
            group_names = given if given else [f"group{gi}.param{j}" for j in range(len(group["params"]))]
            names += group_names
            kept_out += group_names if self._kept_out(group) else []
            rows.append(self._group_stats(gi, group))
        device = rows[0].device if rows else "cpu"
        table = torch.cat([row.to(device) for row in rows], dim=1) if rows else torch.empty(3, 0)
        return {"name": names, "r": table[0], "r1": table[1], "r2": table[2], "kept_out": kept_out}

    def _kept_out(self, group: dict) -> bool:
        """Whether the group's tensors are kept out of the trust ratio (r = 1); none by default."""
        return False

    def _group_stats(self, gi: int, group: dict) -> Tensor:
        if gi not in self._stats:
            p = group["params"][0]
            self._stats[gi] = torch.full((3, len(group["params"])), float("nan"),
                                         dtype=p.dtype, device=p.device)
        return self._stats[gi]

    def _record(self, gi: int, group: dict, index: list[int], r: Tensor, r1: Tensor,
                r2: Tensor) -> None:
        """Store the stats (each a vector over ``index``) of the tensors just stepped."""
        table = self._group_stats(gi, group)
        rows = torch.stack([r, r1, r2]).to(table.device, table.dtype, non_blocking=True)
        if len(index) == table.shape[1]:
            table.copy_(rows)  # the common case: every tensor had a gradient
        else:
            table[:, index] = rows


def params_with_grad(group: dict) -> list[int]:
    """Indices of the group's parameters that have a gradient; sparse gradients are refused."""
    index = []
    for j, p in enumerate(group["params"]):
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("sparse gradients are not supported; use a dense layer")
        index.append(j)
    return index


def by_device_and_dtype(params: list[Tensor], index: list[int]) -> list[list[int]]:
    """Split ``index`` into runs sharing a device and dtype, as ``torch._foreach_*`` needs."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for j in index:
        buckets[(params[j].device, params[j].dtype)].append(j)
    return list(buckets.values())


CPU_CHUNK_NUMEL = 1 << 18  # ~1 MiB of float32: a chunk's tensors stay in cache across the step's ops


def cache_chunks(w: list[Tensor]) -> list[list[Tensor]]:
    """Split one device's tensors into the runs a multi-tensor step should take at once.

    On an accelerator, one run: ``torch._foreach_*`` launches one kernel for all of them.
    On the CPU, a foreach op is a loop over tensors, so running the whole list through each op
    in turn streams every tensor through memory once per op; runs of about ``CPU_CHUNK_NUMEL``
    elements keep a run in cache from the first op to the last (faster on large models:
    docs/optimizer.md, ``make bench-optim``). A larger tensor is a run of its own; the smaller
    ones fill runs in their order, past the large ones between them (fewer, fuller runs).
    """
    if not w or w[0].device.type != "cpu":
        return [w]
    runs, run, size = [], [], 0
    for p in w:
        if p.numel() > CPU_CHUNK_NUMEL:
            runs.append([p])
            continue
        if run and size + p.numel() > CPU_CHUNK_NUMEL:
            runs.append(run)
            run, size = [], 0
        run.append(p)
        size += p.numel()
    if run:
        runs.append(run)
    return runs


def in_cache_chunks(step, w: list[Tensor]) -> list[Tensor]:
    """``step`` (tensors → r, r1, r2) over the cache-sized runs of ``w`` (``cache_chunks``), its
    r, r1, r2 joined back in the order of ``w``."""
    runs = cache_chunks(w)
    stats = [torch.cat(col) for col in zip(*(step(run) for run in runs))]
    position = {id(p): j for j, p in enumerate(w)}
    order = [position[id(p)] for run in runs for p in run]
    if order == sorted(order):
        return stats
    back = torch.tensor(order).argsort().to(stats[0].device)
    return [x[back] for x in stats]


class Scratch:
    """Temporaries for a multi-tensor step on the CPU, allocated once and reused at every step.

    torch's CPU allocator is plain malloc: a step that allocates its temporaries anew (g + λ·w,
    √v + ε, m/(√v + ε)) asks the kernel for fresh pages whenever glibc has returned the last ones,
    and how often it does depends on the process's history (glibc's dynamic mmap threshold). On a
    25M-parameter stack that was tens of thousands of page faults a step and a 3× spread between
    processes (docs/optimizer.md). Here each slot is one flat buffer per device and dtype, as large
    as the largest cache chunk, and a chunk's temporaries are views into it."""

    def __init__(self):
        self._flat: dict[tuple, Tensor] = {}  # (slot, device, dtype) -> 1-D buffer
        self._views: dict[tuple, list[Tensor]] = {}  # (slot, device, dtype, shapes) -> views

    def like(self, slot: int, xs: list[Tensor]) -> list[Tensor]:
        """Tensors shaped as ``xs`` (contents undefined), the same memory at every call with
        the same ``slot``: a step must be done with a slot's tensors before it asks again."""
        shapes = tuple((x.shape, _dense_strides(x)) for x in xs)
        key = (slot, xs[0].device, xs[0].dtype, shapes)
        if key not in self._views:
            if len(self._views) > 256:  # the set of tensors with a gradient keeps changing
                self._views.clear()
            # Each view has the memory layout of the tensor it stands for (channels-last convolution
            # weights too) and starts on a 64-byte boundary, as a tensor of its own would:
            # reductions (the norms of r1, r2) then add in the same order, to the last bit.
            align = max(64 // xs[0].element_size(), 1)
            starts, end = [], 0
            for x in xs:
                starts.append(end)
                end += -(-x.numel() // align) * align
            flat_key = key[:3]
            flat = self._flat.get(flat_key)
            if flat is None or flat.numel() < end:
                flat = self._flat[flat_key] = torch.empty(end + align, device=xs[0].device,
                                                          dtype=xs[0].dtype)
                self._views = {k: v for k, v in self._views.items() if k[:3] != flat_key}
            base = (-(flat.data_ptr() // xs[0].element_size())) % align  # first aligned element
            self._views[key] = [torch.as_strided(flat, x.shape, strides, base + s)
                                for s, x, (_, strides) in zip(starts, xs, shapes)]
        return self._views[key]


def _dense_strides(x: Tensor) -> tuple[int, ...]:
    """``x``'s strides when its elements fill its memory without gaps (contiguous or channels-last),
    else those of a contiguous tensor of its shape."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return tuple(x.stride())
    return tuple(torch.empty(x.shape, device="meta").stride())


def check_range(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}: {value!r} (must be {allowed})")
