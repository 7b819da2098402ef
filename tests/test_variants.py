"""Each published LAMB against its own code: Lamb(rule=...) steps like timm's, torch-optimizer's and
optax's optimizers (installed as test extras), 30 steps in float64 on a small net, through the
reference path and the default step, with cases where each clip binds and a tensor of zeros."""

from __future__ import annotations

import pytest
import torch
from optim_helpers import F64, batches, small_net, train
from torch import nn

from lambexp.base.variants import VARIANTS
from lambexp.optim import Lamb

STEPS = 30
TOL = 1e-10


def loud_batches(scale: float = 20.0):
    """Targets large enough that the global gradient norm is well above 1: the clip binds."""
    return [(x, y * scale) for x, y in batches(STEPS)]


def groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weights with decay, biases without (as timm's factory and apex users group them)."""
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    return [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]


def with_zero_bias(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        net[0].bias.zero_()  # r1 = 0 → r = 1
    return net


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


FOREACH = [pytest.param(False, id="reference"), pytest.param(None, id="default-step")]


# --- timm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("options", [
    {},  # its defaults: clip the global norm at 1, r only where weight decay is not 0
    {"trust_clip": True},  # LAMBC: r ≤ 1
    {"always_adapt": True},
    {"max_grad_norm": None},
], ids=["defaults", "trust_clip", "always_adapt", "no_clip"])
def test_timm_rule_steps_as_timm_lamb(foreach, options):
    timm_optim = pytest.importorskip("timm.optim")
    theirs_net, ours_net = with_zero_bias(small_net()), with_zero_bias(small_net())
    lr = 0.05
    theirs = timm_optim.Lamb(groups(theirs_net, 0.01), lr=lr, **options)
    ours = Lamb(groups(ours_net, 0.01), lr=lr, rule="timm", foreach=foreach,
                trust_clip=1.0 if options.get("trust_clip") else None,
                always_adapt=options.get("always_adapt"),
                grad_clip_norm=options.get("max_grad_norm", "rule"))
    data = loud_batches()
    assert_close(train(ours_net, ours, data), train(theirs_net, theirs, data))
    stats = ours.trust_stats()
    if options.get("trust_clip"):
        assert stats["r"].max() <= 1.0
    if not options.get("always_adapt"):  # the biases (no decay) were not adapted: r = 1 logged
        assert torch.equal(stats["r"][2:], torch.ones(2, dtype=F64))


# The demonstration that a rule is one row of variants.py plus this test: timm_decoupled is timm's
# decoupled_decay, and the compiled step runs it with nothing written for it.
@pytest.mark.parametrize("path", [*FOREACH, pytest.param({"fused": True}, id="compiled")])
@pytest.mark.parametrize("options", [{}, {"always_adapt": True}], ids=["defaults", "always_adapt"])
def test_timm_decoupled_rule_steps_as_timm_lamb_with_decoupled_decay(path, options):
    timm_optim = pytest.importorskip("timm.optim")
    theirs_net, ours_net = with_zero_bias(small_net()), with_zero_bias(small_net())
    theirs = timm_optim.Lamb(groups(theirs_net, 0.05), lr=0.05, decoupled_decay=True, **options)
    mode = path if isinstance(path, dict) else {"foreach": path}
    ours = Lamb(groups(ours_net, 0.05), lr=0.05, rule="timm_decoupled", **options, **mode)
    data = loud_batches()
    assert_close(train(ours_net, ours, data), train(theirs_net, theirs, data))
    # it is not timm's default rule: λ·w in the update would have stepped elsewhere
    coupled_net = with_zero_bias(small_net())
    train(coupled_net, Lamb(groups(coupled_net, 0.05), lr=0.05, rule="timm", **options), data)
    assert not torch.allclose(coupled_net[0].weight, ours_net[0].weight, rtol=1e-6, atol=1e-6)


def test_timm_clip_and_trust_clip_bind_here():
    """The cases above test what they claim: the global norm is over 1, and r over 1 without the clip."""
    net = small_net()
    x, y = loud_batches()[0]
    nn.functional.mse_loss(net(x), y).backward()
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert total > 1.0
    net = with_zero_bias(small_net())
    ours = Lamb(groups(net, 0.01), lr=0.05, rule="timm")
    train(net, ours, loud_batches())
    assert ours.trust_stats()["r"][:2].max() > 1.0


# --- torch-optimizer --------------------------------------------------------------------------------

