"""The lens as a Lightning callback: ``Trainer(callbacks=[LensCallback(every=30)])`` watches each of
the trainer's optimizers from the start of training to its end (pip install 'lambexp[lightning]')."""

from __future__ import annotations

import os
from pathlib import Path

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError("lambexp.lens.lightning needs Lightning:"
                          " pip install 'lambexp[lightning]'") from None

from lambexp.lens.watch import Watch, watch


class LensCallback(Callback):
    """``lambexp.watch`` on every optimizer of the trainer, named by the LightningModule's parameters.

    Args:
        logdir: where to write (default ``runs/watch/<UTC time>``); with several optimizers, each
            gets ``optimizer<k>/`` in it.
        every: watch the 1st optimizer step and every ``every``-th after it.
    """

    def __init__(self, logdir: str | os.PathLike | None = None, every: int = 30):
        self.logdir, self.every = logdir, every
        self.handles: list[Watch] = []

    def on_train_start(self, trainer, pl_module) -> None:
        optimizers = list(trainer.optimizers)
        for k, optimizer in enumerate(optimizers):
            folder = self.logdir
            if folder is not None and len(optimizers) > 1:
                folder = Path(folder) / f"optimizer{k}"
            self.handles.append(watch(optimizer, pl_module, logdir=folder, every=self.every))

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        for handle in self.handles:
            handle.close()
        self.handles = []
