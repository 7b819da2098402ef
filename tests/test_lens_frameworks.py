"""The lens where people train, for real: Lightning's Trainer with LensCallback, the Hugging Face
Trainer with LensTrainerCallback (both installed as test extras), and torchrun with DDP. Each trains a
tiny model for a few steps on the CPU; the events are read back with TensorBoard's own reader and the
numbers checked against weights the test saved itself around each step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import events
from lens_helpers import tiny_net
from torch import nn

STEPS, EVERY = 7, 3  # watched: steps 0, 3, 6


def saved_weights(module: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().double().numpy().copy() for n, p in module.named_parameters()}


def check_events(logdir: Path, before: list[dict], after: list[dict], lrs: list[float]) -> None:
    """Every watched step's r1 and r2 of every tensor, from TensorBoard, against the saved weights."""
    acc = events(logdir)
    for name in before[0]:
        r1 = acc.Scalars(f"trust_layer/{name}/r1")
        r2 = acc.Scalars(f"trust_layer/{name}/r2")
        assert [e.step for e in r1] == list(range(0, STEPS, EVERY)), name
        for e1, e2 in zip(r1, r2):
            w0, w1 = before[e1.step][name], after[e1.step][name]
            assert e1.value == pytest.approx(np.linalg.norm(w0), rel=1e-5)
            assert e2.value == pytest.approx(np.linalg.norm(w0 - w1) / lrs[e1.step], rel=1e-4)


def test_lightning_callback(tmp_path):
    lightning = pytest.importorskip("lightning.pytorch")
    from lambexp.lens.lightning import LensCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_net()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=0.01)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (1 + t))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    before, after, lrs = [], [], []

    class Saver(lightning.Callback):  # independent of lambexp: weights around each step
        def on_train_batch_start(self, trainer, module, *_):
            before.append(saved_weights(module))
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

        def on_train_batch_end(self, trainer, module, *_):
            after.append(saved_weights(module))

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 2))
    trainer = lightning.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[Saver(), LensCallback(tmp_path / "lens", every=EVERY)])
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))
    assert len(set(lrs)) == STEPS  # the schedule changes the lr at every step
    check_events(tmp_path / "lens", before, after, lrs)
    assert "trust_layer/net.0.weight/relative_step" in events(tmp_path / "lens").Tags()["scalars"]


def test_hugging_face_trainer_callback(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lambexp.lens.hf import LensTrainerCallback

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_net()

        def forward(self, x, labels):
            return {"loss": nn.functional.mse_loss(self.net(x), labels)}

    before, after, lrs = [], [], []

    class Saver(transformers.TrainerCallback):  # independent of lambexp: weights around each step
        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            before.append(saved_weights(model))
            lrs.append(optimizer.param_groups[0]["lr"])

        def on_step_end(self, args, state, control, model=None, **kwargs):
            after.append(saved_weights(model))

    torch.manual_seed(0)
    data = [{"x": torch.randn(4), "labels": torch.randn(2)} for _ in range(64)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=STEPS, per_device_train_batch_size=8, learning_rate=0.01,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=Model(), args=args, train_dataset=data,
                                   callbacks=[Saver(), LensTrainerCallback(tmp_path / "lens", every=EVERY)])
    trainer.train()
    assert len(set(lrs)) > 1  # the Trainer's linear schedule changes the lr
    check_events(tmp_path / "lens", before, after, lrs)


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch import nn
    import lambexp

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    with lambexp.watch(optimizer, model, logdir=sys.argv[1], every=2):
        for step in range(5):
            torch.manual_seed(100 * dist.get_rank() + step)
            loss = model(torch.randn(8, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    dist.barrier()
    open(sys.argv[1] + f".rank{dist.get_rank()}.done", "w").close()  # not stdout: the ranks share it
    dist.destroy_process_group()
""")


def test_under_torchrun_rank_0_writes_and_no_rank_waits(tmp_path):
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), str(tmp_path / "ddp.py"), str(tmp_path / "lens")],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "lens.rank0.done").exists() and (tmp_path / "lens.rank1.done").exists()
    assert len(list((tmp_path / "lens").glob("events.out.tfevents.*"))) == 1  # rank 0's alone
    records = [json.loads(line) for line in (tmp_path / "lens" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert records[0]["name"] == ["0.weight", "0.bias", "1.weight", "1.bias"]  # not "module.0.weight"
