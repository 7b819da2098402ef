"""The lens: the post's per-layer view (how large is each step against its weight) of any PyTorch
training, in one line: ``lambexp.watch(optimizer, model)``. docs/watch.md."""

from lambexp.lens.watch import Watch, watch

__all__ = ["Watch", "watch"]
