"""`lambexp reproduce --jobs N`: N trainings at once, each in a process of its own with its share of
the CPU threads (or its own GPU, through CUDA_VISIBLE_DEVICES), so a machine of several cores or GPUs
gets through a sweep N times sooner. A ``dispatch.Launcher``: the dispatcher queues, says and stops.

Each worker process trains one unit at a time exactly as `reproduce` does in one process
(``task.train_task``: checkpoints, summary, TensorBoard). With as many threads as one process would
have, results are bit for bit those of ``--jobs 1``; with fewer threads each (the usual case), equal
to float rounding. Ctrl-C reaches every worker (one process group); a stop of this process alone
(SIGTERM) or a failure elsewhere reaches them through a shared event: each checkpoints its arm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context

import torch

from lambexp.errors import UserError
from lambexp.runner.dispatch import Results, Unit
from lambexp.runner.task import train_task
from lambexp.training.malloc import keep_freed_memory
from lambexp.training.signals import StopFlag, catch

WAIT_SECONDS = 1.0  # how long a poll waits for a worker to return
_STOP = None  # in a worker: its graceful-stop flag (the worker's own process, set at start)
_CANCELLED = None  # in a worker: the pool's event, set by the launching side to stop every worker


def _start_worker(threads: int, gpus: list[str], counter, cancelled) -> None:
    """Initializer of a worker process: its threads, its GPU, its stop flags, steady malloc."""
    global _STOP, _CANCELLED
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    torch.set_num_threads(threads)
    keep_freed_memory()
    _STOP, _CANCELLED = StopFlag(), cancelled
    catch(_STOP, announce=False)  # the parent tells the person


def _stop_requested() -> bool:
    """In a worker: Ctrl-C or SIGTERM here, or the launching side's cancel."""
    return _STOP() or _CANCELLED.is_set()


def _train(arms_json: list[str], arm_dirs: list[str], data_dir: str | None) -> Results:
    """In a worker: ``task.train_task``, stopping on the worker's flags."""
    return train_task(arms_json, arm_dirs, data_dir, stop_requested=_stop_requested)


class ProcessPool:
    """``jobs`` worker processes on this machine (a ``dispatch.Launcher``), started at the first
    submit; with GPUs, the workers take them in turn, else each has its share of the CPU threads."""

    early = "a signal to its worker process"

    def __init__(self, jobs: int):
        self.capacity = jobs
        self._gpus = [str(i) for i in range(torch.cuda.device_count())]
        self._threads = torch.get_num_threads() if self._gpus else max(1, torch.get_num_threads() // jobs)
        self._pool: ProcessPoolExecutor | None = None
        self._cancelled = None

    def check(self) -> None:
        """Nothing to check: this machine is here."""

    def describe(self) -> str:
        threads = self._threads
        return (f"{self.capacity} at once ({threads} CPU thread{'s' * (threads > 1)} each"
                + (f", GPUs {', '.join(self._gpus)} in turn" if self._gpus else "") + ")")

    def submit(self, units: Sequence[Unit], data_dir: str | None) -> list[Future]:
        if self._pool is None:
            context = get_context("spawn")
            self._cancelled = context.Event()
            self._pool = ProcessPoolExecutor(self.capacity, mp_context=context, initializer=_start_worker,
                                             initargs=(self._threads, self._gpus, context.Value("i", 0),
                                                       self._cancelled))
        return [self._pool.submit(_train, [t.arm.model_dump_json() for t in unit],
                                  [str(t.folder) for t in unit], data_dir) for unit in units]

    def poll(self, handles: list[Future]) -> list[tuple[Future, Results | UserError]]:
        done, _ = wait(handles, timeout=WAIT_SECONDS, return_when=FIRST_COMPLETED)
        return [(future, _outcome(future)) for future in done]

    def cancel(self, handles: list[Future]) -> None:
        """Every worker checkpoints its arm and returns; the pool waits for them, then ends."""
        if self._pool is None:
            return
        if handles:
            self._cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


def _outcome(future: Future) -> Results | UserError:
    """A worker's results, or why it failed: its own UserError (a full disk, too little memory), or
    its process's failure."""
    try:
        return future.result()
    except UserError as err:
        return err
    except Exception as err:  # a worker died or failed
        return UserError(f"its training failed in a worker process ({err})")
