"""`lambexp reproduce --launcher slurm`: the unfinished trainings as one Slurm job array (submitit), a
``dispatch.Launcher``: the dispatcher queues, says and stops.

Each array task trains one arm (or one stack, ``--stack``) into its folder
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
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lambexp.base.statuses import Status
from lambexp.errors import UserError
from lambexp.runner.dispatch import Results, Unit
from lambexp.runner.task import train_task
from lambexp.training.signals import StopFlag, catch

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


CANCEL_WAIT_SECONDS = 30.0  # after Ctrl-C or a failure: how long cancelled tasks may take to checkpoint


def train_job(arms_json: list[str], arm_dirs: list[str], data_dir: str | None,
              threads: int) -> Results:
    """An array task: ``task.train_task`` (one training, or a stack), stopping cleanly (each
    arm checkpointed after its step) on SIGTERM or SIGINT (scancel) and on SIGUSR2, which submitit
    has Slurm send 90 s before the task's time limit (``--slurm-time``). A UserError comes back as
    [(Status.FAILED, {"error": line})]: submitit would wrap the error in its traceback."""
    stop = StopFlag()
    catch(stop, announce=False)
    signal.signal(signal.SIGUSR2, lambda signum, frame: setattr(stop, "signum", signum))
    try:
        return train_task(arms_json, arm_dirs, data_dir, threads, stop_requested=stop)
    except UserError as err:
        return [(Status.FAILED, {"error": str(err)})]


def need_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit, an optional extra:"
                        " pip install 'lambexp[slurm]'") from None
    return submitit


def make_executor(folder: Path, options: SlurmOptions):
    """submitit's executor for ``options.cluster``, set to what each array task asks of Slurm, writing
    its files to ``folder`` (made only when the array is submitted); a UserError where no job array
    can be submitted from this machine."""
    submitit = need_submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    except RuntimeError as err:  # no srun here
        raise UserError(f"--launcher slurm: {err} (--slurm-cluster local runs the array here)") from None
    if options.cluster == "slurm" and shutil.which("sbatch") is None:  # submitit looks for srun alone
        raise UserError("--launcher slurm: no `sbatch` on PATH, so no job array can be submitted from"
                        " this machine (--slurm-cluster local runs the array here)")
    executor.update_parameters(name="lambexp", timeout_min=options.time_minutes,
                               cpus_per_task=options.cpus, gpus_per_node=options.gpus,
                               **({"slurm_partition": options.partition} if options.partition else {}),
                               **({"slurm_array_parallelism": options.parallelism}
                                  if options.parallelism else {}))
    return executor


class SlurmArray:
    """Units as tasks of Slurm job arrays (a ``dispatch.Launcher``): every unit in one array, or with
    ``cluster="local"`` at most ``parallelism`` at a time (default: one per ``cpus`` cores), since
    submitit's local executor would start them all at once. submitit's files go to ``folder``."""

    def __init__(self, folder: Path, options: SlurmOptions):
        self.folder, self.options = folder, options
        self.early = f"at --slurm-time, {options.time_minutes} min: give more to finish in one go"
        cores = os.cpu_count() or 1
        self.capacity = (options.parallelism or max(1, cores // options.cpus)) if options.cluster == "local" \
            else None  # a real cluster queues the whole array (%N: parallelism)
        self._executor = None
        self._array = ""  # the first array's job id

    def check(self) -> None:
        self._executor_made()

    def _executor_made(self):
        """The executor (``make_executor``), made once: by ``check``, else by the first submit."""
        if self._executor is None:
            self._executor = make_executor(self.folder, self.options)
        return self._executor

    def describe(self) -> str:
        o = self.options
        what = (f"as local jobs (submitit's local executor), {self.capacity} at once"
                if o.cluster == "local" else f"as Slurm job array {self._array}")
        return (f"{what} ({o.cpus} CPU{'s' * (o.cpus != 1)}, {o.gpus} GPUs, {o.time_minutes} min each"
                f"{f', partition {o.partition}' if o.partition else ''}); logs: {self.folder}")

    def submit(self, units: Sequence[Unit], data_dir: str | None) -> list:
        executor = self._executor_made()
        n = len(units)
        try:
            jobs = executor.map_array(
                train_job, [[t.arm.model_dump_json() for t in u] for u in units],
                [[str(t.folder) for t in u] for u in units], [data_dir] * n, [self.options.cpus] * n)
        except Exception as err:  # sbatch refused: a bad partition, a time over the limit, ...
            raise UserError(f"--launcher slurm: the job array was not accepted: "
                            f"{str(err).strip().splitlines()[-1]}") from None
        self._array = self._array or jobs[0].job_id.split("_")[0]
        return jobs

    def poll(self, handles: list) -> list[tuple[object, Results | UserError]]:
        done = [job for job in handles if job.done()]
        if not done:
            time.sleep(POLL_SECONDS)
        return [(job, _outcome(job)) for job in done]

    def cancel(self, handles: list) -> None:
        """scancel each (SIGTERM: it checkpoints), and wait for them before `--out` unlocks."""
        for job in handles:
            job.cancel(check=False)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while handles and time.monotonic() < deadline:
            handles = [job for job in handles if not job.done()]
            time.sleep(0.2)


def _outcome(job) -> Results | UserError:
    """A task's results, or why it failed: its own UserError (returned as Status.FAILED), or Slurm's end."""
    try:
        results = job.result()
    except Exception:  # the task raised, or Slurm killed it (memory, node failure)
        return UserError(f"its Slurm task {job.job_id} failed; the error is at the end of {job.paths.stderr}")
    if results[0][0] == Status.FAILED:
        return UserError(results[0][1]["error"])
    return results
