"""`lambexp reproduce --jobs N`: N trainings at once, each in a process of its own with its share of
the CPU threads (or its own GPU, through CUDA_VISIBLE_DEVICES), so a machine of several cores or GPUs
gets through a sweep N times sooner.

Each worker process trains one arm at a time exactly as `reproduce` does in one process
(``task.train_task``: checkpoints, summary, TensorBoard). With as many threads as one process would
have, results are bit for bit those of ``--jobs 1``; with fewer threads each (the usual case), equal
to float rounding.
Ctrl-C or SIGTERM reaches every worker: each checkpoints its arm, and the parent raises Interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import active_children, get_context
from pathlib import Path

from lambexp.errors import Interrupted, UserError
from lambexp.runner.plan import Training, unfinished
from lambexp.runner.task import INTERRUPTED, say_result, train_task

_STOP = None  # in a worker: its graceful-stop flag (the worker's own process, set at start)


def _start_worker(threads: int, gpus: list[str], counter) -> None:
    """Initializer of a worker process: its threads, its GPU, its Ctrl-C flag, steady malloc."""
    import torch

    from lambexp.training.malloc import keep_freed_memory
    from lambexp.training.signals import StopFlag, catch

    global _STOP
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    torch.set_num_threads(threads)
    keep_freed_memory()
    _STOP = StopFlag()
    catch(_STOP, announce=False)  # the parent tells the person


def _train(arm_json: str, arm_dir: str, data_dir: str | None) -> tuple[str, dict | None]:
    """In a worker: ``task.train_task`` with the worker's graceful-stop flag."""
    return train_task(arm_json, arm_dir, data_dir, stop_requested=_STOP)


def run_in_parallel(work: list[Training], jobs: int, data_dir: Path | None,
                    say: Callable[[str], None], stop_requested: Callable[[], bool]) -> None:
    """Train the unfinished trainings of ``work`` in ``jobs`` worker processes."""
    import torch

    pending = unfinished(work, say)
    if not pending:
        return
    gpus = [str(i) for i in range(torch.cuda.device_count())]
    threads = max(1, torch.get_num_threads() // jobs) if not gpus else torch.get_num_threads()
    context = get_context("spawn")
    counter = context.Value("i", 0)
    say(f"{len(pending)} trainings, {jobs} at once ({threads} CPU thread{'s' * (threads > 1)} each"
        + (f", GPUs {', '.join(gpus)} in turn" if gpus else "") + ")")
    interrupted = False
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads, gpus, counter)) as pool:
        queue = list(pending)
        running: dict[Future, str] = {}
        forwarded = False
        while queue or running:
            if stop_requested() and not forwarded:  # a SIGTERM to this process alone: pass it on
                forwarded = True
                for process in active_children():  # the executor's workers: our only children
                    process.terminate()  # SIGTERM: each worker checkpoints its arm and returns
            while queue and len(running) < jobs and not stop_requested():
                t = queue.pop(0)
                say(f"{t.label}: {'continuing' if t.folder.exists() else 'training'}")
                running[pool.submit(_train, t.arm.model_dump_json(), str(t.folder),
                                    str(data_dir) if data_dir else None)] = t.label
            if not running:
                break
            done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                label = running.pop(future)
                try:
                    status, summary = future.result()
                except UserError as err:  # a full disk, too little memory: the worker's own line
                    raise type(err)(f"{label}: {err}") from None
                except Exception as err:  # a worker died or failed: say which training
                    raise UserError(f"{label}: its training failed in a worker process ({err})") from err
                interrupted |= status == INTERRUPTED
                say_result(label, status, summary, say)
    if interrupted or stop_requested():
        raise Interrupted("with every running training checkpointed; the finished ones are kept")
