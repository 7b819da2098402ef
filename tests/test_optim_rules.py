"""Hand-worked steps of each rule (docs/rules.md) on two-element tensors, in float64.

Every expected number is arithmetic written out here, not a value produced by lambexp.
With ε = 0, Adam's first step direction is sign(g), which keeps the arithmetic short.
"""

import math

import pytest
import torch

from lambexp.optim import Lamb, Lars

F64 = torch.float64
B1, B2 = 0.9, 0.99


def param(*values):
    return torch.nn.Parameter(torch.tensor(values, dtype=F64))


def step_with(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=F64)
    opt.step()


def assert_close(x, expected, tol=1e-12):
    assert torch.allclose(torch.as_tensor(x, dtype=F64), torch.tensor(expected, dtype=F64),
                          rtol=tol, atol=tol), (x, expected)


@pytest.mark.parametrize("foreach", [True, False])
class TestBlogRule:
    def test_two_steps(self, foreach):
        p = param(1.0, -1.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, foreach=foreach)
        # step 1: m = 0.1·g, v = 0.01·g², a = m/√v = sign(g) = [1, -1];
        # s = 0.1·√(1−0.99)/(1−0.9) = 0.1; r1 = RMS(w) = 1, r2 = RMS(a) = 1, r = 1.
        step_with(opt, p, [0.5, -0.5])
        assert_close(p.detach(), [0.9, -0.9])
        stats = opt.trust_stats()
        assert_close(stats["r"], [1.0])
        assert_close(stats["r1"], [1.0])
        assert_close(stats["r2"], [1.0])
        # step 2, same g: m = 0.9·0.05 + 0.1·0.5 = 0.095; v = 0.99·0.0025 + 0.01·0.25 = 0.004975
        a = 0.095 / math.sqrt(0.004975)
        s = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
        r = 0.9 / a  # r1 = RMS([0.9, -0.9]) = 0.9, r2 = RMS([a, -a]) = a
        step_with(opt, p, [0.5, -0.5])
        assert_close(p.detach(), [0.9 - s * r * a, -0.9 + s * r * a])
        assert_close(opt.trust_stats()["r"], [r])
        assert_close(opt.trust_stats()["r2"], [a])

    def test_clipped_ratio_and_adam_mode(self, foreach):
        # r1 = RMS([100, -100]) = 100, r2 = RMS(sign g) = 1: r = min(100/1, 10) = 10.
        p, q = param(100.0, -100.0), param(100.0, -100.0)
        lamb = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, foreach=foreach)
        adam = Lamb([q], lr=0.1, betas=(B1, B2), eps=0.0, adam=True, foreach=foreach)
        step_with(lamb, p, [0.5, -0.5])
        step_with(adam, q, [0.5, -0.5])
        assert_close(p.detach(), [100 - 0.1 * 10, -100 + 0.1 * 10])  # w − s·r·a with s = 0.1
        assert_close(q.detach(), [100 - 0.1, -100 + 0.1])  # Adam mode: r = 1 in the update
        assert_close(adam.trust_stats()["r"], [10.0])  # ... but r is still recorded
        assert_close(adam.trust_stats()["r1"], [100.0])

    def test_no_clamp(self, foreach):
        p = param(100.0, -100.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, clamp=None, foreach=foreach)
        step_with(opt, p, [0.5, -0.5])
        assert_close(opt.trust_stats()["r"], [100.0])
        assert_close(p.detach(), [100 - 0.1 * 100, -100 + 0.1 * 100])

    def test_zero_weight_norm_and_zero_update(self, foreach):
        w0, g0 = param(0.0, 0.0), param(2.0, 3.0)
        opt = Lamb([w0, g0], lr=0.1, betas=(B1, B2), eps=1e-8, foreach=foreach)
        w0.grad = torch.tensor([0.5, -0.5], dtype=F64)
        g0.grad = torch.zeros(2, dtype=F64)  # a = 0/(0 + ε) = 0, so r2 = 0
        opt.step()
        # r1 = 0 → r = 1; a = 0.05/(0.05 + 1e-8) per element
        a = 0.05 / (0.05 + 1e-8)
        assert_close(w0.detach(), [-0.1 * a, 0.1 * a])
        assert_close(g0.detach(), [2.0, 3.0])  # r2 = 0 → r = 1, but a = 0: no move
        assert_close(opt.trust_stats()["r"], [1.0, 1.0])
        assert_close(opt.trust_stats()["r1"], [0.0, math.sqrt((4 + 9) / 2)])

    def test_weight_decay_enters_the_gradient(self, foreach):
        p = param(2.0, 0.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, weight_decay=0.5, foreach=foreach)
        step_with(opt, p, [1.0, 1.0])
        # g' = g + 0.5·w = [2, 1]; a = sign(g') = [1, 1]; r1 = RMS([2, 0]) = √2, r2 = 1;
        # r = √2, s = 0.1: w = [2 − 0.1√2, −0.1√2]
        assert_close(p.detach(), [2 - 0.1 * math.sqrt(2), -0.1 * math.sqrt(2)])
        w1 = [2 - 0.1 * math.sqrt(2), -0.1 * math.sqrt(2)]
        step_with(opt, p, [1.0, 1.0])
        g = [1 + 0.5 * w1[0], 1 + 0.5 * w1[1]]
        m = [0.9 * 0.1 * 2 + 0.1 * g[0], 0.9 * 0.1 * 1 + 0.1 * g[1]]
        v = [0.99 * 0.01 * 4 + 0.01 * g[0] ** 2, 0.99 * 0.01 * 1 + 0.01 * g[1] ** 2]
        a = [m[0] / math.sqrt(v[0]), m[1] / math.sqrt(v[1])]
        r = min(math.sqrt((w1[0] ** 2 + w1[1] ** 2) / 2) / math.sqrt((a[0] ** 2 + a[1] ** 2) / 2), 10)
        s = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
        assert_close(p.detach(), [w1[0] - s * r * a[0], w1[1] - s * r * a[1]])


