"""LeNet is docs/claims.md's network: shapes, parameter count, and conv → ReLU → pool order."""

import torch
import torch.nn.functional as F

from lambexp.model import LeNet, build_model


def spec_order(m, x):
    """docs/claims.md literally: conv → ReLU → maxpool, twice; 800 → 500 → ReLU → 10 → log-softmax."""
    x = F.max_pool2d(F.relu(m.conv1(x)), 2, 2)
    x = F.max_pool2d(F.relu(m.conv2(x)), 2, 2)
    return F.log_softmax(m.fc2(F.relu(m.fc1(torch.flatten(x, 1)))), dim=1)


def test_lenet_equals_the_spec_order_bit_for_bit_with_gradients():
    torch.manual_seed(0)
    for model in (LeNet(), build_model("lenet")):  # plain and channels-last
        x = torch.randn(32, 1, 28, 28)
        out = model(x)
        out.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ref = spec_order(model, x)
        ref.sum().backward()
        assert torch.equal(out, ref)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_lenet_shapes_and_size():
    model = build_model("lenet")
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    # 20·25+20 + 50·20·25+50 + 800·500+500 + 500·10+10 = 431,080 (the blog's LeNet)
    assert sum(p.numel() for p in model.parameters()) == 431_080
    assert build_model("mlp")(torch.randn(5, 1, 28, 28)).shape == (5, 10)
