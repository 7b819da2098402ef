"""Speed only: how lambexp's optimizers run fast, apart from what they compute.

``rules.py`` holds each rule's pieces, the reference, and ``variants.py`` says which pieces each
published LAMB takes. ``fused`` compiles ``rules.lamb_update`` itself; ``foreach`` runs the same
elementwise pieces as ``torch._foreach_*`` ops over many tensors and takes the ratio from
``rules.trust``. Both are tested against ``rules.py``, never the other way round; a reader of a
rule never needs this package.

- ``foreach``: the multi-tensor steps (``torch._foreach_*``), the default path of Lamb and Lars;
  on the CPU a large tensor's direction comes from torch's fused Adam kernel.
- ``chunks``: cache-sized runs of tensors and reused scratch buffers for the CPU.
- ``fused``: ``Lamb(fused=True)``, ``rules.lamb_update`` compiled by torch.compile, per rule.
"""
