"""`lambexp reproduce` itself (lambexp/runner/reproduce.py), on the tiny set: --strict, --jobs, what a
rerun into the same --out folder trains again and what it keeps (finished arms skipped, an arm added
or removed, new claims, identical arms trained once and shared by a link, a link to other settings
replaced), and `lambexp resume` of a reproduce folder rebuilding its report.

Tests that call reproduce for another subject stay with that subject: hostile input
(test_hostile*.py), launchers (test_launchers.py, test_hostile_launchers.py), stacking
(test_stacked_loop.py), claims measured on a run (test_claims_on_runs.py), the report on
hand-written folders (test_report.py), independent checks of a run (test_against_world.py,
test_fixtures_show.py)."""

import json

import pytest
from helpers import TINY_CONFIG, claim_row, invoke, tiny_config, write
from typer.testing import CliRunner

from lambexp.cli import app
from lambexp.errors import Interrupted
from lambexp.runner.reproduce import reproduce

CONFIG = tiny_config(name="toy")  # experiment toy, arms adam and lamb; used here without its expect:
MID = TINY_CONFIG.replace("epochs: 1", "epochs: 3")  # arms adam and lamb, 12 steps each
SHARED_A = TINY_CONFIG.replace("name: tiny", "name: exp_a")
SHARED_B = """\
name: exp_b
epochs: 1
batch_size: 64
log_interval: 2
device: cpu
arms:
  - {name: lamb_lr0.01, optimizer: lamb, lr: 0.01}
  - {name: lamb_lr0.1, optimizer: lamb, lr: 0.1}
expect:
  - {claim: B's LAMB at 0.01 trains, arm: lamb_lr0.01, measure: final_accuracy, above: 0.0}
"""


# --- the command: --strict and --jobs ---------------------------------------------------------------

def test_reproduce_strict_fails_on_a_claim_that_does_not_hold(tiny_mnist_env, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    args = ["reproduce", tmp_path / "tiny.yaml", "--out", tmp_path / "repro", "--seeds", "1", "--quiet"]
    assert invoke(*args, "--strict").exit_code == 0
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace("above: 0.0", "above: 2.0"))  # accuracy > 200%
    result = invoke(*args, "--strict")
    assert result.exit_code == 1 and "strict: NOT REPRODUCED: LAMB trains" in result.output
    assert invoke(*args).exit_code == 0  # without --strict a verdict is not an error


def test_reproduce_with_two_jobs_equals_one_job(tiny_mnist_env, tmp_path):
    """Four trainings two at a time in worker processes: the same folders, summaries and claims as
    one at a time, to float rounding (each worker has half the threads)."""
    import json

    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace("expect:", "sweep: {lr: [0.01, 0.02]}\nexpect:")
                                        .replace("arm: lamb,", "arm: lamb_lr0.01,"))
    summaries = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        result = invoke("reproduce", tmp_path / "tiny.yaml", "--out", out, "--seeds", "1", "--jobs", jobs)
        assert result.exit_code == 0, result.output
        folders = sorted((out / "tiny" / "seed1").iterdir())
        assert [f.name for f in folders] == ["adam_lr0.01", "adam_lr0.02", "lamb_lr0.01", "lamb_lr0.02"]
        summaries[jobs] = [json.loads((f / "summary.json").read_text()) for f in folders]
        assert "REPRODUCED (1 of 1)" in (out / "REPORT.md").read_text()
    assert "4 trainings, 2 at once" in result.output
    for one, two in zip(summaries[1], summaries[2]):
        assert one["steps"] == two["steps"] and one["status"] == two["status"] == "finished"
        assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4)
        assert two["final_test_accuracy"] == pytest.approx(one["final_test_accuracy"], abs=0.01)
    again = invoke("reproduce", tmp_path / "tiny.yaml", "--out", tmp_path / "jobs2", "--seeds", "1",
                   "--jobs", "2")
    assert again.exit_code == 0 and again.output.count("finished before, skipped") == 4

# --- a rerun into the same --out: what is trained again and what is kept ----------------------------

