"""lambexp's optimizers: LAMB (both published rules, Adam mode), LARS, and their trust statistics."""

from lambexp.optim.lamb import Lamb
from lambexp.optim.lars import Lars
from lambexp.optim.registry import OPTIMIZERS, build_optimizer
from lambexp.optim.trust import TrustRatioOptimizer

__all__ = ["Lamb", "Lars", "OPTIMIZERS", "TrustRatioOptimizer", "build_optimizer"]