@pytest.mark.parametrize("foreach", [True, False])
class TestPaperRule:
    def test_two_steps_with_decay_and_clamp(self, foreach):
        # ‖w‖ = ‖[30, 40]‖ = 50, clamped to 10. Step 1: m̂/√v̂ = sign(g) = [1, -1];
        # u = [1, -1] + 0.1·[30, 40] = [4, 3], ‖u‖ = 5; r = 10/5 = 2; w = w − 0.1·2·u.
        p = param(30.0, 40.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, weight_decay=0.1, rule="paper",
                   foreach=foreach)
        step_with(opt, p, [0.5, -0.5])
        assert_close(p.detach(), [30 - 0.2 * 4, 40 - 0.2 * 3])
        assert_close(opt.trust_stats()["r"], [2.0])
        assert_close(opt.trust_stats()["r1"], [10.0])
        assert_close(opt.trust_stats()["r2"], [5.0])
        # step 2, same g: m = 0.19·g, v = 0.0199·g², so m̂/√v̂ = sign(g) again.
        w1 = [29.2, 39.4]
        u = [1 + 0.1 * w1[0], -1 + 0.1 * w1[1]]
        r = 10 / math.hypot(*u)  # ‖w1‖ ≈ 49 > 10: still clamped
        step_with(opt, p, [0.5, -0.5])
        assert_close(p.detach(), [w1[0] - 0.1 * r * u[0], w1[1] - 0.1 * r * u[1]])

    def test_without_bias_correction(self, foreach):
        p = param(3.0, 4.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, rule="paper", bias_correction=False,
                   foreach=foreach)
        step_with(opt, p, [0.5, -0.5])  # m/√v = 0.1·g / (0.1·|g|) = sign(g)
        r = 5 / math.sqrt(2)
        w1 = [3 - 0.1 * r, 4 + 0.1 * r]
        assert_close(p.detach(), w1)
        step_with(opt, p, [0.5, -0.5])  # m/√v = 0.19/√0.0199 · sign(g)
        k = 0.19 / math.sqrt(0.0199)
        r = math.hypot(*w1) / (k * math.sqrt(2))
        assert_close(p.detach(), [w1[0] - 0.1 * r * k, w1[1] + 0.1 * r * k])

    def test_zero_weight_norm_and_adam_mode(self, foreach):
        p, q = param(0.0, 0.0), param(3.0, 4.0)
        lamb = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, rule="paper", foreach=foreach)
        adam = Lamb([q], lr=0.1, betas=(B1, B2), eps=0.0, rule="paper", adam=True,
                    foreach=foreach)
        step_with(lamb, p, [0.5, -0.5])
        step_with(adam, q, [0.5, -0.5])
        assert_close(p.detach(), [-0.1, 0.1])  # r1 = 0 → r = 1
        assert_close(q.detach(), [2.9, 4.1])  # r = 5/√2 recorded, not applied
        assert_close(adam.trust_stats()["r"], [5 / math.sqrt(2)])


