"""Lamb/Lars against independent implementations, and everything a torch optimizer must do."""

import copy
import re

import pytest
import timm.optim
import torch
import torch_optimizer
from optim_helpers import batches, small_net, train
from torch import Tensor, nn

from lambexp.base.variants import VARIANTS
from lambexp.optim import Lamb, Lars, build_optimizer
from lambexp.optim.fast.chunks import Scratch
from lambexp.optim.fast.foreach import cpu_adam_kernel, direction
from lambexp.optim.lamb import hyper

F64 = torch.float64


def assert_same(a, b, tol):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_blog_adam_mode_equals_torch_adam_with_l2():
    data = batches()
    a, b = small_net(), small_net()
    mine = Lamb(a.parameters(), lr=0.01, betas=(0.9, 0.99), eps=0.0, weight_decay=0.01, adam=True)
    ref = torch.optim.Adam(b.parameters(), lr=0.01, betas=(0.9, 0.99), eps=0.0, weight_decay=0.01)
    assert_same(train(a, mine, data), train(b, ref, data), 1e-12)


def test_paper_adam_mode_equals_torch_adam():
    data = batches()
    a, b = small_net(), small_net()
    mine = Lamb(a.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6, rule="paper", adam=True)
    ref = torch.optim.Adam(b.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6)
    assert_same(train(a, mine, data), train(b, ref, data), 1e-12)


def test_paper_rule_equals_timm_lamb():
    data = batches()
    a, b = small_net(), small_net()
    mine = Lamb(a.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                rule="paper", clamp=None)
    ref = timm.optim.Lamb(b.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6,
                          weight_decay=0.01, max_grad_norm=None, always_adapt=True)
    assert_same(train(a, mine, data), train(b, ref, data), 1e-12)


def test_paper_rule_equals_torch_optimizer_lamb():
    data = batches()
    a, b = small_net(), small_net()
    mine = Lamb(a.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                rule="paper", clamp=10, bias_correction=False)
    ref = torch_optimizer.Lamb(b.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6,
                               weight_decay=0.01, clamp_value=10, debias=False)
    assert_same(train(a, mine, data), train(b, ref, data), 1e-12)


def test_sgd_mode_equals_torch_sgd():
    data = batches()
    a, b = small_net(), small_net()
    mine = Lars(a.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01, sgd=True)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    assert_same(train(a, mine, data), train(b, ref, data), 1e-12)


