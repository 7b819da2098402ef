"""lambexp's optimizers: LAMB (both published rules, Adam mode), LARS, and their trust statistics.

The names below load on first use, so that ``lambexp.optim.variants`` (torch-free) can be read by
the config layer without importing torch."""

from importlib import import_module

_HOMES = {"Lamb": "lamb", "Lars": "lars", "OPTIMIZERS": "registry", "build_optimizer": "registry",
          "TrustRatioOptimizer": "trust"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"lambexp.optim.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'lambexp.optim' has no attribute {name!r}")
