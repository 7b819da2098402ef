"""`lambexp reproduce --launcher slurm`: the unfinished trainings as one Slurm job array (submitit).

Each array task trains one arm into its folder (``task.train_task``), so ``--out`` must be on a file
system the compute nodes share, with lambexp and MNIST installed where they run
(docs/distributed.md). submitit's own files (the job scripts, each task's stdout and stderr) go to
``<out>/.submitit``. This process waits for the array and says each result as it lands; Ctrl-C
cancels every task not finished (scancel): a training stopped mid-way continues from its last
checkpoint on the next run. ``cluster="local"``: submitit's local executor, the same array as
processes on this machine, to try a sweep before submitting it (and how the tests run it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lambexp.errors import Interrupted, UserError
from lambexp.runner.plan import Training, unfinished
from lambexp.runner.task import say_result, train_task

POLL_SECONDS = 2.0  # how often the array's state is read (submitit caches sacct for a while anyway)
CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks of Slurm (submitit's parameters)."""

    partition: str | None = None  # --partition
    time_minutes: int = 60  # --time, per training
    cpus: int = 1  # --cpus-per-task; also torch's threads in the task
    gpus: int = 0  # --gpus-per-node
    parallelism: int | None = None  # %N of the array: tasks running at once (None: Slurm's choice)
    cluster: str = "slurm"  # "local": submitit's local executor


CANCEL_WAIT_SECONDS = 30.0  # after Ctrl-C: how long to wait for cancelled tasks to checkpoint


def train_job(arm_json: str, arm_dir: str, data_dir: str | None, threads: int) -> tuple[str, dict | None]:
    """An array task: ``task.train_task`` with SIGTERM (scancel, or Slurm's time limit with
    ``--signal``) and SIGINT as a request to stop cleanly: the arm checkpoints after its step."""
    from lambexp.training.signals import StopFlag, catch

    stop = StopFlag()
    catch(stop, announce=False)
    return train_task(arm_json, arm_dir, data_dir, threads, stop_requested=stop)


def need_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit, an optional extra:"
                        " pip install 'lambexp[slurm]'") from None
    return submitit


def run_on_slurm(work: list[Training], data_dir: Path | None, say: Callable[[str], None],
                 stop_requested: Callable[[], bool], folder: Path, options: SlurmOptions) -> None:
    """Submit the unfinished trainings of ``work`` as one job array and wait for it."""
    submitit = need_submitit()
    pending = unfinished(work, say)
    if not pending:
        return
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    except RuntimeError as err:  # no srun/sbatch here
        raise UserError(f"--launcher slurm: {err} (--slurm-cluster local runs the array here)") from None
    executor.update_parameters(name="lambexp", timeout_min=options.time_minutes,
                               cpus_per_task=options.cpus, gpus_per_node=options.gpus,
                               **({"slurm_partition": options.partition} if options.partition else {}),
                               **({"slurm_array_parallelism": options.parallelism}
                                  if options.parallelism else {}))
    data = str(data_dir) if data_dir else None
    try:
        jobs = executor.map_array(train_job, [t.arm.model_dump_json() for t in pending],
                                  [str(t.folder) for t in pending], [data] * len(pending),
                                  [options.cpus] * len(pending))
    except Exception as err:  # sbatch refused: a bad partition, a time over the limit, ...
        raise UserError(f"--launcher slurm: the job array was not accepted: "
                        f"{str(err).strip().splitlines()[-1]}") from None
    what = (f"Slurm job array {jobs[0].job_id.split('_')[0]}" if options.cluster == "slurm"
            else "local jobs (submitit's local executor)")
    say(f"{len(pending)} trainings as {what}"
        f" ({options.cpus} CPU{'s' * (options.cpus != 1)}, {options.gpus} GPUs, "
        f"{options.time_minutes} min each{f', partition {options.partition}' if options.partition else ''})"
        f"; its logs: {folder}")
    waiting = dict(zip(jobs, (t.label for t in pending)))
    try:
        while waiting:
            if stop_requested():
                raise Interrupted("the job array's unfinished tasks were cancelled; the finished"
                                  " trainings are kept, the others continue from their last checkpoint")
            for job in [j for j in waiting if j.done()]:
                label = waiting.pop(job)
                try:
                    status, summary = job.result()
                except UserError as err:
                    raise type(err)(f"{label}: {err}") from None
                except Exception as err:  # the task failed, or Slurm killed it (time, memory)
                    lines = str(err).strip().splitlines()
                    raise UserError(f"{label}: its Slurm task {job.job_id} failed"
                                    f" ({lines[-1] if lines else type(err).__name__}); its log:"
                                    f" {job.paths.stderr}") from None
                say_result(label, status, summary, say)
            if waiting:
                time.sleep(POLL_SECONDS)
    finally:
        for job in waiting:
            job.cancel(check=False)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while waiting and time.monotonic() < deadline:  # let them checkpoint before --out unlocks
            waiting = {job: label for job, label in waiting.items() if not job.done()}
            time.sleep(0.2)
