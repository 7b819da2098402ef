"""NVIDIA apex's FusedLAMB, written here in NumPy from its CUDA kernel, since apex does not install
without CUDA. Written independently (not copied) from NVIDIA/apex at commit
6424da3b4faa6c8f062da4a48c424fff3f02d42d:
- apex/optimizers/fused_lamb.py 125-160: the global gradient norm over every group's gradients;
  162-242: per group, the step count, bias corrections and the kernel call;
- csrc/multi_tensor_lamb.cu 38-192 (LAMBStage1Functor): the clip factor (53-54), the decay in
  the update when adam_w_mode (110-118), the moments and u = m̂/(√v̂ + ε); 196-267
  (LAMBStage2Functor): r = ‖w‖/‖u‖ where use_nvlamb or the group's decay is not 0 (210-217);
  269-319: ‖w‖ per tensor before stage 1, ‖u‖ per tensor after it. A gradient of None is skipped
  (fused_lamb.py 129-130, 178-180), while the group's step count still advances (167-172).
"""

from __future__ import annotations

import numpy as np


class ApexFusedLamb:
    """``step(params, grads)`` on lists of float64 arrays grouped as ``groups`` (index lists with a
    weight decay each); the defaults are FusedLAMB's."""

    def __init__(self, groups: list[dict], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 max_grad_norm: float = 1.0, use_nvlamb: bool = False):
        self.groups, self.lr, self.betas, self.eps = groups, lr, betas, eps
        self.max_grad_norm, self.use_nvlamb = max_grad_norm, use_nvlamb
        self.m, self.v, self.steps = {}, {}, [0] * len(groups)

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        global_norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads if g is not None))
        clip = global_norm / self.max_grad_norm if global_norm > self.max_grad_norm else 1.0
        beta1, beta2 = self.betas
        for k, group in enumerate(self.groups):
            self.steps[k] += 1
            t, decay = self.steps[k], group["weight_decay"]
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            for i in group["index"]:
                if grads[i] is None:
                    continue
                w, g = params[i], grads[i] / clip
                weight_norm = np.sqrt(np.sum(w * w))
                m = self.m.get(i, np.zeros_like(w)) * beta1 + (1 - beta1) * g
                v = self.v.get(i, np.zeros_like(w)) * beta2 + (1 - beta2) * g * g
                self.m[i], self.v[i] = m, v
                u = (m / bc1) / (np.sqrt(v / bc2) + self.eps) + decay * w
                update_norm = np.sqrt(np.sum(u * u))
                adapt = self.use_nvlamb or decay != 0
                ratio = weight_norm / update_norm if adapt and weight_norm and update_norm else 1.0
                params[i] = w - self.lr * ratio * u
