"""Which kind of layer a parameter tensor belongs to (embedding, attention, MLP, norm, bias, …), so
the lens can say which kinds LAMB would slow down or speed up. From the module that owns the tensor
when the model is known, else from the tensor's name alone.
"""

from __future__ import annotations

import re

from torch import nn

KINDS = ("embedding", "attention", "MLP", "norm", "bias", "conv", "linear", "other")

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase,
          *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_ATTENTION = re.compile(r"(^|[._])(attn|attention|self_attn|q_proj|k_proj|v_proj|o_proj|qkv|query|key|"
                        r"value|in_proj|out_proj|c_attn)([._]|$)", re.IGNORECASE)
_MLP = re.compile(r"(^|[._])(mlp|ffn|feed_forward|feedforward|fc\d*|c_fc|intermediate|dense|"
                  r"up_proj|down_proj|gate_proj|w[123])([._]|$)", re.IGNORECASE)
_NORM_NAME = re.compile(r"(^|[._])(ln\w*|\w*norm\w*|bn\d*)([._]|$)", re.IGNORECASE)
_EMBEDDING = re.compile(r"(^|[._])(\w*embed\w*|wte|wpe|tok_emb\w*|token\w*|pos_emb\w*|position\w*|"
                        r"cls_token)([._]|$)", re.IGNORECASE)


def kind_of(name: str, ndim: int, module: nn.Module | None = None) -> str:
    """One of ``KINDS`` for the tensor ``name`` (as ``named_parameters`` gives it) with ``ndim``
    dimensions, owned by ``module`` when known. Biases first: a bias is a bias wherever it sits;
    then what the module is, then what its name says."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or (ndim == 1 and leaf.endswith("bias")):
        return "bias"
    if isinstance(module, _NORMS) or (module is None and ndim == 1 and _NORM_NAME.search(name)):
        return "norm"
    if isinstance(module, nn.Embedding) or _EMBEDDING.search(name):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention) or _ATTENTION.search(name):
        return "attention"
    if _MLP.search(name):
        return "MLP"
    if isinstance(module, nn.modules.conv._ConvNd) or (module is None and ndim >= 3):
        return "conv"
    if isinstance(module, nn.Linear) or (module is None and ndim == 2):
        return "linear"
    return "norm" if ndim == 1 and _NORM_NAME.search(name) else "other"


def named_kinds(model: nn.Module) -> dict[str, str]:
    """``kind_of`` for every parameter of ``model``, by its name."""
    owners = {f"{prefix}.{p}" if prefix else p: module
              for prefix, module in model.named_modules() for p, _ in module.named_parameters(recurse=False)}
    return {name: kind_of(name, p.ndim, owners.get(name)) for name, p in model.named_parameters()}
