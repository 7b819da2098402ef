"""`lambexp reproduce --launcher slurm`: the unfinished trainings as one Slurm job array (submitit).

Each array task trains one arm (or one stacked group, ``--stack``) into its folder
(``task.train_task``), so ``--out`` must be on a file system the compute nodes share, with lambexp
and MNIST installed where they run (docs/distributed.md). submitit's own files (the job scripts,
each task's stdout and stderr) go to ``<out>/.submitit``. This process waits for the array and says
each result as it lands; Ctrl-C cancels every task not finished (scancel): a training stopped
mid-way continues from its last checkpoint on the next run; so does a task that reaches its time
limit (``train_job``).
``cluster="local"``: submitit's local executor, the same tasks as processes on this machine, to try
a sweep before submitting it (and how the tests run it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lambexp.errors import Interrupted, UserError
from lambexp.runner.plan import Training, unfinished
from lambexp.runner.task import INTERRUPTED, say_result, train_task, unit_label

POLL_SECONDS = 2.0  # how often the array's state is read (submitit caches sacct for a while anyway)
CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks of Slurm (submitit's parameters)."""

    partition: str | None = None  # --partition
    time_minutes: int = 60  # --time, per training
    cpus: int = 1  # --cpus-per-task; also torch's threads in the task
    gpus: int = 0  # --gpus-per-node
    parallelism: int | None = None  # %N of the array: tasks running at once (None: Slurm's choice;
    # local: one per `cpus` cores)
    cluster: str = "slurm"  # "local": submitit's local executor


CANCEL_WAIT_SECONDS = 30.0  # after Ctrl-C: how long to wait for cancelled tasks to checkpoint
FAILED = "failed"  # a task's UserError, returned as such: submitit would wrap it in its traceback


def train_job(arms_json: list[str], arm_dirs: list[str], data_dir: str | None,
              threads: int) -> list[tuple[str, dict | None]]:
    """An array task: ``task.train_task`` (one training, or a stacked group), stopping cleanly (each
    arm checkpointed after its step) on SIGTERM or SIGINT (scancel) and on SIGUSR2, which submitit
    has Slurm send 90 s before the task's time limit (``--slurm-time``). A UserError comes back as
    [(FAILED, {"error": line})]."""
    import signal

    from lambexp.training.signals import StopFlag, catch

    stop = StopFlag()
    catch(stop, announce=False)
    signal.signal(signal.SIGUSR2, lambda signum, frame: setattr(stop, "signum", signum))
    try:
        return train_task(arms_json, arm_dirs, data_dir, threads, stop_requested=stop)
    except UserError as err:
        return [(FAILED, {"error": str(err)})]


def need_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit, an optional extra:"
                        " pip install 'lambexp[slurm]'") from None
    return submitit


def make_executor(folder: Path, options: SlurmOptions):
    """submitit's executor for ``options.cluster``, writing its files to ``folder`` (made only when
    the array is submitted); a UserError where no job array can be submitted from this machine.
    `reproduce` calls it (``check_slurm``) before it writes anything."""
    submitit = need_submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    except RuntimeError as err:  # no srun here
        raise UserError(f"--launcher slurm: {err} (--slurm-cluster local runs the array here)") from None
    if options.cluster == "slurm" and shutil.which("sbatch") is None:  # submitit looks for srun alone
        raise UserError("--launcher slurm: no `sbatch` on PATH, so no job array can be submitted from"
                        " this machine (--slurm-cluster local runs the array here)")
    return executor


def check_slurm(folder: Path, options: SlurmOptions) -> None:
    """A UserError where the job array could not be submitted from here (``make_executor``)."""
    make_executor(folder, options)


