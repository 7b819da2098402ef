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
from lambexp.runner.task import INTERRUPTED, say_result, train_task, unit_label

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


def _train(arms_json: list[str], arm_dirs: list[str], data_dir: str | None) -> list[tuple[str, dict | None]]:
    """In a worker: ``task.train_task`` with the worker's graceful-stop flag."""
    return train_task(arms_json, arm_dirs, data_dir, stop_requested=_STOP)


def run_in_parallel(work: list[Training], jobs: int, data_dir: Path | None,
                    say: Callable[[str], None], stop_requested: Callable[[], bool], stack: int = 1) -> None:
    """Train the unfinished trainings of ``work`` in ``jobs`` worker processes; ``stack`` > 1: each
    worker trains up to that many at a time as one stacked model (lambexp.runner.stacked)."""
    import torch

    from lambexp.runner.stacked import describe_unit, stack_groups

    pending = unfinished(work, say)
    if not pending:
        return
    gpus = [str(i) for i in range(torch.cuda.device_count())]
    threads = max(1, torch.get_num_threads() // jobs) if not gpus else torch.get_num_threads()
    context = get_context("spawn")
    counter = context.Value("i", 0)
    units = stack_groups(pending, stack, data_dir)
    say(f"{len(pending)} trainings" + (f" in {len(units)} stacks of up to {stack}" if stack > 1 else "")
        + f", {jobs} at once ({threads} CPU thread{'s' * (threads > 1)} each"
        + (f", GPUs {', '.join(gpus)} in turn" if gpus else "") + ")")
    interrupted = False
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads, gpus, counter)) as pool:
        queue = list(units)
        running: dict[Future, list[Training]] = {}
        forwarded = False
        while queue or running:
            if stop_requested() and not forwarded:  # a SIGTERM to this process alone: pass it on
                forwarded = True
                for process in active_children():  # the executor's workers: our only children
                    process.terminate()  # SIGTERM: each worker checkpoints its arm and returns
            while queue and len(running) < jobs and not stop_requested():
                unit = queue.pop(0)
                say(describe_unit(unit))
                arms, folders = [t.arm.model_dump_json() for t in unit], [str(t.folder) for t in unit]
                running[pool.submit(_train, arms, folders, str(data_dir) if data_dir else None)] = unit
            if not running:
                break
            done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                unit = running.pop(future)
                try:
                    results = future.result()
                except UserError as err:  # a full disk, too little memory: the worker's own line
                    raise type(err)(f"{unit_label(unit)}: {err}") from None
                except Exception as err:  # a worker died or failed: say which training
                    raise UserError(f"{unit_label(unit)}: its training failed in a worker process"
                                    f" ({err})") from err
                for t, (status, summary) in zip(unit, results):
                    interrupted |= status == INTERRUPTED
                    say_result(t.label, status, summary, say)
    if interrupted or stop_requested():
        raise Interrupted("with every running training checkpointed; the finished ones are kept")
