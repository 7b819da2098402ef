"""`reproduce --launcher ray|slurm` where the launcher cannot start: one line, exit 2, within
seconds, and nothing written in --out (a new --out is not made; an existing one is left exactly as
it was), so that a corrected command in the same --out is accepted afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import invoke, lambexp_argv, summary_json, tiny_config

REFUSE_WITHIN = 30  # seconds: a launcher that cannot start says so at once, it does not wait


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with what it is and holds, and its mtime: equal snapshots mean
    nothing was written, created or deleted there."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        body = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        seen[path.relative_to(folder).as_posix()] = (stat.st_mode, stat.st_mtime_ns, body)
    return seen


def one_error_line(output: str) -> str:
    """The command's output, which must be one line."""
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def srun_without_sbatch(tmp_path, monkeypatch):
    """PATH with an `srun` (so submitit takes this for a Slurm machine) but no `sbatch`."""
    if shutil.which("sbatch"):
        pytest.skip("sbatch is installed here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm cluster is here")
@pytest.mark.parametrize("has_srun, message", [(False, 'Could not detect "srun"'),
                                               (True, "no `sbatch` on PATH")])
def test_slurm_that_cannot_submit_writes_nothing_and_a_corrected_config_is_accepted(
        has_srun, message, tiny_mnist_env, tmp_path, request):
    if has_srun:
        request.getfixturevalue("srun_without_sbatch")
    config, out = tmp_path / "toy.yaml", tmp_path / "out"
    config.write_text(tiny_config(lr=0.5))
    refused = invoke("reproduce", config, "--seeds", "1", "--out", out, "--launcher", "slurm")
    assert refused.exit_code == 2, refused.output
    assert not out.exists()  # no lock, no config.yaml, no environment.json
    assert message in one_error_line(refused.output)
    config.write_text(tiny_config(lr=0.01))  # the corrected config, here on this machine
    fixed = invoke("reproduce", config, "--seeds", "1", "--out", out, "-q")
    assert fixed.exit_code == 0, fixed.output
    assert summary_json(out / "tiny" / "seed1" / "lamb")["status"] == "finished"


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm cluster is here")
def test_slurm_that_cannot_start_leaves_earlier_runs_in_out_as_they_were(tiny_mnist_env, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "other.yaml").write_text(tiny_config(name="other"))
    earlier = invoke("reproduce", tmp_path / "other.yaml", "--seeds", "1", "--out", out, "-q")
    assert earlier.exit_code == 0, earlier.output
    before = snapshot(out)
    (tmp_path / "toy.yaml").write_text(tiny_config(lr=0.005))  # not other's trainings: work to do
    refused = invoke("reproduce", tmp_path / "toy.yaml", "--seeds", "1", "--out", out, "--launcher", "slurm")
    assert refused.exit_code == 2, refused.output
    one_error_line(refused.output)
    assert snapshot(out) == before


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm cluster is here")
def test_a_finished_reproduction_rebuilds_its_report_without_the_launcher(tiny_mnist_env, tmp_path):
    """Nothing left to train: no Slurm needed, as before (the launcher is checked only for work)."""
    (tmp_path / "toy.yaml").write_text(tiny_config())
    args = ("reproduce", tmp_path / "toy.yaml", "--seeds", "1", "--out", tmp_path / "out")
    assert invoke(*args, "-q").exit_code == 0
    again = invoke(*args, "--launcher", "slurm")
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before, skipped") == 2


def test_plan_with_a_launcher_that_cannot_start_lists_and_writes_nothing(tmp_path):
    (tmp_path / "toy.yaml").write_text(tiny_config())
    result = invoke("reproduce", tmp_path / "toy.yaml", "--out", tmp_path / "out", "--plan",
                    "--launcher", "slurm")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("6 trainings (6 not finished)")
    assert not (tmp_path / "out").exists()


def test_a_launcher_under_torchrun_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "toy.yaml").write_text(tiny_config())
    result = invoke("reproduce", tmp_path / "toy.yaml", "--out", tmp_path / "out", "--launcher", "slurm",
                    "--slurm-cluster", "local")
    assert result.exit_code == 2, result.output
    assert "under torchrun the processes are torchrun's" in one_error_line(result.output)
    assert not (tmp_path / "out").exists()


# Ray: each case in a process of its own, which must end within REFUSE_WITHIN seconds.

def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS's pick, closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reproduce_on_ray(tmp_path: Path, *extra, env_address: str | None = None) -> subprocess.CompletedProcess:
    """`reproduce` of the tiny config with --launcher ray in a process of its own ($RAY_ADDRESS:
    ``env_address``, else unset); a failure if it has not ended within REFUSE_WITHIN seconds."""
    (tmp_path / "toy.yaml").write_text(tiny_config())
    argv = lambexp_argv("reproduce", tmp_path / "toy.yaml", "--seeds", "1", "--out", tmp_path / "out",
                        "--launcher", "ray", *extra)
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    if env_address:
        env["RAY_ADDRESS"] = env_address
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=REFUSE_WITHIN, env=env)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"still waiting after {REFUSE_WITHIN} s: {err.stdout!r} {err.stderr!r}")


@pytest.mark.parametrize("how", ["--ray-address", "$RAY_ADDRESS"])
def test_a_ray_address_where_nothing_listens_is_one_line_at_once(how, tiny_mnist_env, tmp_path):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{unused_port()}"
    if how == "--ray-address":
        done = reproduce_on_ray(tmp_path, "--ray-address", address)
    else:
        done = reproduce_on_ray(tmp_path, env_address=address)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: {how} {address}: no Ray cluster answers there"), line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def ray_cluster_of_one_cpu():
    """A Ray cluster of 1 CPU and 0 GPUs, started by a Python process of ours (its own temp folder,
    so no other `ray.init` on this machine joins it, and no token authentication, so that a driver
    joins it by its address alone); its GCS address. Ended by closing that process's stdin: its
    ray.shutdown() stops the cluster's processes."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="lxray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [sys.executable, "-c", "import sys, ray\n"
         f"ctx = ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, _temp_dir={temp!r})\n"
         "print(ctx.address_info['gcs_address'], flush=True)\nsys.stdin.read()\nray.shutdown()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("ask, has", [(("--gpus-per-training", "1"), "has 0 GPUs"),
                                      (("--cpus-per-training", "2"), "has 1 CPU")])
def test_a_task_larger_than_the_ray_cluster_is_refused_before_submitting(ask, has, ray_cluster_of_one_cpu,
                                                                         tiny_mnist_env, tmp_path):
    done = reproduce_on_ray(tmp_path, "--ray-address", ray_cluster_of_one_cpu, *ask)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert line == f"error: {' '.join(ask)}: the Ray cluster at {ray_cluster_of_one_cpu} {has}", line
    assert "as Ray tasks" not in done.stdout  # no banner: nothing was submitted
    assert not (tmp_path / "out").exists()
