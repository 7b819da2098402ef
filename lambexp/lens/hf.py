"""The lens as a Hugging Face ``TrainerCallback``: ``Trainer(..., callbacks=[LensTrainerCallback()])``
watches the Trainer's optimizer from the start of training to its end
(pip install 'lambexp[hf]')."""

from __future__ import annotations

import os

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("lambexp.lens.hf needs transformers: pip install 'lambexp[hf]'") from None

from lambexp.lens.watch import Watch, watch


class LensTrainerCallback(TrainerCallback):
    """``lambexp.watch`` on the Trainer's optimizer, named by the model's parameters.

    Args:
        logdir: where to write (default ``runs/watch/<UTC time>``).
        every: watch the 1st optimizer step and every ``every``-th after it.
    """

    def __init__(self, logdir: str | os.PathLike | None = None, every: int = 30):
        self.logdir, self.every = logdir, every
        self.handle: Watch | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None:  # transformers passes the optimizer it made; nothing to watch without it
            raise ValueError("lambexp.watch: the Trainer passed no optimizer to on_train_begin")
        self.handle = watch(optimizer, model, logdir=self.logdir, every=self.every)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.close()
            self.handle = None