@pytest.mark.parametrize("foreach", [True, False])
def test_lars_two_steps(foreach):
    # ‖w‖ = 5, ‖g‖ = 1: r = η·5/1 = 0.005; buf = lr·r·g; w = w − buf.
    p = param(3.0, 4.0)
    opt = Lars([p], lr=1.0, momentum=0.9, trust_coefficient=0.001, foreach=foreach)
    step_with(opt, p, [0.6, 0.8])
    assert_close(p.detach(), [3 - 0.003, 4 - 0.004])
    assert_close(opt.trust_stats()["r"], [0.005])
    # step 2: ‖w‖ = 5·0.999 = 4.995, r = 0.004995; buf = 0.9·[0.003, 0.004] + r·g
    buf = [0.9 * 0.003 + 0.004995 * 0.6, 0.9 * 0.004 + 0.004995 * 0.8]
    step_with(opt, p, [0.6, 0.8])
    assert_close(p.detach(), [2.997 - buf[0], 3.996 - buf[1]])
    assert_close(opt.trust_stats()["r1"], [4.995])


@pytest.mark.parametrize("foreach", [True, False])
def test_lars_weight_decay_and_zero_norm(foreach):
    p, z = param(3.0, 4.0), param(0.0, 0.0)
    opt = Lars([p, z], lr=1.0, momentum=0.9, weight_decay=0.2, trust_coefficient=0.5,
               foreach=foreach)
    p.grad = torch.tensor([0.6, 0.8], dtype=F64)
    z.grad = torch.tensor([0.6, 0.8], dtype=F64)
    opt.step()
    # r2 = ‖g‖ + 0.2·‖w‖ = 1 + 1 = 2; r = 0.5·5/2 = 1.25; d = g + 0.2·w = [1.2, 1.6]
    assert_close(p.detach(), [3 - 1.25 * 1.2, 4 - 1.25 * 1.6])
    assert_close(z.detach(), [-0.6, -0.8])  # ‖w‖ = 0 → r = 1, d = g
    assert_close(opt.trust_stats()["r"], [1.25, 1.0])


# --- φ's lower bound (clamp_min) and the zero-norm behaviour, on every path ---------------------------

PATHS = [pytest.param({"foreach": False}, id="reference"), pytest.param({"foreach": True}, id="foreach"),
         pytest.param({"fused": True}, id="fused")]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", [2, 300_000], ids=["small", "large"])  # large: the CPU Adam-kernel path
def test_clamp_min_lifts_a_small_weight_norm(path, n):
    """paper rule, ε = 0, step 1 with bias correction: u = m̂/√v̂ = sign(g) = ±1, ‖u‖ = √n.
    w = ±0.005·√(2/n) each (‖w‖ = 0.005·√2 ≈ 0.00707) is below γ_l = 0.01, so r1 = φ(‖w‖) = 0.01,
    r = 0.01/√n and w ← w − 0.1·r·sign(g); without the bound r = 0.00707/√n."""
    sign = torch.ones(n, dtype=F64)
    sign[1::2] = -1
    w0 = 0.005 * math.sqrt(2 / n)
    for clamp_min, r1 in ((0.01, 0.01), (None, 0.005 * math.sqrt(2))):
        p = torch.nn.Parameter(w0 * sign)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, rule="paper", clamp_min=clamp_min, **path)
        step_with(opt, p, (0.5 * sign).tolist())
        r = r1 / math.sqrt(n)
        assert_close(p.detach(), ((w0 - 0.1 * r) * sign).tolist())
        assert_close(opt.trust_stats()["r1"][0], r1)
        assert_close(opt.trust_stats()["r"][0], r)


