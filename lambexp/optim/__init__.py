"""lambexp's optimizers: LAMB (every published rule, Adam mode), LARS, and their trust statistics.
The table of LAMB rules they step by is ``lambexp.base.variants`` (torch-free)."""

from lambexp.optim.lamb import Lamb
from lambexp.optim.lars import Lars
from lambexp.optim.registry import OPTIMIZERS, build_optimizer
from lambexp.optim.trust import TrustRatioOptimizer

__all__ = ["OPTIMIZERS", "Lamb", "Lars", "TrustRatioOptimizer", "build_optimizer"]
