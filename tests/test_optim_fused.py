"""Lamb(fused=True), the torch.compile'd step of optim/fast/fused.py, against the reference step
(foreach=False)."""

from functools import partial

import optim_helpers
import pytest
import torch
from optim_helpers import train
from torch import nn

from lambexp.base.variants import VARIANTS
from lambexp.optim import Lamb
from lambexp.optim.fast import fused

F64 = torch.float64


# float32, and a 6×700 weight (over 4096 elements) that takes a kernel call of its own; the other
# three tensors are packed into one call.
small_net = partial(optim_helpers.small_net, dtype=torch.float32, width=700)
batches = partial(optim_helpers.batches, dtype=torch.float32)


def assert_same(net_a, opt_a, net_b, opt_b, data, tol):
    for x, y in zip(train(net_a, opt_a, data), train(net_b, opt_b, data), strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
    for key in ("r", "r1", "r2"):
        torch.testing.assert_close(opt_a.trust_stats()[key], opt_b.trust_stats()[key], rtol=tol, atol=tol)


CASES = {
    "blog": dict(rule="blog", weight_decay=0.01),
    "blog-adam": dict(rule="blog", adam=True),
    "blog-no-clamp": dict(rule="blog", weight_decay=0.01, clamp=None),
    "paper": dict(rule="paper", weight_decay=0.01),
    "paper-adam": dict(rule="paper", weight_decay=0.01, adam=True),
    "paper-no-clamp-no-bias-correction": dict(rule="paper", clamp=None, bias_correction=False),
}


@pytest.mark.parametrize("case", CASES)
def test_fused_equals_reference_path(case, dtype=torch.float32):
    data = batches(10, dtype=dtype)
    a, b = small_net(dtype=dtype), small_net(dtype=dtype)
    fast = Lamb(a.parameters(), lr=0.01, fused=True, **CASES[case])
    slow = Lamb(b.parameters(), lr=0.01, foreach=False, **CASES[case])
    assert_same(a, fast, b, slow, data, 1e-12 if dtype == F64 else 1e-5)
    assert not fast._fused.failed  # compiled, not the foreach fallback compared with itself


@pytest.mark.parametrize("rule", VARIANTS)
def test_every_rule_compiles_from_its_variant_equal_to_the_reference(rule):
    """The compiled step is rules.lamb_update of the rule's Variant, so a new row of variants.py
    compiles with nothing written here: each rule's own defaults (clip, adaptation), with decay."""
    compiled_against_reference(dict(rule=rule, weight_decay=0.01))


@pytest.mark.parametrize("options", [
    dict(rule="timm", weight_decay=0.01, trust_clip=0.5),  # LAMBC's clip, binding
    dict(rule="paper", weight_decay=0.0, always_adapt=False),  # no decay: no tensor adapted
    dict(rule="blog", weight_decay=0.01, trust_ratio=False),  # kept out: r = 1
], ids=["trust_clip", "always_adapt-false", "trust_ratio-false"])
def test_the_compiled_step_takes_every_option(options):
    fast = compiled_against_reference(options)
    r = fast.trust_stats()["r"]
    assert (r == 0.5).any() if "trust_clip" in options else torch.equal(r, torch.ones_like(r))


def compiled_against_reference(options: dict, dtype=torch.float32) -> Lamb:
    data = batches(10, dtype=dtype)
    a, b = small_net(dtype=dtype), small_net(dtype=dtype)
    fast = Lamb(a.parameters(), lr=0.01, fused=True, **options)
    slow = Lamb(b.parameters(), lr=0.01, foreach=False, **options)
    assert_same(a, fast, b, slow, data, 1e-5)
    assert not fast._fused.failed
    return fast


@pytest.mark.parametrize("case", ["blog", "paper"])
def test_fused_equals_reference_path_in_float64(case):
    # the cases differ only in the values of hp, so two cover float64's own graphs
    test_fused_equals_reference_path(case, dtype=F64)


@pytest.mark.parametrize("rule", ["blog", "paper"])
def test_twenty_steps_with_a_changing_lr_do_not_recompile(rule):
    net = small_net()
    opt = Lamb(net.parameters(), lr=0.01, weight_decay=0.01, rule=rule, fused=True)
    train(net, opt, batches(2))  # compiles (or finds the graph compiled by an earlier test)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
    with torch._dynamo.config.patch(error_on_recompile=True):
        train(net, opt, batches(20, seed=2), scheduler)


def test_an_empty_tensor_is_stepped_like_the_reference():
    def params():
        torch.manual_seed(0)
        return [nn.Parameter(torch.empty(0)), nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3))]

    a, b = params(), params()
    fast, slow = Lamb(a, lr=0.1, fused=True), Lamb(b, lr=0.1, foreach=False)
    for opt, ps in ((fast, a), (slow, b)):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    torch.testing.assert_close(a, b)
    for key in ("r", "r1", "r2"):
        torch.testing.assert_close(fast.trust_stats()[key], slow.trust_stats()[key])


def test_fused_with_foreach_false_is_refused():
    with pytest.raises(ValueError, match="fused=True and foreach=False"):
        Lamb(small_net().parameters(), fused=True, foreach=False)


def test_a_compile_failure_warns_once_and_finishes_with_foreach(monkeypatch):
    calls = []

    real_kernel = fused.kernel

    def failing_kernel(rule):
        real = real_kernel(rule)

        def step(*args):
            calls.append(1)
            if len(calls) == 2:  # the second tensor of the first step: the first is already done
                raise fused.CompileFailed("no working C++ compiler")
            return real(*args)
        return step

    data = batches(3)
    a, b = small_net(), small_net()
    fast = Lamb(a.parameters(), lr=0.01, weight_decay=0.01, fused=True)
    slow = Lamb(b.parameters(), lr=0.01, weight_decay=0.01, foreach=False)
    monkeypatch.setattr(fused, "kernel", failing_kernel)
    with pytest.warns(UserWarning, match="torch.compile failed") as caught:
        assert_same(a, fast, b, slow, data, 1e-5)
    assert len(caught) == 1 and len(calls) == 2


@pytest.mark.parametrize("rule, clamp", [("blog", 0.05), ("paper", 0.05)])
def test_fused_where_the_clip_binds_and_a_tensor_is_zero(rule, clamp):
    """The blog rule's clip of r (and the paper rule's clamp of ‖w‖) binding on some tensors, and a
    tensor of zeros (r1 = 0: r must be 1), compiled, against the reference path."""
    def net():
        model = small_net()
        with torch.no_grad():
            model[2].bias.zero_()  # r1 = 0 at the first step
        return model

    a, b = net(), net()
    fast = Lamb(a.parameters(), lr=0.01, rule=rule, clamp=clamp, weight_decay=0.01, fused=True)
    slow = Lamb(b.parameters(), lr=0.01, rule=rule, clamp=clamp, weight_decay=0.01, foreach=False)
    data = batches(1)
    assert_same(a, fast, b, slow, data, 1e-5)
    assert not fast._fused.failed
    stats = slow.trust_stats()
    assert stats["r"][3] == 1.0 and stats["r1"][3] == 0.0  # the zero bias: r1 = 0, so r = 1
    if rule == "blog":
        assert (stats["r"] == clamp).any()  # the clip bound somewhere
    else:
        assert (stats["r1"] == clamp).any()  # ‖w‖ clamped somewhere
    assert_same(a, fast, b, slow, batches(5, seed=2), 1e-5)  # and on from there