@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("debias", [False, True])
@pytest.mark.parametrize("weight_scale", [1.0, 20.0], ids=["plain", "clamp-binds"])
def test_torch_optimizer_rule_steps_as_torch_optimizer_lamb(foreach, debias, weight_scale):
    torch_optimizer = pytest.importorskip("torch_optimizer")
    nets = []
    for _ in range(2):
        net = with_zero_bias(small_net())
        with torch.no_grad():
            net[0].weight.mul_(weight_scale)  # ‖w‖ over 10: the clamp of φ binds
        nets.append(net)
    theirs_net, ours_net = nets
    assert (theirs_net[0].weight.norm() > 10) == (weight_scale > 1)
    theirs = torch_optimizer.Lamb(theirs_net.parameters(), lr=0.02, weight_decay=0.01, debias=debias)
    ours = Lamb(ours_net.parameters(), lr=0.02, weight_decay=0.01, rule="torch_optimizer",
                bias_correction=debias, foreach=foreach)
    data = batches(STEPS)
    assert_close(train(ours_net, ours, data), train(theirs_net, theirs, data))


# --- optax ------------------------------------------------------------------------------------------

def optax_weights(net: nn.Module, data, lr: float, weight_decay: float) -> list[torch.Tensor]:
    """``optax.lamb`` stepping the same net: gradients from torch, the update from optax, in float64."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    params = [p for p in net.parameters()]
    transform = optax.lamb(lr, weight_decay=weight_decay)
    state = transform.init([jnp.asarray(p.detach().numpy()) for p in params])
    for x, y in data:
        net.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        ws = [jnp.asarray(p.detach().numpy()) for p in params]
        updates, state = transform.update([jnp.asarray(p.grad.numpy()) for p in params], state, ws)
        for p, new in zip(params, optax.apply_updates(ws, updates)):
            with torch.no_grad():
                p.copy_(torch.from_numpy(jax.device_get(new).copy()))
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_optax_rule_steps_as_optax_lamb(foreach, weight_decay):
    data = batches(STEPS)
    theirs = optax_weights(with_zero_bias(small_net()), data, lr=0.02, weight_decay=weight_decay)
    net = with_zero_bias(small_net())
    ours = Lamb(net.parameters(), lr=0.02, weight_decay=weight_decay, rule="optax", foreach=foreach)
    assert_close(train(net, ours, data), theirs)


# --- the table itself --------------------------------------------------------------------------------

def test_every_rule_is_a_row_with_a_source_and_published_defaults():
    assert set(VARIANTS) >= {"blog", "readme2019", "paper", "timm", "nvlamb", "optax", "torch_optimizer",
                             "tfa"}
    for variant in VARIANTS.values():
        assert variant.source and variant.eps > 0 and len(variant.betas) == 2
    # defaults as each code publishes them (docs/rules.md): clip at 1 only in timm and apex, the
    # ratio only on decayed tensors only in timm (apex's default is use_nvlamb=False: rule nvlamb)
    timm = {n for n, v in VARIANTS.items() if v.source.startswith("timm ")}
    assert timm >= {"timm", "timm_decoupled"}
    assert {n for n, v in VARIANTS.items() if v.grad_clip_norm} == {*timm, "nvlamb"}
    assert {n for n, v in VARIANTS.items() if not v.always_adapt} == timm
    assert VARIANTS["blog"].eps == 1e-8 and VARIANTS["timm"].eps == 1e-6


# --- configs and `lambexp rules` ------------------------------------------------------------------------

def test_lambexp_rules_lists_every_rule_with_its_source_without_torch():
    import json
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from lambexp.cli import app; "
            "r = CliRunner().invoke(app, ['rules', '--json']); print(r.output); "
            "assert 'torch' not in sys.modules, 'rules imported torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["rule"] for row in rows] == list(VARIANTS)
    by_rule = {row["rule"]: row for row in rows}
    assert by_rule["timm"]["grad clip"] == 1.0  # numbers as numbers (the table writes "global 1")
    assert by_rule["timm"]["trust ratio on"] == "tensors with decay"
    assert by_rule["blog"]["decay enters"] == "gradient (L2)" and by_rule["blog"]["norm"] == "RMS"
    assert all(row["source"] for row in rows)


def test_a_timm_config_trains_and_logs_r_1_where_timm_does_not_adapt(tiny_mnist_env, tmp_path):
    from helpers import events, invoke, run_dirs, tiny_config

    config = tmp_path / "timm.yaml"
    config.write_text(tiny_config(arms=("lamb",), rule="timm", expect=""))  # weight decay 0
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    (run_dir,) = run_dirs(tmp_path / "runs")
    acc = events(run_dir / "lamb")
    ratios = [e.value for tag in acc.Tags()["scalars"] if tag.endswith("/r") for e in acc.Scalars(tag)]
    assert ratios and all(r == 1.0 for r in ratios)  # no decay: timm gives no tensor the ratio


# --- ported: apex's FusedLAMB and TF-Addons' LAMB (tests/ports) ------------------------------------------

def port_weights(net: nn.Module, optimizer, data) -> list[torch.Tensor]:
    """A NumPy port stepping the same net: gradients from torch, the update from the port."""
    params = list(net.parameters())
    for x, y in data:
        net.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        arrays = [p.detach().numpy().copy() for p in params]
        optimizer.step(arrays, [p.grad.numpy().copy() for p in params])
        with torch.no_grad():
            for p, a in zip(params, arrays):
                p.copy_(torch.from_numpy(a))
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("use_nvlamb", [True, False])
def test_nvlamb_rule_steps_as_apex_fused_lamb(foreach, use_nvlamb):
    from ports.apex_lamb import ApexFusedLamb

    data = loud_batches()  # the global clip at 1 binds
    theirs_net = with_zero_bias(small_net())
    names = [n for n, _ in theirs_net.named_parameters()]
    index = {"weight": [i for i, n in enumerate(names) if n.endswith("weight")],
             "bias": [i for i, n in enumerate(names) if n.endswith("bias")]}
    port = ApexFusedLamb([{"index": index["weight"], "weight_decay": 0.01},
                          {"index": index["bias"], "weight_decay": 0.0}], lr=0.05, use_nvlamb=use_nvlamb)
    theirs = port_weights(theirs_net, port, data)
    net = with_zero_bias(small_net())
    ours = Lamb(groups(net, 0.01), lr=0.05, rule="nvlamb", always_adapt=use_nvlamb, foreach=foreach)
    assert_close(train(net, ours, data), theirs)  # train returns the net's parameters in order


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_tfa_rule_steps_as_tfa_lamb(foreach, weight_decay):
    from ports.tfa_lamb import TfaLamb

    data = batches(STEPS)
    theirs_net = with_zero_bias(small_net())
    port = TfaLamb([n for n, _ in theirs_net.named_parameters()], lr=0.02, weight_decay=weight_decay)
    theirs = port_weights(theirs_net, port, data)
    net = with_zero_bias(small_net())
    ours = Lamb(net.parameters(), lr=0.02, weight_decay=weight_decay, rule="tfa", foreach=foreach)
    assert_close(train(net, ours, data), theirs)


@pytest.mark.parametrize("foreach", FOREACH)
def test_exclusion_lists_step_as_tfa_with_its_lists_and_log_r_1(foreach):
    from ports.tfa_lamb import TfaLamb

    from lambexp.optim import build_optimizer

    data = batches(STEPS)
    theirs_net = with_zero_bias(small_net())
    port = TfaLamb([n for n, _ in theirs_net.named_parameters()], lr=0.02, weight_decay=0.01,
                   exclude_from_weight_decay=["bias"], exclude_from_layer_adaptation=[r"^0\."])
    theirs = port_weights(theirs_net, port, data)
    net = with_zero_bias(small_net())
    ours = build_optimizer("lamb", net.named_parameters(), lr=0.02, betas=(0.9, 0.999), eps=None,
                           weight_decay=0.01, rule="tfa", clamp=None, exclude_from_decay=["bias"],
                           exclude_from_trust=[r"^0\."], foreach=foreach)
    assert_close(train(net, ours, data), theirs)
    stats = ours.trust_stats()
    r = dict(zip(stats["name"], stats["r"].tolist()))
    assert r["0.weight"] == 1.0 and r["0.bias"] == 1.0  # kept out: what they really got
    assert r["2.weight"] != 1.0


def test_exclude_from_trust_bias_gives_r_1_on_the_biases_in_the_logged_events(tiny_mnist_env, tmp_path):
    from helpers import events, invoke, run_dirs, tiny_config

    config = tmp_path / "ex.yaml"
    config.write_text(tiny_config(arms=("lamb",), rule="paper", weight_decay=0.01,
                                  exclude_from_trust="[bias]", expect=""))
    result = invoke("run", config, "--runs-dir", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    (run_dir,) = run_dirs(tmp_path / "runs")
    acc = events(run_dir / "lamb")
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("trust_layer/") and tag.endswith("/r"):
            values = {e.value for e in acc.Scalars(tag)}
            assert (values == {1.0}) == (".bias/" in tag), tag
    histograms = acc.Histograms("trust/r")
    assert all(h.histogram_value.num == 8 for h in histograms)  # every tensor, the biases at 1


def test_tfa_keeps_out_of_the_ratio_what_its_decay_list_names_when_it_has_no_trust_list():
    from ports.tfa_lamb import TfaLamb

    from lambexp.optim import build_optimizer

    data = batches(STEPS)
    theirs_net = with_zero_bias(small_net())
    port = TfaLamb([n for n, _ in theirs_net.named_parameters()], lr=0.02, weight_decay=0.01,
                   exclude_from_weight_decay=["bias"])  # adaptation falls back to this list
    theirs = port_weights(theirs_net, port, data)
    net = with_zero_bias(small_net())
    ours = build_optimizer("lamb", net.named_parameters(), lr=0.02, betas=(0.9, 0.999), eps=None,
                           weight_decay=0.01, rule="tfa", clamp=None, exclude_from_decay=["bias"])
    assert_close(train(net, ours, data), theirs)


def test_a_config_may_compile_any_rule_with_any_option(tmp_path):
    """The compiled step is each rule's own lamb_update (tests/test_optim_fused.py): a config asking
    for it with any rule, trust_clip, always_adapt: false or exclude_from_trust is valid."""
    from helpers import invoke, tiny_config

    for key, value in (("rule", "timm"), ("trust_clip", "0.5"), ("always_adapt", "false"),
                       ("exclude_from_trust", "[bias]")):
        config = tmp_path / f"{key}.yaml"
        config.write_text(tiny_config(arms=("lamb",), fused="true", **{key: value}))
        result = invoke("validate", config)
        assert result.exit_code == 0, (key, result.output)


def test_an_applied_change_keeps_excluded_tensors_out_of_decay():
    from lambexp.optim import build_optimizer
    from lambexp.runner.changes import apply_to_optimizer

    net = small_net()
    opt = build_optimizer("lamb", net.named_parameters(), lr=0.01, betas=(0.9, 0.99), eps=None,
                          weight_decay=0.01, rule="paper", clamp=10.0, exclude_from_decay=["ndim<=1"])
    args = {"lr": 0.05, "weight_decay": 0.02, "betas": (0.9, 0.99)}
    apply_to_optimizer(opt, args, {"lr": [0.01, 0.05], "weight_decay": [0.01, 0.02]})
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.05, 0.02), (0.05, 0.0)]


def test_kept_out_tensors_are_recorded_and_marked_in_the_per_layer_figure(tiny_mnist_env, tmp_path):
    import json

    from helpers import invoke, run_dirs, tiny_config

    from lambexp.report import figures
    from lambexp.report.series import load_arm

    config = tmp_path / "ex.yaml"
    config.write_text(tiny_config(arms=("lamb",), rule="paper", weight_decay=0.01,
                                  exclude_from_trust="[bias]", expect=""))
    assert invoke("run", config, "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    (run_dir,) = run_dirs(tmp_path / "runs")
    records = [json.loads(line) for line in (run_dir / "lamb" / "metrics.jsonl").read_text().splitlines()]
    trust = [r for r in records if r["kind"] == "trust"]
    assert all(r["kept_out"] == ["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"] for r in trust)
    series = load_arm(run_dir / "lamb", 1)
    kept = []
    original = figures.plt.Figure.savefig

    def keep(fig, path, **kwargs):
        kept.append([t.get_text() for t in fig.axes[-1].get_legend().get_texts()])
        original(fig, path, **kwargs)

    figures.plt.Figure.savefig = keep
    try:
        figures.layer_norms("t", {"lamb": series}, tmp_path / "n.png")
    finally:
        figures.plt.Figure.savefig = original
    (labels,) = kept
    assert "conv1.bias (kept out of r)" in labels and "conv1.weight" in labels
    assert "conv1.weight (kept out of r)" not in labels


# --- zero norms: r where ‖w‖ = 0 or ‖u‖ = 0, against each source ---------------------------------------

ZERO_STEPS = 4


def zero_case() -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Two tensors, float64: one of zeros with a gradient (‖w‖ = 0), one with weights and a zero
    gradient at every step (with λ = 0, ‖u‖ = 0); the gradients of ``ZERO_STEPS`` steps."""
    gen = torch.Generator().manual_seed(3)
    weights = [torch.zeros(5, dtype=F64), torch.randn(4, generator=gen, dtype=F64)]
    grads = [[torch.randn(5, generator=gen, dtype=F64), torch.zeros(4, dtype=F64)]
             for _ in range(ZERO_STEPS)]
    return weights, grads


