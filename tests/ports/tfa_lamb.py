"""TensorFlow Addons' LAMB, written here in NumPy (TensorFlow is not needed to run lambexp), written
independently (not copied) from tensorflow/addons at commit d208d752e98c310280938efa939117bf635a60a8,
tensorflow_addons/optimizers/lamb.py: the step t = iterations + 1 shared by every variable (122-142),
the dense step (144-181), the exclusion tests (243-254: a regex search of each pattern in the
variable's name; layer adaptation falls back to the decay list when it has none, 107-112). A
gradient of None is skipped (Keras' apply_gradients leaves the variable out), while the shared
step t = iterations + 1 still counts every apply (125).
"""

from __future__ import annotations

import re

import numpy as np


class TfaLamb:
    """``step(params, grads)`` on lists of float64 arrays named ``names``; TFA's defaults."""

    def __init__(self, names: list[str], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, exclude_from_weight_decay: list[str] | None = None,
                 exclude_from_layer_adaptation: list[str] | None = None):
        self.names, self.lr, self.betas, self.eps, self.weight_decay = names, lr, betas, eps, weight_decay
        self.no_decay = exclude_from_weight_decay or []
        self.no_adapt = exclude_from_layer_adaptation or self.no_decay
        self.m, self.v, self.iterations = {}, {}, 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        beta1, beta2 = self.betas
        t = self.iterations + 1
        for i, (w, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            m = self.m.get(i, np.zeros_like(w)) * beta1 + (1 - beta1) * g
            v = self.v.get(i, np.zeros_like(w)) * beta2 + (1 - beta2) * g * g
            self.m[i], self.v[i] = m, v
            u = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + self.eps)
            if not any(re.search(p, self.names[i]) for p in self.no_decay):
                u = u + self.weight_decay * w
            ratio = 1.0
            if not any(re.search(p, self.names[i]) for p in self.no_adapt):
                weight_norm, update_norm = np.linalg.norm(w), np.linalg.norm(u)
                if weight_norm > 0 and update_norm > 0:
                    ratio = weight_norm / update_norm
            params[i] = w - self.lr * ratio * u
        self.iterations += 1
