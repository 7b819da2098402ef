"""Speed only: how lambexp's optimizers run fast, apart from what they compute.

Nothing here states a rule. ``rules.py`` holds every equation once and ``variants.py`` says which
pieces each published LAMB takes; the steps here run those pieces over many tensors at once and
are tested against ``rules.py``, never the other way round. A reader of a rule never needs this
package.

- ``foreach``: the multi-tensor steps (``torch._foreach_*``), the default path of Lamb and Lars;
  on the CPU a large tensor's direction comes from torch's fused Adam kernel.
- ``chunks``: cache-sized runs of tensors and reused scratch buffers for the CPU.
- ``fused``: ``Lamb(fused=True)``, the step as torch.compile'd kernels.
"""