def torch_steps(make, weights, grads) -> list[torch.Tensor]:
    """``make(params)`` (a torch optimizer) stepped on copies of ``weights`` with ``grads``."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = make(params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def array_steps(port, weights, grads) -> list[torch.Tensor]:
    """A NumPy port stepped like ``torch_steps``."""
    arrays = [w.numpy().copy() for w in weights]
    for gs in grads:
        port.step(arrays, [g.numpy().copy() for g in gs])
    return [torch.from_numpy(a) for a in arrays]


def optax_steps(weights, grads) -> list[torch.Tensor]:
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    transform = optax.lamb(0.05)
    ws = [jnp.asarray(w.numpy()) for w in weights]
    state = transform.init(ws)
    for gs in grads:
        updates, state = transform.update([jnp.asarray(g.numpy()) for g in gs], state, ws)
        ws = optax.apply_updates(ws, updates)
    return [torch.from_numpy(jax.device_get(w).copy()) for w in ws]


def their_zero_norm_steps(rule: str, weights, grads) -> list[torch.Tensor]:
    """The source of ``rule`` (installed, or ported), lr 0.05, λ 0, its other defaults."""
    import sys
    from pathlib import Path

    if rule in ("timm", "timm_decoupled"):
        timm_optim = pytest.importorskip("timm.optim")
        return torch_steps(lambda ps: timm_optim.Lamb(ps, lr=0.05, weight_decay=0.0, always_adapt=True,
                                                      decoupled_decay=rule == "timm_decoupled"),
                           weights, grads)
    if rule == "torch_optimizer":
        torch_optimizer = pytest.importorskip("torch_optimizer")
        return torch_steps(lambda ps: torch_optimizer.Lamb(ps, lr=0.05), weights, grads)
    if rule == "optax":
        return optax_steps(weights, grads)
    if rule == "nvlamb":
        from ports.apex_lamb import ApexFusedLamb
        return array_steps(ApexFusedLamb([{"index": [0, 1], "weight_decay": 0.0}], lr=0.05,
                                         use_nvlamb=True), weights, grads)
    if rule == "tfa":
        from ports.tfa_lamb import TfaLamb
        return array_steps(TfaLamb(["a", "b"], lr=0.05), weights, grads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from seed_lamb import SeedLamb, SeedLambJune2019  # ports of pytorch-lamb ff2245e and 207f672

    era = {"blog": SeedLamb, "readme2019": SeedLambJune2019}[rule]
    return torch_steps(lambda ps: era(ps, lr=0.05), weights, grads)


ZERO_RULES = [rule for rule in VARIANTS if rule != "paper"]  # the paper's is hand-worked (test_optim_rules)
PATHS = [pytest.param({"foreach": False}, id="reference"), pytest.param({}, id="default-step"),
         pytest.param({"fused": True}, id="compiled")]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rule", ZERO_RULES)
def test_a_zero_weight_and_a_zero_update_step_as_in_each_source(rule, path):
    """r at ‖w‖ = 0 and at ‖u‖ = 0 as each code has it: 1 where it guards the division, r1/r2 where
    it does not (pytorch-lamb 207f672: the zero tensor never moves, the still one turns NaN)."""
    weights, grads = zero_case()
    theirs = their_zero_norm_steps(rule, weights, grads)
    ours = torch_steps(lambda ps: Lamb(ps, lr=0.05, rule=rule, always_adapt=True, **path),
                       weights, grads)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, equal_nan=True)
    guarded = VARIANTS[rule].zero_norm == "one"
    assert (ours[0].abs().sum() > 0) == guarded  # the zero tensor moved (r = 1), or not (r = 0)
    assert bool(ours[1].isnan().all()) == (not guarded)  # r = ‖w‖/0 = ∞ times u = 0


# --- step counters: a tensor without a gradient at some steps ------------------------------------------

def dropping_batches():
    """(x, y, dropped): the bias gradients (a whole group) are dropped at steps 1, 4, 7, ... and the
    first weight's at steps 2, 6, 10, ...: those tensors are skipped there."""
    return [(x, y, ({1, 3} if k % 3 == 1 else set()) | ({0} if k % 4 == 2 else set()))
            for k, (x, y) in enumerate(batches(STEPS))]


