"""`lambexp reproduce --launcher ray`: each training a Ray task, on a Ray cluster or a local one (a
``dispatch.Launcher``: the dispatcher queues, says and stops).

``ray.init(address)`` joins the cluster at ``address`` (or $RAY_ADDRESS, or a cluster started on this
machine with `ray start --head`), else starts one here. Each unfinished training (or stack,
``--stack``) becomes one task asking for its CPUs (and GPUs); the task trains its arms into their
folders (``task.train_task``), so ``--out`` must be a folder every node sees (a shared file system),
and lambexp and MNIST must be installed there (docs/distributed.md). Ctrl-C cancels every task
submitted: a training stopped mid-way continues from its last checkpoint on the next run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Sequence

from lambexp.errors import UserError
from lambexp.runner.dispatch import Results, Unit
from lambexp.runner.task import train_task

WAIT_SECONDS = 1.0  # how long a poll waits for a task to end (the dispatcher looks at Ctrl-C between)
PROBE_SECONDS = 5.0  # how long a Ray address may take to accept a connection: Ray itself retries forever


def need_ray():
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--launcher ray needs Ray, an optional extra: pip install 'lambexp[ray]'") from None
    return ray


class RayCluster:
    """Units as Ray tasks of ``cpus`` CPUs and ``gpus`` GPUs each, at most ``max_in_flight``
    submitted at once (None: all): a ``dispatch.Launcher``. ``check`` joins the cluster
    (``connect_ray``); the first submit does, where ``check`` was not asked."""

    early = "its Ray worker was told to stop"

    def __init__(self, address: str | None = None, cpus: int = 1, gpus: float = 0,
                 max_in_flight: int | None = None):
        self.address, self.cpus, self.gpus, self.capacity = address, cpus, gpus, max_in_flight
        self._task = None

    def check(self) -> None:
        connect_ray(self.address, self.cpus, self.gpus)

    def describe(self) -> str:
        has = need_ray().cluster_resources()
        return (f"as Ray tasks of {self.cpus:g} CPU{'s' * (self.cpus != 1)}"
                + (f" and {self.gpus:g} GPU{'s' * (self.gpus != 1)}" if self.gpus else "")
                + f" each, on a cluster of {has.get('CPU', 0):g} CPUs and {has.get('GPU', 0):g} GPUs")

    def submit(self, units: Sequence[Unit], data_dir: str | None) -> list:
        ray = need_ray()
        if self._task is None:
            if not ray.is_initialized():
                connect_ray(self.address, self.cpus, self.gpus)
            self._task = ray.remote(train_task).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                        max_retries=0)
        return [self._task.remote([t.arm.model_dump_json() for t in unit], [str(t.folder) for t in unit],
                                  data_dir, self.cpus) for unit in units]

    def poll(self, handles: list) -> list[tuple[object, Results | UserError]]:
        ray = need_ray()
        done, _ = ray.wait(handles, num_returns=1, timeout=WAIT_SECONDS)
        return [(ref, _outcome(ray, ref)) for ref in done]

    def cancel(self, handles: list) -> None:
        """Ray kills the tasks (``force``): each continues from its last checkpoint next time."""
        for ref in handles:
            need_ray().cancel(ref, force=True)


def _outcome(ray, ref) -> Results | UserError:
    """A task's results, or why it failed: the training's own UserError, or Ray's account."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if err.cause is not None else err
        if isinstance(cause, UserError):
            return cause
        return UserError(f"its training failed in a Ray task ({cause!r})")
    except ray.exceptions.RayError as err:  # a worker or node died
        return UserError(f"its Ray task was lost ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0]})")


def connect_ray(address: str | None, cpus: int, gpus: float) -> None:
    """Join the Ray cluster at ``address`` ($RAY_ADDRESS, a cluster started here with `ray start`;
    else start one here), and check that a task of ``cpus`` CPUs and ``gpus`` GPUs fits on one of
    its nodes. Otherwise a UserError, with Ray shut down again: `reproduce` calls this before it
    writes anything, and Ray would wait forever for an address where nothing answers, and for
    resources that no node has."""
    ray = need_ray()
    named = ("--ray-address", address) if address else ("$RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))
    if named[1]:
        probe_address(*named)
    ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"--launcher ray: cannot reach or start a Ray cluster"
                        f"{f' at {named[1]}' if named[1] else ''}: {err}") from None
    finally:  # ray.init makes SIGTERM exit at once: Ctrl-C and SIGTERM stay a clean stop
        for s, handler in ours.items():
            signal.signal(s, handler)
    where = named[1] or ray.get_runtime_context().gcs_address
    problem = task_does_not_fit([n["Resources"] for n in ray.nodes() if n.get("Alive")], cpus, gpus, where)
    if problem:
        ray.shutdown()  # a cluster started here for this command goes with it
        raise UserError(problem)


def probe_address(option: str, address: str) -> None:
    """A UserError unless something accepts a TCP connection at ``address`` (host:port, or
    ray://host:port) within PROBE_SECONDS; ``option`` names where the address came from. Other
    forms ("auto", "local") are Ray's to resolve."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else err.strerror or str(err)
        raise UserError(f"{option} {address}: no Ray cluster answers there ({why}); start one with"
                        f" `ray start --head --port {port}` on {host}, or leave {option} out to"
                        " start one on this machine") from None


def task_does_not_fit(nodes: list[dict], cpus: int, gpus: float, where: str) -> str | None:
    """Why a task of ``cpus`` CPUs and ``gpus`` GPUs fits on none of ``nodes`` (each node's Ray
    resources) of the cluster at ``where``; None when one node has both."""
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return None
    problems = []
    for flag, asked, name in (("--cpus-per-training", cpus, "CPU"), ("--gpus-per-training", gpus, "GPU")):
        total, most = sum(n.get(name, 0) for n in nodes), max((n.get(name, 0) for n in nodes), default=0)
        if total < asked:
            problems.append(f"{flag} {asked:g}: the Ray cluster at {where} has {total:g} {name}"
                            f"{'s' * (total != 1)}")
        elif most < asked:
            problems.append(f"{flag} {asked:g}: no node of the Ray cluster at {where} has {asked:g}"
                            f" {name}{'s' * (asked != 1)} (at most {most:g} on one)")
    if not problems:  # enough of each, never on the same node
        problems.append(f"--cpus-per-training {cpus} --gpus-per-training {gpus:g}: no node of the Ray"
                        f" cluster at {where} has both")
    return "; ".join(problems)
