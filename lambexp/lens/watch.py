"""``watch``: the post's per-layer view of any PyTorch training, through the optimizer's step hooks.

At a watched step (the 1st optimizer step, then every ``every``-th) the pre-step hook copies the
weights and notes each tensor's learning rate; the post-step hook measures r, r1, r2 and the relative
step of every tensor that had a gradient (``measure.py``), writes them as a lambexp run does
(TensorBoard and metrics.jsonl, x = optimizer steps taken before this one), and drops the copy. On the
other steps the hooks only count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lambexp.base.files import METRICS_FILE
from lambexp.errors import UserError
from lambexp.folders.layout import make_run_dir, writable_folder, write_json
from lambexp.lens.folder import LENS_FILE
from lambexp.lens.kinds import kind_of, named_kinds
from lambexp.lens.measure import KEYS, step_stats, take_norms
from lambexp.training.sinks import TRUST_KEYS, JsonlSink, TensorBoardSink

DEFAULT_ROOT = Path("runs/watch")


@dataclass
class _Pending:
    """What a watched step's pre-hook hands its post-hook."""

    params: list[Tensor]  # every tensor of the optimizer, in group order
    names: list[str]
    before: list[Tensor | None]  # their weights before the step (None: no gradient to step with)
    lr: list[Tensor]  # the learning rate of each tensor's group, at this step


class Watch:
    """The handle ``watch`` returns: ``close()`` (or leaving a ``with`` block) removes the hooks and
    flushes what was written. ``steps`` counts the optimizer steps taken while watching; ``skipped``
    counts the tensors left out at watched steps because they had no gradient."""

    def __init__(self, optimizer: Optimizer, model: nn.Module | None, logdir: Path, every: int,
                 write: bool = True):
        self.optimizer, self.logdir, self.every = optimizer, logdir, every
        self.steps = self.skipped = 0
        self._names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self._kinds = named_kinds(model) if model is not None else {}
        self._pending: _Pending | None = None
        self._described: dict[str, str] = {}  # lens.json's kinds: every tensor written so far
        self._sinks = _open_sinks(logdir) if write else None
        self._hooks = [optimizer.register_step_pre_hook(self._before_step),
                       optimizer.register_step_post_hook(self._after_step)] if write else []

    @property
    def closed(self) -> bool:
        return not self._hooks

    def close(self) -> None:
        """Remove the hooks and flush; stepping afterwards writes nothing. Idempotent."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._pending = [], None
        if self._sinks is not None:
            for sink in self._sinks:
                sink.__exit__(None, None, None)
            self._sinks = None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the hooks ------------------------------------------------------------------------------

    @torch.no_grad()
    def _before_step(self, optimizer: Optimizer, args, kwargs) -> None:
        if self.steps % self.every:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        lrs = [torch.as_tensor(group["lr"], dtype=torch.float64)
               for group in optimizer.param_groups for _ in group["params"]]
        names = self._tensor_names()
        _refuse_sharded(params)
        # A step given a closure computes the gradients inside it, after this hook: copy every
        # tensor that can get one, and keep those that did in the post-step hook.
        before = [p.detach().clone() if p.requires_grad else None for p in params]
        self._pending = _Pending(params, names, before, lrs)

    @torch.no_grad()
    def _after_step(self, optimizer: Optimizer, args, kwargs) -> None:
        x, self.steps = self.steps, self.steps + 1
        pending, self._pending = self._pending, None
        if pending is None:
            return
        kept = [i for i, (p, b) in enumerate(zip(pending.params, pending.before))
                if b is not None and p.grad is not None]
        measured = set(kept)
        skipped = [name for i, name in enumerate(pending.names) if i not in measured]
        self.skipped += len(skipped)
        if kept:
            r1, step = take_norms([pending.before[i] for i in kept], [pending.params[i] for i in kept])
            table = step_stats(r1, step, torch.stack([pending.lr[i] for i in kept]))
            names = [pending.names[i] for i in kept]
            self._write(x, names, table, skipped)
        applied = getattr(optimizer, "trust_stats", None)
        if callable(applied):  # lambexp's Lamb and Lars: the r, r1, r2 the step applied
            self._write_applied(x, applied())

    # --- writing --------------------------------------------------------------------------------

    def _write(self, x: int, names: list[str], table: Tensor, skipped: list[str]) -> None:
        stats = {"name": names, **dict(zip(KEYS, table.cpu())), "skipped": skipped}
        tensorboard, jsonl = self._sinks
        tensorboard.trust(x, stats)
        tensorboard.scalars(x, {"watch/skipped": len(skipped)})
        jsonl.trust(x, stats)
        self._describe(names)
        for sink in self._sinks:
            sink.flush()

    def _write_applied(self, x: int, stats: dict) -> None:
        """The optimizer's own r, r1, r2 (its ``trust_stats``, in group order) as ``applied/*``."""
        table = torch.stack([stats[k] for k in TRUST_KEYS]).float().cpu()
        stepped = torch.isfinite(table[0])  # NaN: not stepped (yet, or at this step)
        names = [n for n, s in zip(self._tensor_names(), stepped) if s]
        if names:
            on_host = {"name": names, **dict(zip(TRUST_KEYS, table[:, stepped]))}
            for sink in self._sinks:
                sink.trust(x, on_host, prefix="applied")
            self._sinks[1].flush()

    def _tensor_names(self) -> list[str]:
        """Every tensor of the optimizer, in group order: its model name, else group<i>.param<j>."""
        return [self._names.get(id(p), f"group{gi}.param{j}")
                for gi, group in enumerate(self.optimizer.param_groups)
                for j, p in enumerate(group["params"])]

    def _describe(self, names: list[str]) -> None:
        """lens.json: every tensor written so far with its kind, so the figures can group them."""
        ndims = dict(zip(self._tensor_names(), (p.ndim for g in self.optimizer.param_groups
                                                for p in g["params"])))
        new = {n: self._kinds.get(n) or kind_of(n, ndims.get(n, 0))
               for n in names if n not in self._described}
        if new:
            self._described.update(new)
            write_json(self.logdir / LENS_FILE, {"every": self.every, "kinds": self._described})