def train_dropping(net: nn.Module, opt, data) -> list[torch.Tensor]:
    params = list(net.parameters())
    for x, y, dropped in data:
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        for i in dropped:
            params[i].grad = None
        opt.step()
    return [p.detach().clone() for p in params]


def port_dropping(net: nn.Module, port, data) -> list[torch.Tensor]:
    params = list(net.parameters())
    for x, y, dropped in data:
        net.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        arrays = [p.detach().numpy().copy() for p in params]
        port.step(arrays, [None if i in dropped else p.grad.numpy().copy() for i, p in enumerate(params)])
        with torch.no_grad():
            for p, a in zip(params, arrays):
                p.copy_(torch.from_numpy(a))
    return [p.detach().clone() for p in params]


def test_dropping_batches_drop_a_whole_group_and_a_single_tensor():
    dropped = [d for _, _, d in dropping_batches()]
    assert {1, 3} in dropped and {0} in dropped and {0, 1, 3} in dropped


@pytest.mark.parametrize("path", PATHS)
def test_timm_counts_steps_per_group_as_timm(path):
    """timm's t is its group's count of step() calls, also where the group had no gradient."""
    timm_optim = pytest.importorskip("timm.optim")
    assert VARIANTS["timm"].step_counter == "group"
    theirs_net, ours_net = small_net(), small_net()
    data = dropping_batches()
    theirs = timm_optim.Lamb(groups(theirs_net, 0.01), lr=0.05, always_adapt=True)
    ours = Lamb(groups(ours_net, 0.01), lr=0.05, rule="timm", always_adapt=True, **path)
    assert_close(train_dropping(ours_net, ours, data), train_dropping(theirs_net, theirs, data))


