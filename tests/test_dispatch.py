"""The dispatcher (lambexp/runner/dispatch.py) that every launcher shares, with a scripted launcher:
the queue within the launcher's capacity, the banner and the lines, a failure named by its training
with every other unit cancelled at once, a stop, and trainings that came back interrupted unasked.
The real launchers are tests/test_launchers.py's."""

from __future__ import annotations

import pytest

from lambexp.base.statuses import Status
from lambexp.config import parse_experiment
from lambexp.errors import DataError, Interrupted, UserError
from lambexp.runner.dispatch import dispatch
from lambexp.runner.plan import Training

TOY = """name: toy
epochs: 1
batch_size: 64
device: cpu
arms:
  - {name: a, optimizer: adam}
  - {name: b, optimizer: lamb}
  - {name: c, optimizer: adam, lr: 0.02}
  - {name: d, optimizer: lamb, lr: 0.02}
"""


def trainings(tmp_path) -> list[Training]:
    """Four trainings of one seed, none begun (their folders do not exist)."""
    return [Training(f"toy/seed1/{arm.name}", arm, tmp_path / arm.name) for arm in parse_experiment(TOY).arms]


class Scripted:
    """A launcher whose units end one per poll, oldest first, as ``ends`` says for the unit's first
    training (by arm name; default: finished with accuracy 0.5): Status.INTERRUPTED, or a UserError. It
    records what was submitted, the most units in flight, and what was cancelled."""

    early = "a scripted reason"

    def __init__(self, ends: dict | None = None, capacity: int | None = None):
        self.ends, self.capacity = ends or {}, capacity
        self.submitted: list[list[str]] = []  # labels per unit; a unit's handle is its index here
        self.most_in_flight = 0
        self.cancelled: list[int] | None = None

    def check(self) -> None:
        pass

    def describe(self) -> str:
        return "on a script"

    def submit(self, units, data_dir):
        start = len(self.submitted)
        self.submitted += [[t.label for t in unit] for unit in units]
        return list(range(start, len(self.submitted)))

    def poll(self, handles):
        self.most_in_flight = max(self.most_in_flight, len(handles))
        oldest = min(handles)
        labels = self.submitted[oldest]
        end = self.ends.get(labels[0].rsplit("/", 1)[-1], Status.FINISHED)
        if isinstance(end, UserError):
            return [(oldest, end)]
        summary = {"final_test_accuracy": 0.5} if end == Status.FINISHED else None
        return [(oldest, [(end, summary)] * len(labels))]

    def cancel(self, handles):
        self.cancelled = sorted(handles)


def test_units_are_sent_within_capacity_in_order_and_said_once_each(tmp_path):
    said, launcher = [], Scripted(capacity=2)
    dispatch(trainings(tmp_path), launcher, None, said.append, lambda: False)
    assert launcher.submitted == [["toy/seed1/a"], ["toy/seed1/b"], ["toy/seed1/c"], ["toy/seed1/d"]]
    assert launcher.most_in_flight == 2
    assert said == ["4 trainings, on a script", "toy/seed1/a: training", "toy/seed1/b: training",
                    "toy/seed1/a: finished, final test accuracy 50.00% [1/4]", "toy/seed1/c: training",
                    "toy/seed1/b: finished, final test accuracy 50.00% [2/4]", "toy/seed1/d: training",
                    "toy/seed1/c: finished, final test accuracy 50.00% [3/4]",
                    "toy/seed1/d: finished, final test accuracy 50.00% [4/4]"]
    assert launcher.cancelled == []  # nothing left in flight at the end


def test_without_a_capacity_every_unit_is_sent_at_once_in_stacks(tmp_path):
    said, launcher = [], Scripted()
    dispatch(trainings(tmp_path), launcher, None, said.append, lambda: False, stack=2)
    assert launcher.submitted == [["toy/seed1/a", "toy/seed1/b"], ["toy/seed1/c", "toy/seed1/d"]]
    assert said[0] == "4 trainings in 2 stacks of up to 2, on a script"
    assert said[1] == "2 trainings as one stacked model: toy/seed1/a (training), toy/seed1/b (training)"
    assert said.count("toy/seed1/d: finished, final test accuracy 50.00% [4/4]") == 1


