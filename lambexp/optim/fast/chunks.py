"""Where a multi-tensor step on the CPU keeps its data in cache and its temporaries: speed only.

``cache_chunks`` splits a device's tensors into the runs a step takes at once; ``Scratch`` holds the
temporaries, allocated once. Neither changes a number: the steps that use them equal the reference
rules bit for bit (tests/test_optim_torch.py)."""

from __future__ import annotations

import torch
from torch import Tensor

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