OPTIMIZERS = {
    "lamb-blog": lambda p, **kw: Lamb(p, lr=0.01, weight_decay=0.01, **kw),
    "lamb-paper": lambda p, **kw: Lamb(p, lr=0.01, weight_decay=0.01, rule="paper", **kw),
    "adam-blog": lambda p, **kw: Lamb(p, lr=0.01, adam=True, **kw),
    "lars": lambda p, **kw: Lars(p, lr=0.5, weight_decay=0.01, **kw),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_foreach_equals_reference_path(name, dtype):
    data = batches(20, dtype=dtype)
    a, b = small_net(dtype=dtype), small_net(dtype=dtype)
    fast = OPTIMIZERS[name](a.parameters(), foreach=True)
    slow = OPTIMIZERS[name](b.parameters(), foreach=False)
    tol = 1e-12 if dtype == F64 else 1e-5
    assert_same(train(a, fast, data), train(b, slow, data), tol)
    for key in ("r", "r1", "r2"):
        torch.testing.assert_close(fast.trust_stats()[key], slow.trust_stats()[key], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("chunk", [1, 40, 10**6])  # every tensor its own chunk; 48 | 8+24+3; one
def test_chunked_foreach_with_reused_scratch_equals_reference(name, chunk, monkeypatch):
    """The CPU foreach step in cache chunks, its temporaries in buffers reused across chunks and
    steps (and grown when a later chunk is larger), equals the reference path."""
    import lambexp.optim.fast.chunks as chunks

    monkeypatch.setattr(chunks, "CPU_CHUNK_NUMEL", chunk)
    assert len(chunks.cache_chunks(list(small_net().parameters()))) == {1: 4, 40: 2, 10**6: 1}[chunk]
    data = batches(20)
    a, b = small_net(), small_net()
    fast = OPTIMIZERS[name](a.parameters(), foreach=True)
    slow = OPTIMIZERS[name](b.parameters(), foreach=False)
    assert_same(train(a, fast, data), train(b, slow, data), 1e-12)
    for key in ("r", "r1", "r2"):
        torch.testing.assert_close(fast.trust_stats()[key], slow.trust_stats()[key], rtol=1e-12, atol=1e-12)


KERNEL_CASES = {  # every way _adam_kernel_step sets c, ε' and d's start
    **{k: f for k, f in OPTIMIZERS.items() if k != "lars"},
    "lamb-paper-no-bias-correction": lambda p, **kw: Lamb(p, lr=0.01, weight_decay=0.01, rule="paper",
                                                          bias_correction=False, **kw),
    "lamb-blog-clip-binds": lambda p, **kw: Lamb(p, lr=0.01, betas=(0.9, 0.99), clamp=0.05, **kw),
    "lamb-paper-no-decay": lambda p, **kw: Lamb(p, lr=0.01, rule="paper", clamp=0.5, **kw),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", KERNEL_CASES)
def test_large_tensors_take_the_adam_kernel_and_equal_the_reference(name, dtype, monkeypatch):
    """With the chunk size at 10 elements, small_net's 6×8 and 8×3 weights count as large: their
    moments and direction come from torch's fused Adam kernel, their norms from dot products; the
    biases (8, 3) keep the foreach step. Equal to the reference to float rounding, r included."""
    import lambexp.optim.fast.chunks as chunks

    monkeypatch.setattr(chunks, "CPU_CHUNK_NUMEL", 10)
    assert cpu_adam_kernel()  # probed (and cached) before the spy goes in
    calls, kernel = [], torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_",
                        lambda *a, **kw: calls.append(a[0][0].shape) or kernel(*a, **kw))
    data = batches(20, dtype=dtype)
    a, b = small_net(dtype=dtype), small_net(dtype=dtype)
    fast = KERNEL_CASES[name](a.parameters())
    slow = KERNEL_CASES[name](b.parameters(), foreach=False)
    tol = 1e-12 if dtype == F64 else 2e-5
    assert_same(train(a, fast, data), train(b, slow, data), tol)
    assert calls[:2] == [(8, 6), (3, 8)] and len(calls) == 40  # the two weights, 20 steps
    for key in ("r", "r1", "r2"):
        torch.testing.assert_close(fast.trust_stats()[key], slow.trust_stats()[key], rtol=tol, atol=tol)
    if "clip" in name:
        assert (slow.trust_stats()["r"] == 0.05).any()  # the clip bound


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.01}, {"rule": "paper", "weight_decay": 0.01},
                                {"rule": "paper", "bias_correction": False}])