@pytest.mark.parametrize("path", PATHS[:2])
def test_torch_optimizer_counts_steps_per_tensor_as_torch_optimizer(path):
    torch_optimizer = pytest.importorskip("torch_optimizer")
    assert VARIANTS["torch_optimizer"].step_counter == "tensor"
    theirs_net, ours_net = small_net(), small_net()
    data = dropping_batches()
    theirs = torch_optimizer.Lamb(theirs_net.parameters(), lr=0.02, weight_decay=0.01, debias=True)
    ours = Lamb(ours_net.parameters(), lr=0.02, weight_decay=0.01, rule="torch_optimizer",
                bias_correction=True, **path)
    assert_close(train_dropping(ours_net, ours, data), train_dropping(theirs_net, theirs, data))


@pytest.mark.parametrize("path", PATHS[:2])
def test_apex_and_tfa_count_steps_per_group_and_globally_as_their_ports(path):
    from ports.apex_lamb import ApexFusedLamb
    from ports.tfa_lamb import TfaLamb

    data = dropping_batches()
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    port = ApexFusedLamb([{"index": [0, 2], "weight_decay": 0.01}, {"index": [1, 3], "weight_decay": 0.0}],
                         lr=0.05, use_nvlamb=True)
    theirs = port_dropping(net, port, data)
    net = small_net()
    ours = Lamb(groups(net, 0.01), lr=0.05, rule="nvlamb", **path)
    assert_close(train_dropping(net, ours, data), theirs)
    theirs = port_dropping(small_net(), TfaLamb(names, lr=0.02, weight_decay=0.01), data)
    net = small_net()
    ours = Lamb(net.parameters(), lr=0.02, weight_decay=0.01, rule="tfa", **path)
    assert_close(train_dropping(net, ours, data), theirs)


def test_a_group_added_later_counts_from_the_optimizer_step_where_the_counter_is_global():
    """optax and TF-Addons share one count: a tensor first stepped at the optimizer's step 3 gets
    t = 3 (TF-Addons: iterations + 1); timm's group counter starts the new group at 1."""
    for rule, t in (("tfa", 3), ("optax", 3), ("timm", 1), ("paper", 3), ("blog", 1)):
        a, b = torch.nn.Parameter(torch.ones(2, dtype=F64)), torch.nn.Parameter(torch.ones(2, dtype=F64))
        opt = Lamb([a], rule=rule)
        for _ in range(2):
            a.grad = torch.ones(2, dtype=F64)
            opt.step()
        opt.add_param_group({"params": [b]})
        a.grad, b.grad = torch.ones(2, dtype=F64), torch.ones(2, dtype=F64)
        opt.step()
        assert (opt.state[a]["step"], opt.state[b]["step"]) == (3, t), rule
