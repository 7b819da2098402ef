"""One training, safely: the loop (``loop``: a Trainer that takes one step at a time, fit over it,
evaluate), several trainings of one model stepped as one stacked model (``stack``, ``members``), what
"diverged" means (``divergence``), checkpoints, the sinks it logs to (TensorBoard, metrics.jsonl), its
progress bar, Ctrl-C and SIGTERM as a request to stop (``signals``), torchrun's processes
(``distributed``) and the allocator setting (``malloc``). Builds on ``lambexp.optim``,
``lambexp.model`` and ``lambexp.data``; knows nothing of configs or run folders. Importing the
package imports nothing (``signals`` stays torch-free for the CLI)."""
