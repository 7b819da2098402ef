"""Each rule's own ε, from the one table of the rules (``variants.VARIANTS``), and torch.optim.Adam's:
the optimizers fill ``eps=None`` from it, and configs resolve `eps: null` from it
(lambexp.config.schema.default_eps). Torch-free, so the config layer reads it."""

from lambexp.optim.variants import RULES, VARIANTS

DEFAULT_EPS = {name: variant.eps for name, variant in VARIANTS.items()}
TORCH_ADAM_EPS = 1e-8  # torch.optim.Adam's own default, for the torch_adam arms

__all__ = ["DEFAULT_EPS", "RULES", "TORCH_ADAM_EPS"]
