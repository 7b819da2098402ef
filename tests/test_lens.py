"""lambexp.watch against an independent computation: the test keeps its own copy of the weights
before and after every step (and each group's lr), works out r1, r2, r and the relative step in
float64 with numpy, and compares them with what the lens wrote (metrics.jsonl read as plain JSON,
and the TensorBoard events read back with TensorBoard's own reader)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import events
from lens_helpers import Recorder, tiny_net
from torch import nn

import lambexp
from lambexp.base.variants import VARIANTS
from lambexp.optim import rules
from lambexp.optim.lamb import Lamb
from lambexp.optim.lars import Lars


def records(logdir: Path, kind: str = "trust") -> list[dict]:
    lines = (logdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def expected(before: dict, after: dict, lr: dict) -> dict[str, tuple[float, float, float, float]]:
    """name → (r, r1, r2, relative_step), by hand: r1 = ‖w‖, r2 = ‖Δw‖/lr, r = r1/r2 (1 where either
    is 0), relative = ‖Δw‖/‖w‖."""
    out = {}
    for name, w in before.items():
        r1 = float(np.linalg.norm(w))
        d = float(np.linalg.norm(w - after[name]))
        r2 = d / lr[name] if lr[name] > 0 else 0.0
        r = r1 / r2 if r1 > 0 and r2 > 0 else 1.0
        out[name] = (r, r1, r2, d / r1 if r1 > 0 else (math.inf if d > 0 else 0.0))
    return out


def check_against(logdir: Path, recorder: Recorder, every: int) -> None:
    recs = records(logdir)
    watched = [s for s in range(len(recorder.steps)) if s % every == 0]
    assert [r["step"] for r in recs] == watched
    for rec in recs:
        step = recorder.steps[rec["step"]]
        want = expected(step.before, step.after, step.lr)
        assert rec["name"] == list(want)
        for key, column in zip(("r", "r1", "r2", "relative_step"), range(4)):
            np.testing.assert_allclose(rec[key], [want[n][column] for n in rec["name"]], rtol=2e-5,
                                       atol=1e-7, err_msg=f"{key} at step {rec['step']}")


def timm_lamb(groups):
    from timm.optim import Lamb as TimmLamb

    return TimmLamb(groups, lr=0.02, weight_decay=0.01)


def torch_optimizer_lamb(groups):
    from torch_optimizer import Lamb as TorchOptimizerLamb

    return TorchOptimizerLamb(groups, lr=0.02, weight_decay=0.01)


OPTIMIZERS = {
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1),
    "sgd_momentum_decay": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=0.01),
    "lamb": lambda groups: Lamb(groups, lr=0.02, weight_decay=0.01, rule="paper"),
    "lars": lambda groups: Lars(groups, lr=0.05, momentum=0.9, weight_decay=0.001),
    "timm_lamb": timm_lamb,
    "torch_optimizer_lamb": torch_optimizer_lamb,
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_each_watched_step_matches_the_weights_saved_around_it(make, tmp_path):
    """Two param groups with different lrs, a scheduler that changes them every step, every=3 over
    10 steps: the watched steps are 0, 3, 6, 9, each matching its own step's weights and lrs."""
    torch.manual_seed(0)
    net = tiny_net()
    head = list(net[2].parameters())
    body = [p for p in net.parameters() if all(p is not q for q in head)]
    optimizer = make([{"params": body}, {"params": head, "lr": 0.003}])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1 + t))
    recorder = Recorder(net, optimizer)
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=3) as handle:
        recorder.train(10, after_step=schedule.step)
    assert handle.steps == 10
    check_against(tmp_path / "w", recorder, every=3)
    lrs = {s.lr["2.weight"] for s in recorder.steps}
    assert len(lrs) == 10  # the fixture really changes the lr between watched steps