def test_reproduce_runs_only_unfinished_arms(tiny_mnist_env, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG.split("expect:")[0])
    out = tmp_path / "repro"
    first = CliRunner().invoke(app, ["reproduce", str(config), "--out", str(out), "--seeds", "1", "--quiet"])
    assert first.exit_code == 0, first.output
    adam = out / "toy" / "seed1" / "adam" / "summary.json"
    stamp = adam.stat().st_mtime_ns
    (out / "toy" / "seed1" / "lamb" / "summary.json").unlink()  # as if stopped during lamb
    second = CliRunner().invoke(app, ["reproduce", str(config), "--out", str(out), "--seeds", "1"])
    assert second.exit_code == 0, second.output
    assert "toy/seed1/adam: finished before, skipped" in second.output
    assert "toy/seed1/lamb: continuing" in second.output
    assert adam.stat().st_mtime_ns == stamp  # not run again
    assert json.loads((out / "toy" / "seed1" / "lamb" / "summary.json").read_text())["status"] == "finished"
    assert (out / "REPORT.md").is_file()
    # two seeds: seed 2 is new, seed 1 is all skipped
    third = CliRunner().invoke(app, ["reproduce", str(config), "--out", str(out), "--seeds", "2"])
    assert third.exit_code == 0 and third.output.count("finished before, skipped") == 2
    assert (out / "toy" / "seed2" / "lamb" / "summary.json").is_file()


