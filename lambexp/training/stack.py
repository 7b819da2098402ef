"""Many trainings of one model as one: the members' parameters stacked along a new first dimension,
one forward and one backward for all of them (``torch.func.vmap`` over ``functional_call``), and each
member's own optimizer stepping its own slices.

What stays each member's own: its initial weights (built from its seed), its batches (its own data
order), its hyper-parameters and optimizer (LAMB of any rule, Adam mode, LARS, each with its own
state), and so its trust ratios: a member's optimizer sees only views of its own slices, so no norm
ever mixes two members' tensors. The summed loss's gradient with respect to member i's slice is
member i's own gradient, since no member's loss reads another's parameters, nor, since a model with
layers that mix a batch's samples (BatchNorm) is refused, another sample's padding.

This is the computing core: it equals the same members trained one by one to float rounding
(tests/test_stack.py). ``lambexp.training.members`` steps the members' trainings on it, each of which
logs, evaluates and checkpoints as a lone one does.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from lambexp.errors import UserError

# Layers whose output for one sample depends on the other samples of its batch: stacked, a member's
# padded rows (lambexp.training.members) would enter its statistics, so such a model is refused.
CROSS_SAMPLE = (nn.modules.batchnorm._BatchNorm,)


def check_stackable(model: nn.Module) -> None:
    """A UserError when ``model`` has layers that mix the samples of a batch (BatchNorm)."""
    mixing = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
              if isinstance(m, CROSS_SAMPLE)]
    if mixing:
        raise UserError(f"--stack: {type(model).__name__} has layers that mix the samples of a batch"
                        f" ({', '.join(mixing)}), which stacked trainings cannot keep apart; train it"
                        " with --stack off")


class Stack:
    """N models of one architecture as one stacked model.

    ``params[name]`` is a leaf tensor of shape (N, *shape) that autograd differentiates;
    ``member_params(i)`` gives member i's ``(name, tensor)`` pairs, views of its slices that
    optimizers step in place (they are leaves without autograd history, sharing the memory).
    """

    def __init__(self, models: list[nn.Module]):
        if not models:
            raise ValueError("a stack needs at least one model")
        check_stackable(models[0])
        self.size = len(models)
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}  # leaves of our own
        self.buffers = buffers
        self._base = copy.deepcopy(models[0]).to("meta")
        self._members = [[(name, p.detach()[i]) for name, p in self.params.items()]
                         for i in range(self.size)]

    def member_params(self, i: int) -> list[tuple[str, Tensor]]:
        """Member i's named parameters: views of its slices, in the model's parameter order."""
        return self._members[i]

    def bind(self, models: list[nn.Module]) -> None:
        """Make each model's own parameters aliases of its slices (``p.data = slice``): the same
        Parameter objects, so an optimizer built on them, a checkpoint loaded into them or an
        evaluation of the model reads and writes the stack. ``backward`` then fills their ``.grad``."""
        for i, model in enumerate(models):
            named = list(model.named_parameters())
            if [name for name, _ in named] != list(self.params):
                raise ValueError("bind: a model of another architecture than the stack's")
            for (_, p), (_, view) in zip(named, self._members[i]):
                p.data = view
            self._members[i] = named

    def forward(self, x: Tensor) -> Tensor:
        """The members' outputs for their own inputs: x (N, B, ...) → (N, B, ...)."""
        def one(params, buffers, xb):
            return functional_call(self._base, (params, buffers), (xb,))

        return vmap(one)(self.params, self.buffers, x)

    def losses(self, x: Tensor, y: Tensor, counts: list[int] | None = None) -> Tensor:
        """Each member's mean NLL loss on its own batch (x (N, B, ...), y (N, B)) → (N,).
        ``counts``: member i's batch is its first counts[i] rows (the rest is padding, left out)."""
        out = self.forward(x)  # (N, B, C) log-probabilities
        each = F.nll_loss(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        if counts is None:
            return each.mean(dim=1)
        n = torch.tensor(counts, device=each.device)
        mask = torch.arange(each.shape[1], device=each.device) < n[:, None]
        return torch.where(mask, each, 0.0).sum(dim=1) / n  # padding left out, even where inf

    def backward(self, losses: Tensor, active: Tensor | None = None) -> None:
        """Gradients of every member's own loss, handed to its views' ``.grad``. ``active`` (N,)
        bool: members left out get no gradient (their optimizers skip them)."""
        for p in self.params.values():
            p.grad = None
        weights = torch.ones_like(losses) if active is None else active.to(losses.dtype)
        torch.autograd.backward(losses, weights)
        for i, member in enumerate(self._members):
            keep = active is None or bool(active[i])
            for name, view in member:
                view.grad = self.params[name].grad[i] if keep else None

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member i's weights as a model's ``state_dict`` would hold them (copies)."""
        return {name: view.detach().clone() for name, view in self._members[i]}