def test_the_accelerator_direction_equals_the_cpu_one(kw):
    """The accelerator path of the elementwise part (foreach ops making new tensors, out=None),
    run here on CPU tensors, equals the CPU path (scratch buffers) bit for bit: m, v and the
    direction. On a GPU the tests above compare it with the reference (skipped without one)."""
    torch.manual_seed(0)
    w = [torch.randn(4, 3), torch.randn(5)]
    g = [torch.randn(4, 3), torch.randn(5)]
    m0, v0 = [torch.randn_like(x) for x in w], [torch.rand_like(x) for x in w]
    runs = []
    for out in (None, [torch.empty(4, 3), torch.empty(5)]):
        group = Lamb([nn.Parameter(x.clone()) for x in w], lr=0.01, **kw).param_groups[0]
        m, v = [x.clone() for x in m0], [x.clone() for x in v0]
        d = direction(w, g, m, v, [hyper(group, 3)] * 2, out, variant=VARIANTS[group["rule"]],
                      scratch=Scratch())
        runs.append((m, v, d))
    for a, b in zip(*runs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_without_a_cpu_adam_kernel_large_tensors_take_the_foreach_step(monkeypatch):
    """torch before 2.4 has no CPU fused Adam: the probe says so and nothing calls the kernel."""
    import lambexp.optim.fast.chunks as chunks
    import lambexp.optim.fast.foreach as foreach

    assert cpu_adam_kernel()  # this torch has it; one without it:
    with monkeypatch.context() as older:
        older.delattr(torch, "_fused_adam_")
        assert not cpu_adam_kernel.__wrapped__()
    monkeypatch.setattr(chunks, "CPU_CHUNK_NUMEL", 10)
    monkeypatch.setattr(foreach, "cpu_adam_kernel", lambda: False)
    monkeypatch.setattr(torch, "_fused_adam_", None)  # a call would raise TypeError
    data = batches(5)
    a, b = small_net(), small_net()
    fast, slow = Lamb(a.parameters(), lr=0.01), Lamb(b.parameters(), lr=0.01, foreach=False)
    assert_same(train(a, fast, data), train(b, slow, data), 1e-12)


def test_a_zero_large_tensor_takes_r_equal_1_through_the_kernel(monkeypatch):
    import lambexp.optim.fast.chunks as chunks

    monkeypatch.setattr(chunks, "CPU_CHUNK_NUMEL", 10)
    for rule in ("blog", "paper"):
        a, b = small_net(), small_net()
        for net in (a, b):
            nn.init.zeros_(net[0].weight)  # r1 = 0: r = 1, the plain Adam step
        fast, slow = Lamb(a.parameters(), lr=0.01, rule=rule), Lamb(b.parameters(), lr=0.01, rule=rule,
                                                                   foreach=False)
        data = batches(3)
        assert_same(train(a, fast, data[:1]), train(b, slow, data[:1]), 1e-12)
        assert fast.trust_stats()["r"][0] == 1.0 and fast.trust_stats()["r1"][0] == 0.0
        assert_same(train(a, fast, data[1:]), train(b, slow, data[1:]), 1e-12)


def test_scratch_reuses_its_memory_and_grows_for_a_larger_chunk():

    scratch = Scratch()
    small = scratch.like(0, [torch.zeros(2, 3), torch.zeros(4)])
    assert [t.shape for t in small] == [(2, 3), (4,)]
    again = scratch.like(0, [torch.zeros(2, 3), torch.zeros(4)])
    assert again[0].data_ptr() == small[0].data_ptr()  # the same memory, not a new allocation
    other = scratch.like(0, [torch.zeros(5)])
    assert other[0].data_ptr() == small[0].data_ptr()  # another layout, still the same buffer
    assert scratch.like(1, [torch.zeros(5)])[0].data_ptr() != other[0].data_ptr()  # slots differ
    big = scratch.like(0, [torch.zeros(100)])  # larger than the buffer: it grows
    assert big[0].shape == (100,) and scratch.like(0, [torch.zeros(2, 3)])[0].numel() == 6


def test_scratch_views_have_the_layout_and_alignment_of_their_tensors():
    """A reduction over a view adds in the order a tensor of its own would (same strides, a
    64-byte boundary), so the step is bit for bit the one that allocates fresh temporaries."""

    conv = torch.zeros(20, 1, 5, 5).to(memory_format=torch.channels_last)
    xs = [torch.zeros(3), conv, torch.zeros(7, 9), torch.zeros(5).expand(4, 5)]
    views = Scratch().like(0, xs)
    assert [v.stride() for v in views[:3]] == [x.stride() for x in xs[:3]]
    assert views[1].is_contiguous(memory_format=torch.channels_last)
    assert views[3].is_contiguous() and views[3].shape == (4, 5)  # not dense: a contiguous stand-in
    assert all(v.data_ptr() % 64 == 0 for v in views)
    assert len({v.data_ptr() for v in views}) == 4


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name):
    data = batches(20)
    net = small_net()
    opt = OPTIMIZERS[name](net.parameters())
    train(net, opt, data[:10])
    twin = copy.deepcopy(net)
    twin_opt = OPTIMIZERS[name](twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    after = train(net, opt, data[10:])
    twin_after = train(twin, twin_opt, data[10:])
    for x, y in zip(after, twin_after, strict=True):
        assert torch.equal(x, y)


SCALE_FREE = {  # no weight decay, no eps, no clip of r: the layer-wise rules' step is then ∝ ||w||
    "lamb-blog": lambda p: Lamb(p, lr=0.02, eps=1e-30, clamp=None),
    "lamb-paper": lambda p: Lamb(p, lr=0.02, eps=1e-30, rule="paper"),
    "lars": lambda p: Lars(p, lr=5.0),
    "adam-blog": lambda p: Lamb(p, lr=0.02, eps=1e-30, adam=True),  # a fixed step: not scale-free
}


def descend_quadratic(make, scale: float, steps: int = 400) -> tuple[Tensor, list[float]]:
    """Minimise ||w - scale·t||² from w = scale·(0.3 + 0.1·t'): w/scale after each step (steps, 5, 5)
    and each step's loss/scale²."""
    torch.manual_seed(0)
    target, start = torch.randn(5, 5, dtype=F64), 0.3 + 0.1 * torch.randn(5, 5, dtype=F64)
    w = nn.Parameter(scale * start)
    opt = make([w])
    path, losses = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((w - scale * target) ** 2).sum()
        loss.backward()
        losses.append(loss.item() / scale**2)
        opt.step()
        path.append(w.detach() / scale)
    return torch.stack(path), losses


@pytest.mark.parametrize("name", SCALE_FREE)
def test_a_quadratic_is_solved_and_the_layerwise_path_does_not_depend_on_scale(name):
    """LAMB's and LARS's step is a fraction of ||w||: the same problem 1000× smaller follows the same
    path 1000× smaller (and is solved); Adam's step is lr-sized whatever the scale, so its path differs.
    Compared over the first 150 steps: near the minimum the oscillation amplifies rounding."""
    path, losses = descend_quadratic(SCALE_FREE[name], 1.0)
    small, _ = descend_quadratic(SCALE_FREE[name], 1e-3, steps=150)
    assert losses[-1] < 1e-3 * losses[0]
    assert torch.allclose(small, path[:150], rtol=0, atol=1e-9) == (name != "adam-blog")


def test_params_without_grad_are_untouched_and_read_nan():
    net = small_net()
    frozen = net[2].weight
    before = frozen.detach().clone()
    opt = Lamb(net.named_parameters(), lr=0.1)
    opt.zero_grad()
    net(torch.randn(4, 6, dtype=F64)).sum().backward()
    frozen.grad = None
    opt.step()
    assert torch.equal(frozen.detach(), before)
    assert frozen not in opt.state
    stats = opt.trust_stats()
    assert stats["name"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert torch.isnan(stats["r"][2]) and not torch.isnan(stats["r"][[0, 1, 3]]).any()


def test_param_groups_keep_biases_out_of_decay_and_adaptation():
    net, twin = small_net(), small_net()
    data = batches(10)
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = Lamb([{"params": weights}, {"params": biases, "weight_decay": 0.0, "adam": True}],
               lr=0.01, betas=(0.9, 0.99), eps=0.0, weight_decay=0.1)
    train(net, opt, data)
    # the biases, alone, must have moved exactly as under torch's Adam without decay:
    # replay the same gradients on the twin's biases through torch.optim.Adam.
    twin_opt = torch.optim.Adam([p for n, p in twin.named_parameters() if n.endswith("bias")],
                                lr=0.01, betas=(0.9, 0.99), eps=0.0)
    twin_w = Lamb([p for n, p in twin.named_parameters() if n.endswith("weight")],
                  lr=0.01, betas=(0.9, 0.99), eps=0.0, weight_decay=0.1)
    for x, y in data:
        twin_opt.zero_grad()
        twin_w.zero_grad()
        nn.functional.mse_loss(twin(x), y).backward()
        twin_opt.step()
        twin_w.step()
    assert_same(list(net.parameters()), list(twin.parameters()), 1e-12)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.1


def test_lr_scheduler_and_closure():
    net, twin = small_net(), small_net()
    data = batches(6)
    opt = Lamb(net.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    twin_opt = Lamb(twin.parameters(), lr=0.02)
    for i, (x, y) in enumerate(data):
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert torch.equal(loss, nn.functional.mse_loss(twin(x), y))  # returned, pre-step
        sched.step()
        twin_opt.param_groups[0]["lr"] = 0.02 if i < 3 else 0.01  # StepLR halves after 3 steps
        twin_opt.zero_grad()
        nn.functional.mse_loss(twin(x), y).backward()
        twin_opt.step()
    assert opt.param_groups[0]["lr"] == 0.005
    assert_same(list(net.parameters()), list(twin.parameters()), 1e-12)


@pytest.mark.parametrize("kwargs, name, value", [
    ({"lr": -0.1}, "lr", "-0.1"),
    ({"betas": (1.0, 0.99)}, "betas[0]", "1.0"),
    ({"betas": (0.9, -0.1)}, "betas[1]", "-0.1"),
    ({"eps": -1e-8}, "eps", "-1e-08"),
    ({"weight_decay": -0.01}, "weight_decay", "-0.01"),
    ({"rule": "nope"}, "rule", "'nope'"),
    ({"clamp": 0.0}, "clamp", "0.0"),
])
def test_invalid_hyperparameters_name_argument_and_value(kwargs, name, value):
    with pytest.raises(ValueError, match=re.escape(f"invalid {name}: {value} (must be")):
        Lamb([nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_lars_and_unknown_optimizer():
    with pytest.raises(ValueError, match=r"invalid momentum: 1.5"):
        Lars([nn.Parameter(torch.zeros(2))], momentum=1.5)
    with pytest.raises(ValueError, match=r"invalid trust_coefficient: 0"):
        Lars([nn.Parameter(torch.zeros(2))], trust_coefficient=0)
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        build_optimizer("adamw", [nn.Parameter(torch.zeros(2))])


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = Lamb(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_trust_stats_stay_on_device_as_tensors():
    net = small_net(dtype=torch.float32)
    opt = Lamb(net.parameters())
    opt.zero_grad()
    net(torch.randn(4, 6)).sum().backward()
    opt.step()
    stats = opt.trust_stats()
    assert [stats[k].shape for k in ("r", "r1", "r2")] == [(4,)] * 3
    assert stats["name"] == ["group0.param0", "group0.param1", "group0.param2", "group0.param3"]
    assert stats["r"].device == net[0].weight.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cuda_matches_cpu(name):
    data = batches(10, dtype=torch.float32)
    a, b = small_net(dtype=torch.float32), small_net(dtype=torch.float32).cuda()
    cpu = train(a, OPTIMIZERS[name](a.parameters()), data)
    gpu_opt = OPTIMIZERS[name](b.parameters())
    gpu = train(b, gpu_opt, [(x.cuda(), y.cuda()) for x, y in data])
    assert_same(cpu, [p.cpu() for p in gpu], 1e-4)
    assert gpu_opt.trust_stats()["r"].is_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cuda_step_never_waits_for_the_host(name):
    """After the first step (state creation), a step on CUDA runs without one device→host sync:
    torch raises at the first synchronizing call in sync-debug mode "error"."""
    net = small_net(dtype=torch.float32).cuda()
    opt = OPTIMIZERS[name](net.parameters())
    data = [(x.cuda(), y.cuda()) for x, y in batches(4, dtype=torch.float32)]

    def step(x, y):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()

    step(*data[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in data[1:]:
            step(x, y)
            opt.trust_stats()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize(("optimizer", "reference"), [
    ("torch_adamw", lambda params: torch.optim.AdamW(params, lr=0.003, betas=(0.9, 0.95), eps=1e-8,
                                                     weight_decay=0.1)),
    ("nesterov", lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.8, weight_decay=0.01,
                                                nesterov=True)),
])
def test_the_torch_baselines_are_torchs_own_from_a_config(optimizer, reference):
    """An arm of optimizer torch_adamw or nesterov, its settings as a config writes them, steps a
    LeNet as torch.optim.AdamW / SGD(nesterov=True) built by hand does, five steps, bit for bit."""
    from lambexp.config import parse_experiment
    from lambexp.model import build_model
    from lambexp.optim import build_optimizer
    from lambexp.runner.arm import optimizer_args

    settings = {"torch_adamw": "lr: 0.003\nbetas: [0.9, 0.95]\nweight_decay: 0.1\n",
                "nesterov": "lr: 0.05\nmomentum: 0.8\nweight_decay: 0.01\n"}[optimizer]
    [arm] = parse_experiment(f"name: b\noptimizer: {optimizer}\n{settings}arms: [{{name: a}}]\n").arms
    torch.manual_seed(0)
    ours_model, theirs_model = build_model("lenet"), build_model("lenet")
    theirs_model.load_state_dict(ours_model.state_dict())
    ours = build_optimizer(optimizer, list(ours_model.named_parameters()), **optimizer_args(arm))
    theirs = reference(theirs_model.parameters())
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            torch.nn.functional.nll_loss(model(x), y).backward()
            opt.step()
    for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters(), strict=True):
        assert torch.equal(a, b), name
