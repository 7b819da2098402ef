"""`lambexp reproduce --launcher ray`: each training a Ray task, on a Ray cluster or a local one.

``ray.init(address)`` joins the cluster at ``address`` (or $RAY_ADDRESS, or a cluster started on this
machine with `ray start --head`), else starts one here. Each unfinished training (or stacked group,
``--stack``) becomes one task asking for its CPUs (and GPUs); the task trains its arms into their
folders (``task.train_task``), so ``--out`` must be a folder every node sees (a shared file system),
and lambexp and MNIST must be installed there (docs/distributed.md). Ctrl-C cancels every task
submitted: a training stopped mid-way continues from its last checkpoint on the next run.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

from lambexp.errors import Interrupted, UserError
from lambexp.runner.plan import Training, unfinished
from lambexp.runner.task import say_result, train_task, unit_label

WAIT_SECONDS = 1.0  # how often the launcher looks at Ctrl-C while tasks run


def need_ray():
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--launcher ray needs Ray, an optional extra: pip install 'lambexp[ray]'") from None
    return ray


def run_on_ray(work: list[Training], data_dir: Path | None, say: Callable[[str], None],
               stop_requested: Callable[[], bool], *, address: str | None = None, cpus: int = 1,
               gpus: float = 0, max_in_flight: int | None = None, stack: int = 1) -> None:
    """Train the unfinished trainings of ``work`` as Ray tasks of ``cpus`` CPUs and ``gpus`` GPUs
    each, at most ``max_in_flight`` submitted at once (None: all); ``stack`` > 1: each task trains up
    to that many as one stacked model (lambexp.runner.stacked)."""
    from lambexp.runner.stacked import stack_groups

    ray = need_ray()
    pending = unfinished(work, say)
    if not pending:
        return
    if not ray.is_initialized():
        ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"--launcher ray: cannot reach or start a Ray cluster"
                            f"{f' at {address}' if address else ''}: {err}") from None
        finally:  # ray.init makes SIGTERM exit at once: Ctrl-C and SIGTERM stay a clean stop
            for s, handler in ours.items():
                signal.signal(s, handler)
    task = ray.remote(train_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    resources = ray.cluster_resources()
    units = stack_groups(pending, stack, data_dir)
    say(f"{len(pending)} trainings as {f'{len(units)} stacks in ' if stack > 1 else ''}Ray tasks of"
        f" {cpus:g} CPU{'s' * (cpus != 1)}"
        + (f" and {gpus:g} GPU{'s' * (gpus != 1)}" if gpus else "")
        + f" each, on a cluster of {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs")
    queue, running = list(units), {}
    data = str(data_dir) if data_dir else None
    try:
        while queue or running:
            if stop_requested():
                raise Interrupted("the Ray tasks were cancelled; the finished trainings are kept,"
                                  " the others continue from their last checkpoint")
            while queue and (max_in_flight is None or len(running) < max_in_flight):
                unit = queue.pop(0)
                for t in unit:
                    say(f"{t.label}: {'continuing' if t.folder.exists() else 'submitted'}")
                running[task.remote([t.arm.model_dump_json() for t in unit], [str(t.folder) for t in unit],
                                    data, cpus)] = unit
            done, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SECONDS)
            for ref in done:
                unit = running.pop(ref)
                label = unit_label(unit)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if err.cause is not None else err
                    if isinstance(cause, UserError):
                        raise type(cause)(f"{label}: {cause}") from None
                    raise UserError(f"{label}: its training failed in a Ray task ({cause!r})") from None
                except ray.exceptions.RayError as err:  # a worker or node died
                    raise UserError(f"{label}: its Ray task was lost ({type(err).__name__}: "
                                    f"{str(err).strip().splitlines()[0]})") from None
                for t, (status, summary) in zip(unit, results):
                    say_result(t.label, status, summary, say)
    finally:
        for ref in running:  # Ctrl-C, or a failure: nothing keeps training unseen
            ray.cancel(ref, force=True)
