"""model: vit (lambexp/model.py): the small vision transformer against an independent forward written
with torch's own building blocks (F.unfold for the patches, F.layer_norm, F.scaled_dot_product_attention,
F.linear), its hand-counted size, the parameter table configs are checked against, and a stack of ViTs
equal to the same ViTs trained one by one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lambexp.config.schema import MODEL_PARAMETERS
from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.training.stack import Stack, check_stackable

F64 = torch.float64


def reference_forward(params: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 4) -> torch.Tensor:
    """The ViT of the docstring, from its parameters: unfold 7×7 patches (row-major, as F.unfold
    orders them), embed, prepend the class token, add positions, 4 pre-norm blocks with torch's
    scaled-dot-product attention on LayerNormed queries and keys, LayerNorm, head on the class
    token, log-softmax."""
    b = x.shape[0]
    patches = F.unfold(x, kernel_size=7, stride=7).transpose(1, 2)  # (B, 16, 49)
    t = F.linear(patches, params["patch.weight"], params["patch.bias"])
    t = torch.cat([params["cls"].expand(b, 1, -1), t], dim=1) + params["pos"]  # (B, 17, 64)
    d = t.shape[-1]
    for i in range(4):
        p = {k.split(f"blocks.{i}.", 1)[1]: v for k, v in params.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(t, (d,), p["norm1.weight"], p["norm1.bias"])
        q, k, v = F.linear(h, p["qkv.weight"], p["qkv.bias"]).split(d, dim=-1)
        q, k, v = (z.reshape(b, -1, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        q = F.layer_norm(q, (d // heads,), p["q_norm.weight"], p["q_norm.bias"])  # QK-norm, per head
        k = F.layer_norm(k, (d // heads,), p["k_norm.weight"], p["k_norm.bias"])
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, d)
        t = t + F.linear(a, p["proj.weight"], p["proj.bias"])
        h = F.layer_norm(t, (d,), p["norm2.weight"], p["norm2.bias"])
        t = t + F.linear(F.gelu(F.linear(h, p["fc1.weight"], p["fc1.bias"])), p["fc2.weight"], p["fc2.bias"])
    t = F.layer_norm(t[:, 0], (d,), params["norm.weight"], params["norm.bias"])
    return F.log_softmax(F.linear(t, params["head.weight"], params["head.bias"]), dim=1)


def test_the_vit_equals_an_independent_forward_with_its_gradients():
    torch.manual_seed(0)
    model = build_model("vit").to(F64)
    with torch.no_grad():  # a class token away from 0, so that a mistake in its place shows
        model.cls.normal_()
    x = torch.randn(6, 1, 28, 28, dtype=F64)
    out = model(x)
    assert out.shape == (6, 10)
    params = dict(model.named_parameters())
    ref = reference_forward(params, x)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    ours = torch.autograd.grad(out.square().sum(), list(params.values()))
    theirs = torch.autograd.grad(ref.square().sum(), list(params.values()))
    for name, g, h in zip(params, ours, theirs, strict=True):
        assert torch.allclose(g, h, atol=1e-12, rtol=1e-9), name


def test_the_vits_size_and_parameter_table():
    model = build_model("vit")
    # class token 64 + positions 17·64 + patch embedding 49·64+64 + 4 blocks × (2 LayerNorms 2·128,
    # qkv 64·192+192, QK-norm 2·(16+16), proj 64·64+64, fc1 64·128+128, fc2 128·64+64) + LayerNorm 128
    # + head 64·10+10
    block = 2 * 128 + (64 * 192 + 192) + 2 * 32 + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    assert sum(p.numel() for p in model.parameters()) == 64 + 17 * 64 + 49 * 64 + 64 + 4 * block + 128 + 650
    assert MODEL_PARAMETERS["vit"] == tuple((n, p.ndim) for n, p in model.named_parameters())
    check_stackable(model)  # LayerNorm is per sample: a stack may pad a batch


def test_a_stack_of_vits_equals_them_trained_one_by_one():
    """Two ViTs (seeds 1, 2), LAMB blog and Adam mode, three steps of their own batches, float64."""
    hyper = [("lamb", dict(lr=0.01, betas=(0.9, 0.99), eps=None, weight_decay=0.01, rule="blog", clamp=10.0)),
             ("adam", dict(lr=0.005, betas=(0.9, 0.99), eps=None, weight_decay=0.0, rule="blog", clamp=10.0))]

    def fresh():
        nets = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            nets.append(build_model("vit").to(F64))
        return nets

    torch.manual_seed(0)
    x, y = torch.randn(24, 1, 28, 28, dtype=F64), torch.randint(0, 10, (24,))
    orders = [torch.randint(0, 24, (3, 6), generator=torch.Generator().manual_seed(10 + i)) for i in range(2)]
    nets = fresh()
    for i, net in enumerate(nets):
        opt = build_optimizer(hyper[i][0], list(net.named_parameters()), **hyper[i][1])
        for t in range(3):
            opt.zero_grad()
            F.nll_loss(net(x[orders[i][t]]), y[orders[i][t]]).backward()
            opt.step()
    stack = Stack(fresh())
    opts = [build_optimizer(name, stack.member_params(i), **h) for i, (name, h) in enumerate(hyper)]
    for t in range(3):
        idx = torch.stack([o[t] for o in orders])
        stack.backward(stack.losses(x[idx], y[idx]), torch.tensor([True, True]))
        for opt in opts:
            opt.step()
    for i, net in enumerate(nets):
        ours = stack.member_state_dict(i)
        for name, p in net.named_parameters():
            assert torch.allclose(ours[name], p, atol=1e-10, rtol=0), (i, name)
