"""The commands around a run: bundled configs by name, configs/ls/compare, --json, --version, --debug
in either place, light verbs that never import torch, and damaged run folders refused with one line.
(`reproduce --strict` is in test_reproduce.py.)"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_CONFIG, invoke

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_run(tiny_mnist_env, tmp_path):
    """A finished tiny run: (the runs folder, the run folder)."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    result = invoke("run", tmp_path / "tiny.yaml", "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    [run_dir] = (tmp_path / "runs" / "tiny").iterdir()
    return tmp_path / "runs", run_dir


def test_version_is_the_projects():
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert invoke("--version").output == f"lambexp {version}\n"


@pytest.mark.parametrize("args", [["--debug", "validate", "nope.yaml"], ["validate", "nope.yaml", "--debug"]])
def test_debug_before_or_after_the_verb_shows_the_traceback(args):
    result = invoke(*args)
    assert result.exit_code == 2 and "Traceback (most recent call last)" in result.output


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_is_exit_1_with_one_line_or_the_traceback_under_debug(monkeypatch, debug):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("lambexp.config.load_experiment", broken)
    result = invoke("validate", "adam_vs_lamb", *(["--debug"] if debug else []))
    assert result.exit_code == 1
    last = "internal error: RuntimeError: boom (rerun with --debug for the traceback)"
    assert result.output.splitlines()[-1] == last
    assert ("Traceback (most recent call last)" in result.output) == debug
    if not debug:
        assert result.output == last + "\n"


def test_without_debug_one_line_and_no_traceback():
    result = invoke("validate", "nope.yaml")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        "error: nope.yaml: no such file, and no bundled config of that name (bundled: adam_lr, "
        "adam_vs_lamb, lamb_lr, lamb_wd, readme_lr02, beyond/lamb_variants, beyond/large_batch, "
        "beyond/large_batch_check, beyond/lr_sweep; `lambexp configs` lists them)"]


def test_configs_lists_every_bundled_config_and_json():
    text = invoke("configs").output
    for name in ("adam_vs_lamb", "lamb_lr", "lamb_wd", "adam_lr", "readme_lr02", "beyond/large_batch"):
        assert f"\n{name} " in f"\n{text}"
    listed = json.loads(invoke("configs", "--json").output)
    assert {c["name"] for c in listed} == {p.relative_to(ROOT / "configs").with_suffix("").as_posix()
                                           for p in (ROOT / "configs").rglob("*.yaml")}
    e6 = next(c for c in listed if c["name"] == "readme_lr02")
    assert e6["arms"] == ["adam", "lamb"] and e6["claims"] == 2


def test_bundled_names_work_from_any_folder_and_a_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("validate", "adam_vs_lamb", "large_batch", "beyond/large_batch.yaml").exit_code == 0
    shown = invoke("show-config", "lamb_wd", "epochs=2").output
    assert "name: lamb_wd" in shown and "epochs: 2" in shown
    (tmp_path / "lamb_wd.yaml").write_text(TINY_CONFIG)  # a file of that name here: it is used
    assert "name: tiny" in invoke("show-config", "lamb_wd.yaml").output


def test_configs_copy_writes_an_editable_copy_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("configs", "--copy", "lamb_lr").output == "wrote lamb_lr.yaml\n"
    assert (tmp_path / "lamb_lr.yaml").read_bytes() == (ROOT / "configs" / "lamb_lr.yaml").read_bytes()
    again = invoke("configs", "--copy", "lamb_lr")
    assert again.exit_code == 2 and "already exists" in again.output
    (tmp_path / "mine").mkdir()
    assert invoke("configs", "--copy", "large_batch", "mine").exit_code == 0
    assert (tmp_path / "mine" / "large_batch.yaml").is_file()
    bad = invoke("configs", "--copy", "nosuch")
    assert bad.exit_code == 2 and "no bundled config of that name" in bad.output


