"""model: vit and vit16 (lambexp/model.py): the small vision transformers against an independent forward
written with torch's own building blocks (F.unfold for the patches and the stem's convolutions,
F.layer_norm, F.scaled_dot_product_attention, F.linear), vit's 7×7 patches 4 pixels apart seen through
its gradients, their hand-counted sizes, the parameter table configs are checked against, and a stack
of ViTs equal to the same ViTs trained one by one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lambexp.config.schema import MODEL_PARAMETERS
from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.training.stack import Stack, check_stackable

F64 = torch.float64


def unfold_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 3×3, stride 2, padding 1 convolution as unfolded patches times the flattened kernels."""
    out, side = weight.shape[0], (x.shape[-1] + 1) // 2
    cols = F.unfold(x, kernel_size=3, padding=1, stride=2)  # (B, C·9, side²)
    return (weight.reshape(out, -1) @ cols + bias[:, None]).reshape(x.shape[0], out, side, side)


def reference_forward(params: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 4) -> torch.Tensor:
    """The ViTs of the docstrings, from their parameters. vit: two unfolded 3×3 stride-2 convolutions
    with a GELU between, their 7×7 outputs as 49 tokens, row-major; vit16: unfolded 7×7 patches
    (row-major, as F.unfold orders them), embedded. Then: prepend the class token, add positions, 4
    pre-norm blocks with torch's scaled-dot-product attention on LayerNormed queries and keys,
    LayerNorm, head on the class token, log-softmax."""
    b = x.shape[0]
    if "patch.weight" in params:  # vit16
        patches = F.unfold(x, kernel_size=7, stride=7).transpose(1, 2)  # (B, 16, 49)
        t = F.linear(patches, params["patch.weight"], params["patch.bias"])
    else:
        h = F.gelu(unfold_conv(x, params["stem1.weight"], params["stem1.bias"]))  # (B, 32, 14, 14)
        t = unfold_conv(h, params["stem2.weight"], params["stem2.bias"]).reshape(b, 64, 49).transpose(1, 2)
    t = torch.cat([params["cls"].expand(b, 1, -1), t], dim=1) + params["pos"]  # (B, N+1, 64)
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


@pytest.mark.parametrize("name", ["vit", "vit16"])
def test_the_vits_equal_an_independent_forward_with_their_gradients(name):
    torch.manual_seed(0)
    model = build_model(name).to(F64)
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
    for param, g, h in zip(params, ours, theirs, strict=True):
        assert torch.allclose(g, h, atol=1e-12, rtol=1e-9), (name, param)


def test_each_vit_token_sees_a_7x7_patch_4_pixels_apart():
    """Token (i, j) of the stem depends on pixels of rows 4i-3..4i+3 and columns 4j-3..4j+3 inside the
    image (two 3×3 stride-2 convolutions, padding 1: hand-worked), on each of those rows and columns,
    and on no pixel outside them."""
    torch.manual_seed(0)
    model = build_model("vit").to(F64)
    x = torch.randn(1, 1, 28, 28, dtype=F64, requires_grad=True)
    tokens = model.embed(x)  # (1, 49, 64)
    assert tokens.shape == (1, 49, 64)
    for i, j in [(0, 0), (0, 6), (3, 2), (6, 6)]:
        (grad,) = torch.autograd.grad(tokens[0, 7 * i + j].square().sum(), x, retain_graph=True)
        seen = grad[0, 0].abs()  # (28, 28)
        rows, cols = seen.sum(1).nonzero().flatten(), seen.sum(0).nonzero().flatten()
        assert rows.tolist() == list(range(max(0, 4 * i - 3), min(27, 4 * i + 3) + 1)), (i, j)
        assert cols.tolist() == list(range(max(0, 4 * j - 3), min(27, 4 * j + 3) + 1)), (i, j)


def test_the_vits_sizes_and_parameter_tables():
    # 4 blocks × (2 LayerNorms 2·128, qkv 64·192+192, QK-norm 2·(16+16), proj 64·64+64, fc1 64·128+128,
    # fc2 128·64+64), a LayerNorm 128, a head 64·10+10, a class token 64 and positions (N+1)·64 around
    # the patch embedding: vit's stem 1·32·9+32 and 32·64·9+64 for 49 tokens, vit16's 49·64+64 for 16
    block = 2 * 128 + (64 * 192 + 192) + 2 * 32 + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    body = 4 * block + 128 + 650 + 64
    sizes = {"vit": body + 50 * 64 + (9 * 32 + 32) + (32 * 64 * 9 + 64),
             "vit16": body + 17 * 64 + 49 * 64 + 64}
    for name, size in sizes.items():
        model = build_model(name)
        assert sum(p.numel() for p in model.parameters()) == size, name
        assert MODEL_PARAMETERS[name] == tuple((n, p.ndim) for n, p in model.named_parameters())
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