def watch(optimizer: Optimizer, model: nn.Module | None = None, logdir: str | os.PathLike | None = None,
          every: int = 30) -> Watch:
    """Watch ``optimizer``'s steps: per parameter tensor, how large the step is against the weight.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (torch's, timm's, lambexp's Lamb and Lars, …); a
            wrapper that holds one in ``.optimizer`` (Hugging Face Accelerate's) is unwrapped.
        model: names the tensors by ``model.named_parameters()``; without it they are
            ``group<i>.param<j>``.
        logdir: where to write (created); default ``runs/watch/<UTC time>``.
        every: watch the 1st optimizer step and every ``every``-th after it (1, 31, 61, … for 30).

    At a watched step, for each tensor with a gradient: r1 = ‖w‖ before the step, r2 = ‖Δw‖ / lr
    (lr of its param group at that step), r = r1 / r2 (1 where either is 0: the ratio LAMB would
    apply) and relative_step = ‖Δw‖ / ‖w‖, written to TensorBoard (``trust/*``,
    ``trust_layer/<name>/*``) and metrics.jsonl at x = optimizer steps taken before it. Under
    torchrun only rank 0 writes; the other ranks' hooks do nothing.

    Returns:
        a ``Watch``; ``close()`` it, or use it in a ``with`` block.
    """
    optimizer = _unwrap(optimizer)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"lambexp.watch: every must be a whole number of steps, at least 1 (got {every!r})")
    if not any(group["params"] for group in optimizer.param_groups):
        raise ValueError("lambexp.watch: the optimizer has no parameters to watch")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"lambexp.watch: model must be a torch.nn.Module (got {type(model).__name__})")
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module  # names without the wrapper's "module." prefix
    if not _lead():
        return Watch(optimizer, model, Path(logdir or DEFAULT_ROOT), every, write=False)
    _refuse_sharded([p for group in optimizer.param_groups for p in group["params"]])
    try:
        folder = writable_folder(Path(logdir), "logdir") if logdir is not None else make_run_dir(DEFAULT_ROOT)
    except UserError as err:
        raise ValueError(f"lambexp.watch: {err}") from None
    if (folder / METRICS_FILE).exists() or (folder / LENS_FILE).exists():
        raise ValueError(f"lambexp.watch: {folder} already holds a training's records; pass a new logdir"
                         " (or none, for runs/watch/<UTC time>)")
    return Watch(optimizer, model, folder, every)


def _unwrap(optimizer) -> Optimizer:
    inner = optimizer
    while not isinstance(inner, Optimizer) or type(inner).__name__ == "AcceleratedOptimizer":
        if not isinstance(getattr(inner, "optimizer", None), Optimizer):
            break
        inner = inner.optimizer
    if not isinstance(inner, Optimizer):
        raise TypeError(f"lambexp.watch: expected a torch.optim.Optimizer (got {type(optimizer).__name__})")
    return inner


def _lead() -> bool:
    """Rank 0 writes; without a process group every process is its own lead."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _refuse_sharded(params: list[Tensor]) -> None:
    """A shard's norm is not its layer's: refuse FSDP's and DTensor's parameters rather than record
    a wrong number."""
    for p in params:
        if type(p).__name__ in ("DTensor", "FlatParameter") or getattr(p, "_is_flat_param", False):
            raise ValueError("lambexp.watch: sharded parameters (FSDP, DTensor) are not supported: a"
                             " shard's norm is not its layer's; watch an unsharded (e.g. DDP) training")


def _open_sinks(logdir: Path) -> tuple[TensorBoardSink, JsonlSink]:
    return TensorBoardSink(logdir), JsonlSink(logdir / METRICS_FILE)
