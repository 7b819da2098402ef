"""Each rule's own ε, the one table of it: the optimizers fill ``eps=None`` from it, and configs resolve
`eps: null` from it (lambexp.config.schema.default_eps). Torch-free, so the config layer reads it."""

RULES = ("blog", "paper")
DEFAULT_EPS = {"blog": 1e-8, "paper": 1e-6}  # pytorch-lamb's 1e-8 (May 2019); the paper's 1e-6
TORCH_ADAM_EPS = 1e-8  # torch.optim.Adam's own default, for the torch_adam arms