def test_the_first_failure_names_its_unit_keeps_its_type_and_cancels_every_other_unit(tmp_path):
    said, launcher = [], Scripted({"a": DataError("the disk is full")}, capacity=3)
    with pytest.raises(DataError) as err:
        dispatch(trainings(tmp_path), launcher, None, said.append, lambda: False)
    assert str(err.value) == "toy/seed1/a: the disk is full"
    assert launcher.cancelled == [1, 2]  # b and c, in flight; d never sent
    assert len(launcher.submitted) == 3
    assert not any("finished" in line for line in said)


def test_a_failed_stack_is_named_by_every_member(tmp_path):
    launcher = Scripted({"c": UserError("out of memory")})
    with pytest.raises(UserError, match=r"^toy/seed1/c \+ toy/seed1/d: out of memory$"):
        dispatch(trainings(tmp_path), launcher, None, lambda line: None, lambda: False, stack=2)


def test_a_stop_cancels_what_is_in_flight_and_sends_nothing_more(tmp_path):
    polls = []
    launcher = Scripted(capacity=2)
    poll = launcher.poll
    launcher.poll = lambda handles: polls.append(1) or poll(handles)
    with pytest.raises(Interrupted, match="the unfinished trainings cancelled"):
        dispatch(trainings(tmp_path), launcher, None, lambda line: None, lambda: len(polls) >= 1)
    assert launcher.cancelled == [1]  # a came back; b was in flight
    assert len(launcher.submitted) == 2


def test_a_stop_before_anything_is_sent_sends_nothing(tmp_path):
    launcher = Scripted()
    with pytest.raises(Interrupted, match="nothing was trained"):
        dispatch(trainings(tmp_path), launcher, None, lambda line: None, lambda: True)
    assert launcher.submitted == [] and launcher.cancelled is None


def test_trainings_back_interrupted_unasked_are_counted_after_the_others_finish(tmp_path):
    said, launcher = [], Scripted({"a": Status.INTERRUPTED, "c": Status.INTERRUPTED}, capacity=1)
    with pytest.raises(UserError) as err:
        dispatch(trainings(tmp_path), launcher, None, said.append, lambda: False)
    assert str(err.value) == ("2 trainings stopped before the end (a scripted reason) and were checkpointed:"
                              " run the same command again to continue")
    assert "toy/seed1/a: interrupted, checkpointed [1/4]" in said
    assert "toy/seed1/d: finished, final test accuracy 50.00% [4/4]" in said  # the others went on


def test_a_training_that_diverged_says_so_where_it_comes_back():
    """A worker's diverged training (its summary, as written) is said as diverged, where and why, not
    as a plain "finished"."""
    from lambexp.runner.plan import say_result

    said = []
    summary = {"final_test_accuracy": None, "diverged": True, "diverged_step": 36,
               "diverged_reason": "loss rose to 12.96, above its first logged value 2.327"}
    say_result("t/seed1/a", Status.FINISHED, summary, said.append)
    say_result("t/seed1/b", Status.FINISHED, {"final_test_accuracy": 0.9, "diverged": False}, said.append)
    say_result("t/seed1/c", Status.FINISHED, {"final_test_accuracy": 0.5, "diverged": True}, said.append)
    assert said == ["t/seed1/a: diverged at step 36 (loss rose to 12.96, above its first logged value 2.327),"
                    " stopped", "t/seed1/b: finished, final test accuracy 90.00%",
                    "t/seed1/c: diverged, stopped; final test accuracy 50.00% at the stop"]


def test_the_tally_counts_and_says_the_time_left_once_a_minute_has_passed():
    """A clock read by hand: 4 trainings; after 30 s one is back (no estimate yet: too soon); at
    600 s two are (300 s each, 2 to come: 10 min); at 7,800 s three (2,600 s each: 43 min)."""
    from lambexp.runner.dispatch import Tally

    now = [0.0]
    tally = Tally(4, clock=lambda: now[0])
    lines = []
    for t in (30.0, 600.0, 7800.0, 7900.0):
        now[0] = t
        lines.append(tally("x"))
    assert lines == ["x [1/4]", "x [2/4, about 10 min left]", "x [3/4, about 43 min left]", "x [4/4]"]
    big = Tally(100, clock=lambda: now[0])
    now[0] += 3600.0
    assert big("y") == "y [1/100, about 99 h 0 min left]"
