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


def check_range(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}: {value!r} (must be {allowed})")
