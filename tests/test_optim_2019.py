"""The E-configs against the code their figures came from: each shipped arm's optimizer, built from
its config exactly as a run builds it, steps LeNet in lockstep with the 2019 pytorch-lamb optimizer of
its experiment (benchmarks/seed_lamb.py): May 2019 for the post's E1-E5, June 2019 for the README's
E6. A dropped betas, a leaked weight decay or a bias correction left on would show here."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lambexp.config import load_experiment
from lambexp.model import build_model
from lambexp.optim import build_optimizer
from lambexp.runner.arm import optimizer_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from seed_lamb import SeedLamb, SeedLambJune2019  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ERA = {  # experiment → the 2019 optimizer its figures ran (docs/claims.md)
    "adam_vs_lamb.yaml": SeedLamb, "lamb_lr.yaml": SeedLamb, "lamb_wd.yaml": SeedLamb,
    "adam_lr.yaml": SeedLamb, "readme_lr02.yaml": SeedLambJune2019,
}
BLOG = dict(betas=(0.9, 0.99), weight_decay=0.0)
README = dict(lr=0.02, betas=(0.9, 0.999), weight_decay=0.01)
SCRIPT = {  # (experiment, arm) → the 2019 script's arguments for that run, as docs/claims.md gives them
    ("adam_vs_lamb", "adam"): dict(lr=0.01, adam=True, **BLOG),
    ("adam_vs_lamb", "lamb"): dict(lr=0.01, adam=False, **BLOG),
    ("lamb_lr", "lamb_lr0.01"): dict(lr=0.01, adam=False, **BLOG),
    ("lamb_lr", "lamb_lr0.1"): dict(lr=0.1, adam=False, **BLOG),
    ("lamb_wd", "lamb_wd0"): dict(lr=0.1, adam=False, **BLOG),
    ("lamb_wd", "lamb_wd0.01"): dict(lr=0.1, adam=False, betas=(0.9, 0.99), weight_decay=0.01),
    ("adam_lr", "adam_lr0.01"): dict(lr=0.01, adam=True, **BLOG),
    ("adam_lr", "adam_lr0.1"): dict(lr=0.1, adam=True, **BLOG),
    ("readme_lr02", "adam"): dict(adam=True, **README),
    ("readme_lr02", "lamb"): dict(adam=False, **README),
}
STEPS = 30


def shipped_lamb_arms() -> list:
    arms = []
    for config, era in ERA.items():
        for arm in load_experiment(CONFIGS / config).arms:
            script = SCRIPT[(config[:-5], arm.name)]
            arms.append(pytest.param(arm, era, script, id=f"{config[:-5]}/{arm.name}"))
    return arms


def test_every_post_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(ERA)
    arms = {(c[:-5], a.name) for c in ERA for a in load_experiment(CONFIGS / c).arms}
    assert arms == set(SCRIPT)


@pytest.mark.parametrize("arm, era, script", shipped_lamb_arms())
def test_config_arm_steps_as_the_2019_code(arm, era, script):
    torch.manual_seed(arm.seed)
    ours_model = build_model("lenet").double()
    seed_model = copy.deepcopy(ours_model)
    ours = build_optimizer(arm.optimizer, ours_model.named_parameters(), **optimizer_args(arm))
    # the 2019 script's own arguments (--lr, --wd, --optimizer=adam|lamb), the betas and eps of the
    # day (eps: the class's own default), written out above, not read from the config
    seed = era(seed_model.parameters(), **script)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        x = torch.randn(32, 1, 28, 28, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 10, (32,), generator=generator)
        for model, opt in ((ours_model, ours), (seed_model, seed)):
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
    for (name, p), q in zip(ours_model.named_parameters(), seed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=f"{name} after {STEPS} steps")
    stats = ours.trust_stats()
    for i, q in enumerate(seed_model.parameters()):
        state = seed.state[q]
        if era is SeedLamb:  # RMS norms
            expected = (state["r1"], state["r2"])
        else:  # L2 norms, ‖w‖ clamped; the ratio is not clipped
            expected = (state["weight_norm"], state["adam_norm"])
            torch.testing.assert_close(stats["r"][i].double(), state["trust_ratio"], rtol=1e-9, atol=0)
        torch.testing.assert_close(stats["r1"][i].double(), expected[0], rtol=1e-9, atol=0)
        torch.testing.assert_close(stats["r2"][i].double(), expected[1], rtol=1e-9, atol=0)


def test_the_june_rule_is_not_the_may_rule():
    """The two eras differ on E6's arms (the comparison above can tell them apart)."""
    arm = load_experiment(CONFIGS / "readme_lr02.yaml").arms[1]
    torch.manual_seed(0)
    a = build_model("lenet").double()
    b = copy.deepcopy(a)
    ours = build_optimizer(arm.optimizer, a.named_parameters(), **optimizer_args(arm))
    may = SeedLamb(b.parameters(), lr=arm.lr, betas=arm.betas, weight_decay=arm.weight_decay)
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.arange(8)
    for model, opt in ((a, ours), (b, may)):
        F.nll_loss(model(x), y).backward()
        opt.step()
    assert not torch.allclose(a.fc1.weight, b.fc1.weight, rtol=1e-6, atol=0)