def test_tensorboard_tags_and_steps_read_back(tmp_path):
    torch.manual_seed(1)
    net = tiny_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    recorder = Recorder(net, optimizer)
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=4):
        recorder.train(9)
    acc = events(tmp_path / "w")
    tags = acc.Tags()
    assert {"trust/r", "trust/r1", "trust/r2", "trust/relative_step"} <= set(tags["histograms"])
    for name in ("0.weight", "0.bias", "1.weight", "2.bias"):
        for key in ("r", "r1", "r2", "relative_step"):
            assert f"trust_layer/{name}/{key}" in tags["scalars"]
    r = acc.Scalars("trust_layer/0.weight/r")
    assert [e.step for e in r] == [0, 4, 8]
    for event in r:
        s = recorder.steps[event.step]
        assert event.value == pytest.approx(expected(s.before, s.after, s.lr)["0.weight"][0], rel=1e-5)
    assert [e.step for e in acc.Histograms("trust/r1")] == [0, 4, 8]
    assert acc.Histograms("trust/r1")[0].histogram_value.num == 6  # one value per tensor


def test_lamb_applied_ratio_equals_the_reference_rule(tmp_path):
    """For lambexp's Lamb the lens also writes the r, r1, r2 the step applied (applied/*); they
    equal rules.lamb's, run on the test's own copy of the weights, gradients and moments."""
    torch.manual_seed(2)
    net = tiny_net().double()
    hp = {"lr": 0.02, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01}
    optimizer = Lamb(net.parameters(), rule="paper", **hp)
    moments = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in net.named_parameters()}
    want = {}
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=2):
        for t in range(1, 6):
            loss = net(torch.randn(8, 4, dtype=torch.float64)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            for n, p in net.named_parameters():
                ref = rules.lamb(VARIANTS["paper"], p.detach().clone(), p.grad.clone(), *moments[n], t,
                                 lr=hp["lr"], beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
                                 clamp=10.0)
                moments[n] = (ref.m, ref.v)
                want[(t - 1, n)] = (float(ref.r), float(ref.r1), float(ref.r2))
            optimizer.step()
    applied = records(tmp_path / "w", "applied")
    assert [r["step"] for r in applied] == [0, 2, 4]
    for rec in applied:
        for j, n in enumerate(rec["name"]):
            got = (rec["r"][j], rec["r1"][j], rec["r2"][j])
            assert got == pytest.approx(want[(rec["step"], n)], rel=1e-6)


def test_frozen_mid_way_and_a_group_added_mid_way(tmp_path):
    """A tensor frozen after step 4 is skipped and counted, never logged as r = 1; a param group
    added after step 5 joins the records with its own lr and a group<i>.param<j> name (it is not
    the model's)."""
    torch.manual_seed(3)
    net = tiny_net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    extra = nn.Parameter(torch.randn(3))
    recorder = Recorder(net, optimizer, extra=[extra])
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=2) as handle:
        recorder.train(4)
        net[0].bias.requires_grad_(False)
        net[0].bias.grad = None
        recorder.train(2)
        optimizer.add_param_group({"params": [extra], "lr": 0.2})
        recorder.train(4)
    recs = records(tmp_path / "w")
    assert [r["step"] for r in recs] == [0, 2, 4, 6, 8]
    assert "0.bias" in recs[1]["name"] and "0.bias" not in recs[2]["name"]
    assert recs[2]["skipped"] == ["0.bias"] and handle.skipped == 3  # steps 4, 6, 8
    assert recs[3]["name"][-1] == "group1.param0"
    check_against(tmp_path / "w", recorder, every=2)


def test_lr_zero_gives_r2_zero_and_r_one(tmp_path):
    net = tiny_net()
    optimizer = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.0},
                                 {"params": net[2].parameters(), "lr": 0.1}], momentum=0.0)
    recorder = Recorder(net, optimizer)
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=1):
        recorder.train(1)
    rec = records(tmp_path / "w")[0]
    first = rec["name"].index("0.weight")
    assert (rec["r"][first], rec["r2"][first], rec["relative_step"][first]) == (1.0, 0.0, 0.0)
    assert rec["r1"][first] > 0 and rec["r"][rec["name"].index("2.weight")] != 1.0