def test_an_added_arm_trains_and_the_others_are_kept(tiny_mnist_env, tmp_path):
    """Adding an arm to a config keeps the finished runs and trains the new one alone; removing an
    arm (its runs would vanish from the report) is refused, naming it, and changes nothing."""
    config = tmp_path / "toy.yaml"
    config.write_text(SHARED_A)
    out = tmp_path / "repro"
    args = ["reproduce", str(config), "--out", str(out), "--seeds", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = (out / "exp_a" / "seed1" / "lamb" / "summary.json").read_bytes()
    arms = SHARED_A.index("arms:\n") + len("arms:\n")
    grown = SHARED_A[:arms] + "  - {name: lamb_lr0.02, optimizer: lamb, lr: 0.02}\n" + SHARED_A[arms:]
    config.write_text(grown)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before, skipped") == 2
    assert (out / "exp_a" / "seed1" / "lamb" / "summary.json").read_bytes() == before
    added = json.loads((out / "exp_a" / "seed1" / "lamb_lr0.02" / "summary.json").read_text())
    assert added["settings"]["lr"] == 0.02
    assert "lamb_lr0.02" in (out / "exp_a" / "config.yaml").read_text()
    config.write_text(SHARED_A)  # lamb_lr0.02 removed
    removed = CliRunner().invoke(app, args)
    assert removed.exit_code == 2 and "its arms differ: lamb_lr0.02 (removed)" in removed.output
    assert "lamb_lr0.02" in (out / "exp_a" / "config.yaml").read_text()


def test_new_claims_on_unchanged_arms_reuse_the_runs(tiny_mnist_env, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(SHARED_A)
    out = tmp_path / "repro"
    args = ["reproduce", str(config), "--out", str(out), "--seeds", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    config.write_text(SHARED_A + "  - {claim: Adam trains too, arm: adam, measure: final_accuracy,"
                                 " above: 0.0}\n")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("finished before, skipped") == 2
    assert "Adam trains too" in (out / "exp_a" / "config.yaml").read_text()
    assert "Adam trains too" in (out / "REPORT.md").read_text()
    config.write_text(SHARED_A.replace("epochs: 1", "epochs: 2"))
    changed = CliRunner().invoke(app, args)
    assert changed.exit_code == 2 and "its arms differ: adam (changed), lamb (changed)" in changed.output
    assert "Adam trains too" in (out / "exp_a" / "config.yaml").read_text()  # the old one kept

# --- identical arms of two experiments: trained once, shared by a link --------------------------------

def test_identical_arms_are_trained_once_and_shared(tiny_mnist_env, tmp_path):
    (tmp_path / "a.yaml").write_text(SHARED_A)
    (tmp_path / "b.yaml").write_text(SHARED_B)
    out = tmp_path / "repro"
    args = ["reproduce", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--out", str(out),
            "--seeds", "2"]
    plan = CliRunner().invoke(app, [*args, "--plan"])
    assert plan.exit_code == 0, plan.output
    lines = plan.output.splitlines()
    # 4 arms × 2 seeds = 8 arms; B's lamb_lr0.01 is A's lamb (lr 0.01 is the default): 6 trainings
    assert lines[-1] == "6 trainings (6 not finished) for 8 arms (experiment arms × seeds)"
    assert len(lines) == 7 and lines[0].startswith("exp_a/seed1/adam: adam (blog) lr 0.01")
    assert "also exp_b/seed1/lamb_lr0.01" in lines[1] and "also exp_b/seed2/lamb_lr0.01" in lines[4]
    assert not out.exists()  # --plan trains and writes nothing
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count(": training") == 6
    link = out / "exp_b" / "seed1" / "lamb_lr0.01"
    assert link.is_symlink() and link.resolve() == (out / "exp_a" / "seed1" / "lamb").resolve()
    report = (out / "REPORT.md").read_text()
    assert claim_row(report, "B's LAMB at 0.01 trains").endswith("| REPRODUCED (2 of 2) |")
    again = CliRunner().invoke(app, [*args, "--plan"])
    assert again.output.splitlines()[-1].startswith("6 trainings (0 not finished) for 8 arms")
    # a later invocation of B alone shares what A trained, and resume runs each training once
    (out / "exp_a" / "seed1" / "lamb" / "summary.json").unlink()
    alone = CliRunner().invoke(app, ["reproduce", str(tmp_path / "b.yaml"), "--out", str(out),
                                     "--seeds", "1"])
    assert alone.exit_code == 0 and "exp_a/seed1/lamb: continuing" in alone.output
    assert alone.output.count(": training") == 0
    resumed = CliRunner().invoke(app, ["resume", str(out)])
    assert resumed.exit_code == 0 and "is finished; nothing to resume" in resumed.output


def test_a_link_to_a_training_of_other_settings_is_replaced(tiny_mnist_env, tmp_path):
    """B's lr-0.01 arm links to A's LAMB; A is moved away and rerun with LAMB at lr 0.02: the link
    must not serve B (claims would be judged on the wrong run); B trains its own arm."""
    (tmp_path / "a.yaml").write_text(SHARED_A)
    (tmp_path / "b.yaml").write_text(SHARED_B)
    out = tmp_path / "repro"
    both = ["reproduce", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--out", str(out),
            "--seeds", "1", "--quiet"]
    assert CliRunner().invoke(app, both).exit_code == 0
    link = out / "exp_b" / "seed1" / "lamb_lr0.01"
    assert link.is_symlink()
    (out / "exp_a").rename(tmp_path / "moved_away")  # the link now dangles
    lamb_at_002 = SHARED_A.replace("    optimizer: lamb\n", "    optimizer: lamb\n    lr: 0.02\n")
    assert lamb_at_002 != SHARED_A
    (tmp_path / "a.yaml").write_text(lamb_at_002)
    plan = CliRunner().invoke(app, [*both[:-1], "--plan"]).output.splitlines()
    assert [line for line in plan if line.startswith("exp_a/seed1/lamb:")][0].endswith("[to train]")
    assert any(line.startswith("exp_b/seed1/lamb_lr0.01: lamb (blog) lr 0.01") for line in plan)
    assert CliRunner().invoke(app, both).exit_code == 0
    assert not link.is_symlink() and json.loads((link / "summary.json").read_text())["status"] == "finished"
    assert link.resolve() != (out / "exp_a" / "seed1" / "lamb").resolve()

# --- resume of a reproduce folder ----------------------------------------------------------------------

@pytest.mark.parametrize("target", [".", "tiny"])  # the reproduce folder, or an experiment in it
def test_resume_of_a_reproduce_folder_rebuilds_its_report(tiny_mnist_env, tmp_path, target):
    config = write(tmp_path / "tiny.yaml", MID)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):  # stopped after adam's first checkpoint: no report written
        reproduce([config], seeds=1, out=out, say=lambda s: None,
                  stop_requested=lambda: any(out.glob("tiny/seed1/*/checkpoint.pt")))
    write(out / "REPORT.md", "a stale report\n")
    result = invoke("resume", out / target, "-q")
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'REPORT.md'}" in result.stdout
    report = (out / "REPORT.md").read_text()
    assert "a stale report" not in report and (out / "report.html").is_file()
    for arm in ("adam", "lamb"):
        summary = json.loads((out / "tiny" / "seed1" / arm / "summary.json").read_text())
        assert summary["status"] == "finished"
        [row] = [line for line in report.splitlines() if line.startswith(f"| {arm} |")]
        assert f"{summary['final_test_accuracy']:.2%}" in row, row