def _group(arm) -> dict:
    opt = build_optimizer(arm.optimizer, [torch.nn.Parameter(torch.ones(2))], **optimizer_args(arm))
    [group] = opt.param_groups
    return {"class": type(opt).__name__, **{k: group[k] for k in
            ("lr", "betas", "eps", "weight_decay", "rule", "clamp", "adam", "bias_correction", "fused")}}


def test_the_beyond_configs_build_the_optimizers_their_comments_state():
    """large_batch: lr 0.01·√(B/512), betas (0.9, 0.99), no decay, the rule's own eps; lr_sweep:
    7 lrs half a decade apart × wd 0, 0.01 for Adam mode, blog and paper LAMB. Written out here from
    the configs' header comments, not read from the configs."""
    batch_lr = {512: 0.01, 2048: 0.02, 8192: 0.04, 16384: 0.0566}
    kinds = {"adam": ("blog", True), "lamb": ("blog", False), "lambpaper": ("paper", False)}
    arms = load_experiment(CONFIGS / "beyond" / "large_batch.yaml").arms
    assert len(arms) == 12
    for arm in arms:
        kind, batch = arm.name.split("_b")
        rule, adam = kinds[kind]
        assert arm.batch_size == int(batch) and arm.warmup_epochs == 1 and arm.epochs == 6
        assert _group(arm) == {"class": "Lamb", "lr": batch_lr[int(batch)], "betas": (0.9, 0.99),
                               "eps": 1e-8 if rule == "blog" else 1e-6, "weight_decay": 0.0,
                               "rule": rule, "clamp": 10.0, "adam": adam, "bias_correction": True,
                               "fused": False}, arm.name
    lrs = [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]
    arms = load_experiment(CONFIGS / "beyond" / "lr_sweep.yaml").arms
    expected = [(kind, lr, wd) for kind in ("adam", "lambblog", "lambpaper") for lr in lrs
                for wd in (0.0, 0.01)]
    assert [(a.name.split("_")[0], a.lr, a.weight_decay) for a in arms] == expected
    for arm in arms:
        rule, adam = {"adam": ("blog", True), "lambblog": ("blog", False),
                      "lambpaper": ("paper", False)}[arm.name.split("_")[0]]
        assert _group(arm) == {"class": "Lamb", "lr": arm.lr, "betas": (0.9, 0.99),
                               "eps": 1e-8 if rule == "blog" else 1e-6, "weight_decay": arm.weight_decay,
                               "rule": rule, "clamp": 10.0, "adam": adam, "bias_correction": True,
                               "fused": False}, arm.name
        assert (arm.batch_size, arm.epochs) == (512, 6)