def test_light_verbs_never_import_torch(tmp_path):
    code = """
import sys
from typer.testing import CliRunner
from lambexp.cli import app
for args in (["--help"], ["--version"], ["configs"], ["configs", "--json"], ["validate", "adam_vs_lamb"],
             ["validate", "--json", "lamb_lr"], ["show-config", "readme_lr02"], ["run", "--help"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_validate_json(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\narms: [{name: a, lr: -1}]\n")
    result = invoke("validate", "--json", "adam_lr", tmp_path / "bad.yaml")
    assert result.exit_code == 2
    ok, bad = json.loads(result.output)
    assert ok == {"config": "adam_lr", "ok": True, "experiment": "adam_lr",
                  "arms": ["adam_lr0.01", "adam_lr0.1"], "claims": 2, "errors": []}
    assert bad["ok"] is False
    assert bad["errors"] == [f"error: {tmp_path / 'bad.yaml'}: arms[0].lr: must be > 0 (got -1)"]


def test_run_json_is_the_summaries(tiny_mnist_env, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    result = invoke("run", tmp_path / "tiny.yaml", "--runs-dir", tmp_path / "runs", "--json")
    assert result.exit_code == 0
    out = json.loads(result.output)  # nothing but the JSON on stdout
    assert Path(out["run_folder"]).parent == tmp_path / "runs" / "tiny"
    assert [a["arm"] for a in out["arms"]] == ["adam", "lamb"]
    for arm in out["arms"]:
        on_disk = json.loads((Path(out["run_folder"]) / arm["arm"] / "summary.json").read_text())
        assert arm == on_disk and arm["status"] == "finished"


def test_ls_shows_each_run_with_status_and_accuracy(tiny_run):
    runs, run_dir = tiny_run
    adam = json.loads((run_dir / "adam" / "summary.json").read_text())["final_test_accuracy"]
    lines = invoke("ls", runs).output.splitlines()
    assert lines[0].split() == ["folder", "experiment", "arms", "status", "final", "test", "accuracy", "age"]
    assert lines[1].startswith(str(run_dir)) and " tiny " in lines[1] and " finished " in lines[1]
    assert f"adam {adam:.2%}" in lines[1]
    listed = json.loads(invoke("ls", runs, "--json").output)
    assert [r["folder"] for r in listed] == [str(run_dir)] and listed[0]["status"] == "finished"
    # an arm without its summary (killed): the run is interrupted
    (run_dir / "lamb" / "summary.json").unlink()
    assert json.loads(invoke("ls", runs, "--json").output)[0]["status"] == "interrupted"
    assert invoke("ls", runs.parent / "nothing").exit_code == 2


def test_compare_two_runs_side_by_side(tiny_run, tmp_path):
    runs, first = tiny_run
    result = invoke("run", tmp_path / "tiny.yaml", "--runs-dir", runs, "--quiet", "arms.lamb.lr=0.02")
    assert result.exit_code == 0
    second = next(p for p in (runs / "tiny").iterdir() if p != first)
    out = invoke("compare", first, second, "--out", tmp_path / "cmp")
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if line.startswith(str(runs))]
    assert len(rows) == 4 and sum(" 0.02 " in r for r in rows) == 1
    png = tmp_path / "cmp" / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(invoke("compare", first, second, "--out", tmp_path / "cmp", "--json").output)
    assert [len(r["arms"]) for r in data["runs"]] == [2, 2] and data["figure"] == str(png)


def test_damaged_run_folders_are_refused_with_one_line(tiny_run):
    _, run_dir = tiny_run
    (run_dir / "lamb" / "metrics.jsonl").unlink()
    result = invoke("report", run_dir)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert f"{run_dir / 'lamb' / 'metrics.jsonl'}: missing" in result.output
    (run_dir / "lamb" / "summary.json").write_text("{not json")
    result = invoke("report", run_dir)
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert f"{run_dir / 'lamb' / 'summary.json'}: damaged" in result.output
    for arm in ("adam", "lamb"):
        (run_dir / arm / "summary.json").unlink()
    result = invoke("report", run_dir)
    assert result.exit_code == 2 and "no finished arms" in result.output


def test_two_runs_of_one_experiment_get_figures_of_their_own(tiny_run, tmp_path):
    runs, first = tiny_run
    assert invoke("run", tmp_path / "tiny.yaml", "--runs-dir", runs, "--quiet").exit_code == 0
    assert invoke("report", runs, "--out", tmp_path / "out").exit_code == 0
    curves = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*_curves.png"))
    assert len(curves) == 2 and all(name.startswith("tiny-") for name in curves)


def test_resume_of_a_finished_run_needs_no_data(tiny_run, tmp_path, monkeypatch):
    _, run_dir = tiny_run
    monkeypatch.setenv("LAMBEXP_DATA", str(tmp_path / "no-data-here"))
    result = invoke("resume", run_dir)
    assert result.exit_code == 0 and "nothing to resume" in result.output
    assert not (tmp_path / "no-data-here").exists()


def test_data_verify_names_the_folder_in_its_fix(tmp_path):
    result = invoke("data", "verify", "--data-dir", tmp_path / "elsewhere")
    assert result.exit_code == 2
    assert f"fetch it with `lambexp data fetch --data-dir {tmp_path / 'elsewhere'}`" in result.output


def test_keep_freed_memory_takes_effect_with_glibc():
    import platform

    from lambexp.training.malloc import keep_freed_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc


def test_configs_sums_up_a_large_sweep_and_names_a_small_one():
    result = invoke("configs")
    assert result.exit_code == 0, result.output
    assert "arms: 3 (adam, lambblog, lambpaper) × 7 lr × 2 weight_decay = 42; 4 claims" in result.output
    assert ("arms: 10 (blog, readme2019, paper, timm, nvlamb, optax, torchopt, tfa, blog_lambc,"
            " blog_gradclip) × 2 lr × 2 weight_decay = 40; 13 claims") in result.output
    assert "arms: adam_b512, lamb_b512," in result.output  # 12 arms: each by name