def test_close_removes_the_hooks_and_stepping_writes_nothing_more(tmp_path):
    net = tiny_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    def hooks():
        return len(optimizer._optimizer_step_pre_hooks), len(optimizer._optimizer_step_post_hooks)

    hooks_before = hooks()
    handle = lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=1)
    recorder = Recorder(net, optimizer)
    recorder.train(2)
    handle.close()
    assert hooks() == hooks_before
    written = {p.name: p.stat().st_size for p in (tmp_path / "w").iterdir()}
    recorder.train(3)
    assert {p.name: p.stat().st_size for p in (tmp_path / "w").iterdir()} == written
    assert len(records(tmp_path / "w")) == 2
    handle.close()  # twice is harmless


def test_a_closure_step_measures_the_gradients_it_computes(tmp_path):
    """Lightning steps with a closure: the gradients appear inside step(), after the pre-hook."""
    torch.manual_seed(4)
    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    recorder = Recorder(net, optimizer)
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=1):
        recorder.train(2, closure=True)
    check_against(tmp_path / "w", recorder, every=1)
    assert len(records(tmp_path / "w")[0]["name"]) == 6


def test_without_a_model_tensors_are_named_by_position(tmp_path):
    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with lambexp.watch(optimizer, logdir=tmp_path / "w", every=1):
        Recorder(net, optimizer).train(1)
    assert records(tmp_path / "w")[0]["name"] == [f"group0.param{j}" for j in range(6)]


@pytest.mark.parametrize("every", [0, -3, 1.5, True, "30"])
def test_bad_every_is_refused(every, tmp_path):
    optimizer = torch.optim.SGD(tiny_net().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every must be a whole number"):
        lambexp.watch(optimizer, logdir=tmp_path / "w", every=every)
    assert not (tmp_path / "w").exists()


def test_an_optimizer_without_parameters_and_an_unwritable_logdir_are_refused(tmp_path):
    optimizer = torch.optim.SGD(tiny_net().parameters(), lr=0.1)
    optimizer.param_groups[0]["params"] = []
    with pytest.raises(ValueError, match="no parameters"):
        lambexp.watch(optimizer, logdir=tmp_path / "w")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        lambexp.watch(torch.optim.SGD(tiny_net().parameters(), lr=0.1), logdir=tmp_path / "file")
    with pytest.raises(TypeError, match="expected a torch.optim.Optimizer"):
        lambexp.watch(object())


def test_a_folder_that_holds_records_is_not_written_again(tmp_path):
    """Appending a second training to the first's records would mix the two: refused, nothing written."""
    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with lambexp.watch(optimizer, net, logdir=tmp_path / "w", every=1):
        Recorder(net, optimizer).train(1)
    written = sorted((p.name, p.stat().st_size) for p in (tmp_path / "w").iterdir())
    with pytest.raises(ValueError, match="already holds a training's records"):
        lambexp.watch(optimizer, net, logdir=tmp_path / "w")
    assert sorted((p.name, p.stat().st_size) for p in (tmp_path / "w").iterdir()) == written


FSDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import lambexp

dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
try:
    lambexp.watch(optimizer, model, logdir=sys.argv[1])
except ValueError as err:
    print(err)
dist.destroy_process_group()
"""


def test_sharded_parameters_are_refused_in_one_line(tmp_path):
    """FSDP2's parameters are DTensors: a shard's norm is not its layer's, so nothing is recorded."""
    result = subprocess.run([sys.executable, "-c", FSDP_SCRIPT, str(tmp_path / "w")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith(
        "lambexp.watch: sharded parameters (FSDP, DTensor) are not supported")
    assert not (tmp_path / "w").exists()
