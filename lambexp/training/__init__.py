"""One training, safely: the loop (``loop``: train_one_epoch, evaluate, fit), what "diverged" means
(``divergence``), checkpoints, the sinks it logs to (TensorBoard, metrics.jsonl), its progress bar,
Ctrl-C and SIGTERM as a request to stop (``signals``), torchrun's processes (``distributed``) and the
allocator setting (``malloc``). Builds on ``lambexp.optim``, ``lambexp.model`` and ``lambexp.data``;
knows nothing of configs or run folders. Importing the package imports nothing (``signals`` stays
torch-free for the CLI)."""