def run_on_slurm(work: list[Training], data_dir: Path | None, say: Callable[[str], None],
                 stop_requested: Callable[[], bool], folder: Path, options: SlurmOptions,
                 stack: int = 1) -> None:
    """Submit the unfinished trainings of ``work`` as one job array and wait for it; ``stack`` > 1:
    each array task trains up to that many as one stacked model. With ``cluster="local"``, at most
    ``parallelism`` run at once (default: one per ``cpus`` cores), since submitit's local executor
    would start them all."""
    from lambexp.runner.stacked import stack_groups

    pending = unfinished(work, say)
    if not pending:
        return
    executor = make_executor(folder, options)
    executor.update_parameters(name="lambexp", timeout_min=options.time_minutes,
                               cpus_per_task=options.cpus, gpus_per_node=options.gpus,
                               **({"slurm_partition": options.partition} if options.partition else {}),
                               **({"slurm_array_parallelism": options.parallelism}
                                  if options.parallelism else {}))
    data = str(data_dir) if data_dir else None
    local = options.cluster == "local"
    at_once = (options.parallelism or max(1, (os.cpu_count() or 1) // options.cpus)) if local else None
    queue = stack_groups(pending, stack, data_dir)
    waiting: dict = {}  # job -> its unit (a training, or a stacked group)

    def submit(units: list[list[Training]]) -> None:
        try:
            jobs = executor.map_array(train_job, [[t.arm.model_dump_json() for t in u] for u in units],
                                      [[str(t.folder) for t in u] for u in units], [data] * len(units),
                                      [options.cpus] * len(units))
        except Exception as err:  # sbatch refused: a bad partition, a time over the limit, ...
            raise UserError(f"--launcher slurm: the job array was not accepted: "
                            f"{str(err).strip().splitlines()[-1]}") from None
        waiting.update(zip(jobs, units))

    stopped = []  # trainings that ran out of --slurm-time, checkpointed
    try:
        if local:
            submit([queue.pop(0) for _ in range(min(at_once, len(queue)))])
            what = f"local jobs (submitit's local executor), {at_once} at once"
        else:
            submit(queue)
            queue = []
            what = f"Slurm job array {next(iter(waiting)).job_id.split('_')[0]}"
        say(f"{len(pending)} trainings as {f'{len(queue) + len(waiting)} stacks in ' if stack > 1 else ''}"
            f"{what} ({options.cpus} CPU{'s' * (options.cpus != 1)},"
            f" {options.gpus} GPUs, {options.time_minutes} min each"
            f"{f', partition {options.partition}' if options.partition else ''}); logs: {folder}")
        while waiting:
            if stop_requested():
                raise Interrupted("the job array's unfinished tasks were cancelled; the finished"
                                  " trainings are kept, the others continue from their last checkpoint")
            for job in [j for j in waiting if j.done()]:
                unit = waiting.pop(job)
                try:
                    results = job.result()
                except Exception:  # the task raised, or Slurm killed it (memory, node failure)
                    raise UserError(f"{unit_label(unit)}: its Slurm task {job.job_id} failed; the error"
                                    f" is at the end of {job.paths.stderr}") from None
                if results[0][0] == FAILED:
                    raise UserError(f"{unit_label(unit)}: {results[0][1]['error']}")
                for t, (status, summary) in zip(unit, results):
                    if status == INTERRUPTED and not stop_requested():
                        stopped.append(t.label)
                    say_result(t.label, status, summary, say)
                if queue:
                    submit([queue.pop(0)])
            if waiting:
                time.sleep(POLL_SECONDS)
    finally:
        for job in waiting:
            job.cancel(check=False)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while waiting and time.monotonic() < deadline:  # let them checkpoint before --out unlocks
            waiting = {job: unit for job, unit in waiting.items() if not job.done()}
            time.sleep(0.2)
    if stopped:
        raise UserError(f"{len(stopped)} training{'s' * (len(stopped) > 1)} reached --slurm-time"
                        f" ({options.time_minutes} min) and {'were' if len(stopped) > 1 else 'was'}"
                        " checkpointed: run the same command again to continue, or give more --slurm-time")
