"""The stacked core (lambexp/training/stack.py): N members trained as one stacked model equal the
same members trained one by one, in float64 to 1e-10, weights and trust ratios, for LAMB of two
rules, Adam mode and LARS, each member with its own seed, data order and hyper-parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.training.stack import Stack

F64 = torch.float64
MEMBERS = [  # (optimizer, hyper-parameters): each member its own
    ("lamb", dict(lr=0.01, betas=(0.9, 0.99), eps=None, weight_decay=0.0, rule="blog", clamp=10.0)),
    ("lamb", dict(lr=0.02, betas=(0.9, 0.999), eps=None, weight_decay=0.01, rule="paper", clamp=10.0)),
    ("adam", dict(lr=0.005, betas=(0.9, 0.99), eps=None, weight_decay=0.0, rule="blog", clamp=10.0)),
    ("lars", dict(lr=0.1, momentum=0.9, weight_decay=0.0005, trust_coefficient=0.001)),
    ("lamb", dict(lr=0.01, betas=(0.9, 0.999), eps=None, weight_decay=0.01, rule="timm", clamp=None)),
]


def models(n: int) -> list[torch.nn.Module]:
    """Member i is LeNet initialised after torch.manual_seed(i + 1), in float64."""
    out = []
    for i in range(n):
        torch.manual_seed(i + 1)
        out.append(build_model("lenet").to(F64))
    return out


def data_and_orders(n: int, steps: int, batch: int = 8):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, dtype=F64), torch.randint(0, 10, (32,))
    orders = [torch.randint(0, 32, (steps, batch), generator=torch.Generator().manual_seed(100 + i))
              for i in range(n)]
    return x, y, orders


def one_by_one(steps: int, frozen_from: dict[int, int] | None = None):
    """Each member alone: its model, its optimizer, its batches; a member in ``frozen_from`` stops
    stepping from that step on. Returns the models and optimizers."""
    frozen_from = frozen_from or {}
    nets = models(len(MEMBERS))
    x, y, orders = data_and_orders(len(MEMBERS), steps)
    opts = [build_optimizer(name, list(net.named_parameters()), **h) for net, (name, h) in zip(nets, MEMBERS)]
    for i, (net, opt) in enumerate(zip(nets, opts)):
        for t in range(min(steps, frozen_from.get(i, steps))):
            opt.zero_grad()
            F.nll_loss(net(x[orders[i][t]]), y[orders[i][t]]).backward()
            opt.step()
    return nets, opts


def stacked(steps: int, frozen_from: dict[int, int] | None = None):
    frozen_from = frozen_from or {}
    stack = Stack(models(len(MEMBERS)))
    x, y, orders = data_and_orders(len(MEMBERS), steps)
    opts = [build_optimizer(name, stack.member_params(i), **h) for i, (name, h) in enumerate(MEMBERS)]
    for t in range(steps):
        idx = torch.stack([o[t] for o in orders])  # (N, B)
        active = torch.tensor([t < frozen_from.get(i, steps) for i in range(len(MEMBERS))])
        stack.backward(stack.losses(x[idx], y[idx]), active)
        for i, opt in enumerate(opts):
            if active[i]:
                opt.step()
    return stack, opts


@pytest.mark.parametrize("frozen_from", [{}, {1: 2, 3: 0}])
def test_a_stack_equals_its_members_trained_one_by_one(frozen_from):
    """Six steps; with ``frozen_from``, member 1 stops after 2 steps and member 3 never steps (a
    diverged member stops updating): the others are unaffected and equal their lone runs."""
    nets, lone_opts = one_by_one(6, frozen_from)
    stack, opts = stacked(6, frozen_from)
    for i, net in enumerate(nets):
        ours = stack.member_state_dict(i)
        for name, p in net.named_parameters():
            torch.testing.assert_close(ours[name], p.detach(), rtol=1e-10, atol=1e-12, msg=f"{i} {name}")
        if i in frozen_from and frozen_from[i] == 0:
            continue  # never stepped: no trust ratios
        for key in ("r", "r1", "r2"):
            torch.testing.assert_close(opts[i].trust_stats()[key], lone_opts[i].trust_stats()[key],
                                       rtol=1e-10, atol=1e-12)
    torch.manual_seed(4)  # member 3 in its initial state when frozen from step 0
    if frozen_from.get(3) == 0:
        fresh = build_model("lenet").to(F64)
        for name, p in fresh.named_parameters():
            assert torch.equal(stack.member_state_dict(3)[name], p.detach())


def test_each_member_has_its_own_trust_ratios():
    """Two members of one rule on different data: different r (the norms are per member), and the
    per-layer r of each equals its lone run's, not a mix."""
    nets, lone_opts = one_by_one(2)
    _, opts = stacked(2)
    r0, r4 = opts[0].trust_stats()["r"], opts[4].trust_stats()["r"]
    assert not torch.allclose(r0, r4)
    torch.testing.assert_close(r0, lone_opts[0].trust_stats()["r"], rtol=1e-10, atol=1e-12)


def test_a_model_whose_layers_mix_a_batch_is_refused_for_stacking():
    """BatchNorm normalises each sample by its batch: stacked, a member's padding would enter its
    statistics, so the stack refuses it, naming the layer; layers that work per sample stack."""
    from torch import nn

    from lambexp.errors import UserError
    from lambexp.training.stack import check_stackable

    def net(norm):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), norm, nn.Linear(16, 10), nn.LogSoftmax(1))

    with pytest.raises(UserError) as refused:
        Stack([net(nn.BatchNorm1d(16)), net(nn.BatchNorm1d(16))])
    assert str(refused.value) == ("--stack: Sequential has layers that mix the samples of a batch"
                                  " (2 (BatchNorm1d)), which stacked trainings cannot keep apart;"
                                  " train it with --stack off")
    for per_sample in (nn.LayerNorm(16), nn.GroupNorm(4, 16), nn.Identity()):
        check_stackable(net(per_sample))
    check_stackable(build_model("lenet"))
    Stack([net(nn.LayerNorm(16)), net(nn.LayerNorm(16))])