@pytest.mark.parametrize("path", PATHS)
def test_clamp_min_of_the_other_w_norm_rules_and_with_the_upper_clamp(path):
    """torch_optimizer (no correction: m = 0.1·g, √v = 0.1·|g|, u = sign(g)) and readme2019 read it
    too; γ_l = c pins φ at c whatever ‖w‖: ‖w‖ = 0.00707 → r1 = 0.05, r = 0.05/√2."""
    for rule in ("torch_optimizer", "readme2019"):
        p = param(0.005, -0.005)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, rule=rule, clamp=0.05, clamp_min=0.05, **path)
        step_with(opt, p, [0.5, -0.5])
        assert_close(p.detach(), [0.005 - 0.1 * 0.05 / math.sqrt(2), -0.005 + 0.1 * 0.05 / math.sqrt(2)])


def test_clamp_min_is_refused_where_the_rule_does_not_clamp_the_weight_norm():
    p = [torch.nn.Parameter(torch.ones(2))]
    for rule in ("blog", "timm", "nvlamb", "optax", "tfa", "timm_decoupled"):
        with pytest.raises(ValueError, match=rf"rule {rule} does not clamp ‖w‖ \(clamp_min=0.001\)"):
            Lamb(p, rule=rule, clamp_min=1e-3)
    for bad in (0.0, -1.0, 11.0):
        with pytest.raises(ValueError, match="invalid clamp_min"):
            Lamb(p, rule="paper", clamp_min=bad)
    Lamb(p, rule="paper", clamp=None, clamp_min=1e-3)  # φ = max(‖w‖, γ_l)


def test_a_config_refuses_clamp_min_on_a_rule_without_a_weight_norm_clamp():
    from lambexp.config import parse_experiment
    from lambexp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"arms\[0\].clamp_min: rule timm does not clamp ‖w‖ \(arm a\)"):
        parse_experiment("name: e\nrule: timm\narms: [{name: a, clamp_min: 0.001}]\n")
    exp = parse_experiment("name: e\nrule: paper\narms: [{name: a, clamp_min: 0.001}]\n")
    assert exp.arms[0].clamp_min == 0.001


@pytest.mark.parametrize("path", PATHS)
def test_a_zero_weight_moves_with_r_1_or_stays_with_r_0(path):
    """w = 0, g = ±0.5, ε = 0, one step, no decay: u = sign(g) (both rules: readme2019 has no
    correction, paper's divides m and √v alike). paper guards r1 = 0 with r = 1: w = ∓0.1;
    readme2019 (pytorch-lamb 207f672) divides: r = 0/√2 = 0 and w stays 0."""
    for rule, r, w in (("paper", 1.0, [-0.1, 0.1]), ("readme2019", 0.0, [0.0, 0.0])):
        p = param(0.0, 0.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=0.0, rule=rule, **path)
        step_with(opt, p, [0.5, -0.5])
        assert_close(p.detach(), w)
        assert_close(opt.trust_stats()["r"][0], r)


@pytest.mark.parametrize("path", PATHS)
def test_a_zero_update_keeps_w_with_r_1_or_turns_it_nan(path):
    """g = 0, λ = 0: m = v = 0 and u = 0/(0 + ε) = 0. paper: r = 1, w unchanged; readme2019:
    r = min(‖w‖, 10)/0 = ∞ and w − lr·∞·0 = NaN, as pytorch-lamb 207f672 lamb.py 113, 120 computes."""
    for rule in ("paper", "readme2019"):
        p = param(1.0, 2.0)
        opt = Lamb([p], lr=0.1, betas=(B1, B2), eps=1e-6, rule=rule, **path)
        step_with(opt, p, [0.0, 0.0])
        r = opt.trust_stats()["r"][0]
        if rule == "paper":
            assert_close(p.detach(), [1.0, 2.0])
            assert r == 1.0
        else:
            assert p.detach().isnan().all() and r == math.inf
